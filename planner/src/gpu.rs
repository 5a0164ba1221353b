//! Where a view's kernels run: the `gpu` setting (`off`, `auto`, `on`; the server's
//! `--gpu` flag gives the default, `SET gpu` a session's) and the aggregates, filters
//! and joins it sends to the GPU. A view keeps the setting it was created with, across restarts.

use std::collections::BTreeMap;
use std::sync::Arc;

use sabot_dataflow::ops::aggregate::Offload;
use sabot_dataflow::ops::filter::FilterOffload;
use sabot_dataflow::ops::partial::Kernel;
use sabot_dataflow::{NodeKind, StreamPlan};
use serde::{Deserialize, Serialize};

use crate::error::{PlanError, Result};

/// Rows an aggregate buffers at least before the GPU takes them: below, the copies to
/// and from the device cost more than the CPU's per-row path.
pub const DEFAULT_GPU_MIN_ROWS: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    /// Everything on the CPU.
    #[default]
    Off,
    /// The GPU where there is one and an operator can use it; the CPU otherwise.
    Auto,
    /// As `auto`, but creating a view fails where there is no GPU.
    On,
}

impl GpuMode {
    pub fn parse(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "0" => Ok(GpuMode::Off),
            "auto" => Ok(GpuMode::Auto),
            "on" | "true" | "1" => Ok(GpuMode::On),
            other => Err(PlanError::user(
                "22023",
                format!("invalid value for parameter \"gpu\": \"{other}\" (off, auto or on)"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GpuMode::Off => "off",
            GpuMode::Auto => "auto",
            GpuMode::On => "on",
        }
    }
}

/// What a view is planned with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSettings {
    pub mode: GpuMode,
    pub min_rows: usize,
}

impl Default for GpuSettings {
    fn default() -> Self {
        Self {
            mode: GpuMode::Off,
            min_rows: DEFAULT_GPU_MIN_ROWS,
        }
    }
}

impl GpuSettings {
    /// The server's defaults overridden by a session's `SET gpu` / `SET gpu_min_rows`.
    pub fn for_session(defaults: GpuSettings, settings: &BTreeMap<String, String>) -> Result<Self> {
        let mut out = defaults;
        if let Some(v) = settings.get("gpu") {
            out.mode = GpuMode::parse(v)?;
        }
        if let Some(v) = settings.get("gpu_min_rows") {
            out.min_rows = parse_min_rows(v)?;
        }
        Ok(out)
    }
}

pub fn parse_min_rows(value: &str) -> Result<usize> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            PlanError::user(
                "22023",
                format!("invalid value for parameter \"gpu_min_rows\": \"{value}\" (a row count of at least 1)"),
            )
        })
}

/// Validates a `SET` of one of the GPU settings (other names pass).
pub fn check_setting(name: &str, value: &str) -> Result<()> {
    match name {
        "gpu" => GpuMode::parse(value).map(|_| ()),
        "gpu_min_rows" => parse_min_rows(value).map(|_| ()),
        _ => Ok(()),
    }
}

/// Sends to the process's GPU the plan's aggregates that partial sums can compute, its
/// filters whose predicate translates exactly and its inner equi-joins (the epoch's
/// deltas joined with each other). Each holds its input back until the epoch's barrier
/// at most, which reorders nothing downstream: a node's whole output of an epoch
/// reaches the next node before the watermarks of that epoch do.
/// `strict` (a new view): `on` without a GPU is an error; otherwise (a view recovered
/// at start) such a view runs on the CPU, with a warning.
pub fn place(plan: &mut StreamPlan, settings: GpuSettings, strict: bool) -> Result<()> {
    if settings.mode == GpuMode::Off {
        return Ok(());
    }
    let Some(gpu) = sabot_gpu::global() else {
        let why = sabot_gpu::unavailable_reason().unwrap_or_else(|| "not set up".into());
        if settings.mode == GpuMode::On {
            if strict {
                return Err(PlanError::user(
                    "55000",
                    format!("gpu = on, but this server has no GPU: {why}"),
                ));
            }
            tracing::warn!(reason = %why, "a view created with gpu = on runs on the CPU: no GPU");
        }
        return Ok(());
    };
    for node in &mut plan.nodes {
        match &mut node.kind {
            NodeKind::Aggregate(spec) if spec.offload_calls().is_ok() => {
                spec.offload = Some(Offload {
                    kernel: Kernel::Gpu(Arc::clone(&gpu)),
                    min_rows: settings.min_rows,
                });
            }
            NodeKind::Join(spec) if spec.offload_check().is_ok() => {
                spec.offload = Some(Offload {
                    kernel: Kernel::Gpu(Arc::clone(&gpu)),
                    min_rows: settings.min_rows,
                });
            }
            NodeKind::Filter { predicate } => {
                let offload = FilterOffload::try_new(
                    Kernel::Gpu(Arc::clone(&gpu)),
                    settings.min_rows,
                    predicate,
                    &node.schema,
                );
                if let Ok(offload) = offload {
                    node.kind = NodeKind::GpuFilter {
                        predicate: Arc::clone(predicate),
                        offload,
                    };
                }
            }
            _ => {}
        }
    }
    Ok(())
}
