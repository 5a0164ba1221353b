//! Stream plans and the runtime that runs them, one epoch at a time, on N workers.
//!
//! A [`StreamPlan`] is a list of nodes in topological order, the last one the view's
//! `Materialize`. A [`Dataflow`] holds one operator instance per node per worker. For each
//! epoch it walks the nodes in order: the inputs of a keyed node (aggregate, join,
//! materialize) are hash-exchanged so that each key lands on the worker that owns it;
//! the workers then run their instance over their share of the epoch's batches in
//! parallel, each followed by the barrier, which flushes the instance's state changes
//! into the epoch's batch. Stateless nodes keep batches on the worker they came from.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;
use sabot_storage::{EpochBatch, StateTableId, StateWriter, Store};

use crate::batch::ChangeBatch;
use crate::error::{DataflowError, Result};
use crate::operator::{Message, Operator};
use crate::ops::aggregate::{AggregateOp, AggregateSpec};
use crate::ops::asof::{AsofJoinOp, AsofSpec};
use crate::ops::connector::{ConnectorOp, SourceFactory};
use crate::ops::filter::FilterOp;
use crate::ops::join::{JoinKind, JoinOp, JoinSpec};
use crate::ops::materialize::MaterializeOp;
use crate::ops::over::{OverOp, OverSpec};
use crate::ops::proctime::ProcessingTimeOp;
use crate::ops::project::ProjectOp;
use crate::ops::session::{SessionOp, SessionSpec};
use crate::ops::temporal_filter::{TemporalFilterOp, TemporalFilterSpec};
use crate::ops::topn::{TopNOp, TopNSpec};
use crate::ops::union::UnionOp;
use crate::ops::watermark::{
    derive, scalar_from_i64, scalar_to_i64, WatermarkFilterOp, WatermarkSpec, Watermarks,
};
use crate::row::{Partitioner, RowCodec};
use crate::workers::{Outcome, WorkerThreads};

/// What a node of a stream plan does.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// The changelog of a table or view.
    Source {
        relation: String,
    },
    /// A reader of an external source (each view reads a source on its own, from its
    /// start), with one state table for the splits' offsets.
    Connector {
        relation: String,
        factory: Arc<dyn SourceFactory>,
    },
    /// Drops rows behind a source's watermark and computes the watermark; one state
    /// table for its value and the count of late rows.
    WatermarkFilter(WatermarkSpec),
    Filter {
        predicate: Arc<dyn PhysicalExpr>,
    },
    /// A [`NodeKind::Filter`] whose predicate the GPU evaluates (see
    /// [`crate::ops::filter::FilterOffload`]).
    GpuFilter {
        predicate: Arc<dyn PhysicalExpr>,
        offload: crate::ops::filter::FilterOffload,
    },
    /// A condition on `NOW()` re-evaluated as the clock moves (see
    /// [`crate::ops::temporal_filter`]); one state table for the rows it keeps.
    TemporalFilter(TemporalFilterSpec),
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
    },
    /// Appends the epoch's clock to each row (see [`crate::ops::proctime`]).
    ProcessingTime,
    Aggregate(AggregateSpec),
    Join(JoinSpec),
    /// An ASOF join (see [`crate::ops::asof`]); state tables for the left and right rows.
    AsofJoin(AsofSpec),
    TopN(TopNSpec),
    /// Assigns each row its session window (see [`crate::ops::session`]).
    Session(SessionSpec),
    /// Window functions over partitions (see [`crate::ops::over`]).
    Over(OverSpec),
    Union,
    /// Keeps the result rows of the view.
    Materialize,
    /// Keeps the result rows of a view whose plan only adds rows: as they arrive, on the
    /// worker that made them, without encoding them (see [`crate::ops::materialize`]).
    MaterializeAppendOnly,
    /// The end of a sink's query: passes the changes on without keeping rows. `keyed`
    /// (a plan that retracts): consolidated per row per epoch, inputs hash-exchanged by
    /// row as for `Materialize`.
    Emit {
        keyed: bool,
    },
}

/// One node: what it does, where its inputs come from, its output schema and the state
/// tables it owns.
#[derive(Debug, Clone)]
pub struct PlanNode {
    pub kind: NodeKind,
    pub inputs: Vec<usize>,
    pub schema: SchemaRef,
    pub state_tables: Vec<StateTableId>,
}

/// A view's dataflow, nodes in topological order, the last one `Materialize`.
#[derive(Debug, Clone, Default)]
pub struct StreamPlan {
    pub nodes: Vec<PlanNode>,
}

impl StreamPlan {
    /// The relations this plan reads.
    pub fn sources(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for n in &self.nodes {
            if let NodeKind::Source { relation } | NodeKind::Connector { relation, .. } = &n.kind {
                if !out.contains(&relation.as_str()) {
                    out.push(relation);
                }
            }
        }
        out
    }

    /// Whether the plan reads an external source itself.
    pub fn reads_connectors(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.kind, NodeKind::Connector { .. }))
    }

    /// Whether the plan's output only ever grows (never retracts a row), given which of
    /// the relations it reads are append-only. Filters, projections, unions and inner
    /// joins of append-only inputs are; aggregates, top-N and outer/semi/anti joins
    /// revise earlier output.
    pub fn append_only(&self, relation_append_only: &dyn Fn(&str) -> bool) -> bool {
        self.append_only_nodes(relation_append_only)
            .last()
            .copied()
            .unwrap_or(true)
    }

    /// Tells each aggregate and top-N whether its input only adds rows (see
    /// [`Self::append_only`]), so that it keeps only the state such input needs.
    pub fn mark_append_only_inputs(&mut self, relation_append_only: &dyn Fn(&str) -> bool) {
        let memo = self.append_only_nodes(relation_append_only);
        for n in &mut self.nodes {
            let input = n
                .inputs
                .first()
                .is_some_and(|i| memo.get(*i).copied().unwrap_or(false));
            match &mut n.kind {
                NodeKind::Aggregate(spec) => spec.append_only_input = input,
                NodeKind::TopN(spec) => spec.append_only_input = input,
                NodeKind::Session(spec) => spec.append_only_input = input,
                _ => {}
            }
        }
    }

    /// Per node: whether its output only adds rows.
    fn append_only_nodes(&self, relation_append_only: &dyn Fn(&str) -> bool) -> Vec<bool> {
        let mut memo: Vec<bool> = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let inputs = n
                .inputs
                .iter()
                .all(|i| memo.get(*i).copied().unwrap_or(false));
            let here = match &n.kind {
                NodeKind::Source { relation } => relation_append_only(relation),
                NodeKind::Connector { .. } => true,
                NodeKind::Filter { .. }
                | NodeKind::GpuFilter { .. }
                | NodeKind::WatermarkFilter(_)
                | NodeKind::Project { .. }
                | NodeKind::ProcessingTime
                | NodeKind::Union
                | NodeKind::Materialize
                | NodeKind::MaterializeAppendOnly
                | NodeKind::Emit { .. } => inputs,
                // A temporal join's output comes from its left rows only, as they arrive.
                NodeKind::Join(spec) if spec.temporal => n
                    .inputs
                    .first()
                    .is_some_and(|i| memo.get(*i).copied().unwrap_or(false)),
                NodeKind::Join(spec) => inputs && matches!(spec.kind, JoinKind::Inner),
                NodeKind::TemporalFilter(spec) => inputs && spec.bound.append_only(),
                // Emitting on window close, an aggregate writes each group once, final.
                NodeKind::Aggregate(spec) => spec.emit_on_window_close,
                NodeKind::TopN(_)
                | NodeKind::Session(_)
                | NodeKind::Over(_)
                | NodeKind::AsofJoin(_) => false,
            };
            memo.push(here);
        }
        memo
    }

    /// Every state table of the plan.
    pub fn state_tables(&self) -> Vec<StateTableId> {
        self.nodes
            .iter()
            .flat_map(|n| n.state_tables.iter().copied())
            .collect()
    }

    /// Which output columns of each node carry a watermark (whatever its value).
    pub fn watermark_columns(&self) -> Result<Vec<Vec<bool>>> {
        let mut wms: Vec<Watermarks> = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let here = match &n.kind {
                NodeKind::WatermarkFilter(spec) => {
                    let mut w: Watermarks = vec![None; n.schema.fields().len()];
                    let ty = n.schema.field(spec.column).data_type();
                    w[spec.column] = Some(scalar_from_i64(0, ty)?);
                    w
                }
                _ => {
                    let inputs: Vec<&Watermarks> = n.inputs.iter().map(|i| &wms[*i]).collect();
                    let schemas: Vec<SchemaRef> = n
                        .inputs
                        .iter()
                        .map(|i| Arc::clone(&self.nodes[*i].schema))
                        .collect();
                    derive(n, &inputs, &schemas)?
                }
            };
            wms.push(here);
        }
        Ok(wms
            .into_iter()
            .map(|w| w.iter().map(Option::is_some).collect())
            .collect())
    }

    /// A readable tree of the dataflow, root first. A node that feeds several others
    /// (a shared subplan) is shown in full once; later it is a one-line reference.
    pub fn explain(&self, workers: usize) -> String {
        let mut s = String::new();
        let marks = self.watermark_columns().unwrap_or_default();
        let mut shown = vec![false; self.nodes.len()];
        if let Some(last) = self.nodes.len().checked_sub(1) {
            self.explain_node(last, 0, workers, &marks, &mut shown, &mut s);
        }
        s
    }

    fn explain_node(
        &self,
        i: usize,
        depth: usize,
        workers: usize,
        marks: &[Vec<bool>],
        shown: &mut [bool],
        s: &mut String,
    ) {
        let indent = "  ".repeat(depth);
        let line = self.node_line(i, workers, marks);
        if shown[i] {
            let first = line.split(':').next().unwrap_or(&line);
            let _ = writeln!(s, "{indent}(shared) {first}: the same node as above");
            return;
        }
        shown[i] = true;
        let _ = writeln!(s, "{indent}{line}");
        for input in &self.nodes[i].inputs {
            self.explain_node(*input, depth + 1, workers, marks, shown, s);
        }
    }

    /// One node as EXPLAIN shows it: what it does, its exchange, state tables and the
    /// columns that carry a watermark.
    fn node_line(&self, i: usize, workers: usize, marks: &[Vec<bool>]) -> String {
        let n = &self.nodes[i];
        let detail = match &n.kind {
            NodeKind::Source { relation } => format!("Source: {relation}"),
            NodeKind::Connector { relation, factory } => {
                format!("SourceReader: {relation} ({})", factory.describe())
            }
            NodeKind::WatermarkFilter(spec) => format!(
                "WatermarkFilter: {} >= watermark, watermark = max({})",
                n.schema.field(spec.column).name(),
                spec.text
            ),
            NodeKind::Filter { predicate } => format!("Filter: {predicate}"),
            NodeKind::GpuFilter { predicate, offload } => format!(
                "Filter: {predicate}, on {}: runs of >= {} rows (rows and weights host to \
                 device, kept rows device to host)",
                kernel_place(&offload.gpu, "buffered"),
                offload.min_rows
            ),
            NodeKind::TemporalFilter(spec) => format!(
                "TemporalFilter: {}, rows {} as now() advances",
                spec.text,
                if spec.bound.append_only() {
                    "enter"
                } else {
                    "leave"
                }
            ),
            NodeKind::Project { exprs } => format!(
                "Project: {}",
                exprs
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            NodeKind::Aggregate(spec) => {
                let groups: Vec<&str> = spec.input_schema.fields()[..spec.group_count]
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                let calls: Vec<String> = spec
                    .calls
                    .iter()
                    .map(|c| {
                        let f = c.kind.name();
                        let distinct = if c.distinct { "DISTINCT " } else { "" };
                        format!("{f}({distinct}{})", spec.input_schema.field(c.arg).name())
                    })
                    .collect();
                let placement = match &spec.offload {
                    Some(o) => format!(
                        ", on {}: per-key partial sums of runs of >= {} rows (group keys and \
                         summed columns host to device, one row per key device to host)",
                        kernel_place(&o.kernel, "partial sums"),
                        o.min_rows
                    ),
                    None => String::new(),
                };
                format!(
                    "HashAggregate: group=[{}], aggs=[{}]{}{placement}",
                    groups.join(", "),
                    calls.join(", "),
                    if spec.emit_on_window_close {
                        ", emit on window close"
                    } else {
                        ""
                    }
                )
            }
            NodeKind::Join(spec) => {
                let on: Vec<String> = spec
                    .left_keys
                    .iter()
                    .zip(&spec.right_keys)
                    .map(|(l, r)| format!("{l} = {r}"))
                    .collect();
                let filter = spec
                    .filter
                    .as_ref()
                    .map(|f| format!(", filter={f}"))
                    .unwrap_or_default();
                let temporal = if spec.temporal {
                    ", right side as of processing time"
                } else {
                    ""
                };
                let bounds: Vec<String> = spec
                    .intervals
                    .iter()
                    .map(|b| {
                        let l = spec.left_schema.field(b.left).name();
                        let r = spec.right_schema.field(b.right).name();
                        if b.left_lower {
                            format!("{l} >= {r} - {}", b.offset)
                        } else {
                            format!("{l} <= {r} + {}", b.offset)
                        }
                    })
                    .collect();
                let bounds = if bounds.is_empty() {
                    String::new()
                } else {
                    format!(", time bounds=[{}]", bounds.join(", "))
                };
                let placement = match &spec.offload {
                    Some(o) => format!(
                        ", epoch deltas joined with each other on {} in runs of >= {} rows \
                         (key columns host to device, matching row pairs device to host), \
                         with the stored rows on the CPU",
                        kernel_place(&o.kernel, "batch join"),
                        o.min_rows
                    ),
                    None => String::new(),
                };
                format!(
                    "HashJoin: {:?}, on=[{}]{filter}{temporal}{bounds}{placement}",
                    spec.kind,
                    on.join(", ")
                )
            }
            NodeKind::AsofJoin(spec) => {
                let on: Vec<String> = spec
                    .join
                    .left_keys
                    .iter()
                    .zip(&spec.join.right_keys)
                    .map(|(l, r)| format!("{l} = {r}"))
                    .collect();
                format!(
                    "AsofJoin: {:?}, on=[{}], match={} {} {}",
                    spec.join.kind,
                    on.join(", "),
                    spec.left_time,
                    spec.matching.symbol(),
                    spec.right_time
                )
            }
            NodeKind::TopN(spec) => {
                let list = |v: Vec<String>| v.join(", ");
                format!(
                    "TopN: partition=[{}], order=[{}], offset={}, limit={}{}",
                    list(spec.partition.iter().map(|e| e.to_string()).collect()),
                    list(spec.order.iter().map(|(e, o)| format!("{e} {o}")).collect()),
                    spec.offset,
                    spec.limit,
                    if spec.row_number { ", row_number" } else { "" }
                )
            }
            NodeKind::Session(spec) => {
                let fields = spec.input_schema.fields();
                format!(
                    "SessionWindow: time={}, gap={}, partition=[{}]",
                    fields[spec.time].name(),
                    spec.gap,
                    spec.keys
                        .iter()
                        .map(|k| fields[*k].name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            NodeKind::Over(spec) => format!(
                "OverWindow: partition=[{}], order=[{}], functions=[{}]",
                spec.partition
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                spec.order
                    .iter()
                    .map(|(e, o)| format!("{e} {o}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                spec.functions
                    .iter()
                    .map(|f| f.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            NodeKind::ProcessingTime => format!(
                "ProcessingTime: {} = the epoch's clock",
                n.schema
                    .fields()
                    .last()
                    .map(|f| f.name().as_str())
                    .unwrap_or_default()
            ),
            NodeKind::Union => "Union".to_string(),
            NodeKind::Materialize => "Materialize".to_string(),
            NodeKind::MaterializeAppendOnly => "Materialize (append-only)".to_string(),
            NodeKind::Emit { .. } => "Emit (sink)".to_string(),
        };
        let exchange = if workers > 1 && is_keyed(&n.kind) {
            " [hash exchange]"
        } else {
            ""
        };
        let state = if n.state_tables.is_empty() {
            String::new()
        } else {
            format!(
                " state=[{}]",
                n.state_tables
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let watermarks: Vec<&str> = marks
            .get(i)
            .map(|m| {
                n.schema
                    .fields()
                    .iter()
                    .zip(m)
                    .filter(|(_, w)| **w)
                    .map(|(f, _)| f.name().as_str())
                    .collect()
            })
            .unwrap_or_default();
        let watermarks = if watermarks.is_empty() || matches!(n.kind, NodeKind::WatermarkFilter(_))
        {
            String::new()
        } else {
            format!(" watermark=[{}]", watermarks.join(", "))
        };
        format!("{detail}{exchange}{state}{watermarks}")
    }

    /// The dataflow as a Graphviz digraph (`EXPLAIN (FORMAT DOT)`): one box per node,
    /// edges from inputs to the nodes that read them, hash exchanges marked on edges.
    pub fn explain_dot(&self, workers: usize) -> String {
        let marks = self.watermark_columns().unwrap_or_default();
        let mut s = String::from(
            "digraph dataflow {\n  rankdir=BT;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for i in 0..self.nodes.len() {
            let label = self
                .node_line(i, workers, &marks)
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            let _ = writeln!(s, "  n{i} [label=\"{label}\"];");
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let hash = workers > 1 && is_keyed(&n.kind);
            for input in &n.inputs {
                if hash {
                    let _ = writeln!(s, "  n{input} -> n{i} [label=\"hash\"];");
                } else {
                    let _ = writeln!(s, "  n{input} -> n{i};");
                }
            }
        }
        s.push_str("}\n");
        s
    }
}

/// Where an offload runs, for EXPLAIN: the GPU by name, or the CPU doing `cpu_work`.
fn kernel_place(kernel: &crate::ops::partial::Kernel, cpu_work: &str) -> String {
    match kernel {
        crate::ops::partial::Kernel::Gpu(g) => format!("GPU ({}, libcudf)", g.device().name),
        crate::ops::partial::Kernel::Cpu => format!("CPU ({cpu_work})"),
    }
}

fn is_keyed(kind: &NodeKind) -> bool {
    matches!(
        kind,
        NodeKind::Aggregate(_)
            | NodeKind::Join(_)
            | NodeKind::AsofJoin(_)
            | NodeKind::TopN(_)
            | NodeKind::Session(_)
            | NodeKind::Over(_)
            | NodeKind::TemporalFilter(_)
            | NodeKind::Materialize
            | NodeKind::Emit { keyed: true }
    )
}

/// Passes source batches through.
struct SourceOp;

impl Operator for SourceOp {
    fn name(&self) -> &'static str {
        "Source"
    }
    fn on_data(
        &mut self,
        _port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        out.push(batch);
        Ok(())
    }
}

fn instantiate(node: &PlanNode, partitioner: Partitioner) -> Result<Box<dyn Operator>> {
    let table = |i: usize| {
        node.state_tables
            .get(i)
            .copied()
            .ok_or_else(|| DataflowError::Internal("node lacks a state table".into()))
    };
    Ok(match &node.kind {
        NodeKind::Source { .. } => Box::new(SourceOp),
        NodeKind::Connector { factory, .. } => Box::new(ConnectorOp::try_new(
            factory,
            Arc::clone(&node.schema),
            table(0)?,
            partitioner,
        )?),
        NodeKind::WatermarkFilter(spec) => Box::new(WatermarkFilterOp::new(spec.clone())),
        NodeKind::Filter { predicate } => Box::new(FilterOp::new(Arc::clone(predicate))),
        NodeKind::GpuFilter { predicate, offload } => Box::new(FilterOp::with_offload(
            Arc::clone(predicate),
            offload.clone(),
        )),
        NodeKind::TemporalFilter(spec) => {
            Box::new(TemporalFilterOp::try_new(spec.clone(), table(0)?)?)
        }
        NodeKind::Project { exprs } => {
            Box::new(ProjectOp::new(exprs.clone(), Arc::clone(&node.schema)))
        }
        NodeKind::Aggregate(spec) => Box::new(AggregateOp::try_new(
            spec.clone(),
            [table(0)?, table(1)?],
            partitioner,
        )?),
        NodeKind::Join(spec) => Box::new(JoinOp::try_new(spec.clone(), [table(0)?, table(1)?])?),
        NodeKind::AsofJoin(spec) => {
            Box::new(AsofJoinOp::try_new(spec.clone(), [table(0)?, table(1)?])?)
        }
        NodeKind::TopN(spec) => Box::new(TopNOp::try_new(spec.clone(), table(0)?)?),
        NodeKind::Session(spec) => Box::new(SessionOp::try_new(spec.clone(), table(0)?)?),
        NodeKind::Over(spec) => Box::new(OverOp::try_new(spec.clone(), table(0)?)?),
        NodeKind::Union => Box::new(UnionOp::new(Arc::clone(&node.schema))),
        NodeKind::ProcessingTime => Box::new(ProcessingTimeOp::new(Arc::clone(&node.schema))),
        NodeKind::Materialize => {
            Box::new(MaterializeOp::keyed(Arc::clone(&node.schema), table(0)?)?)
        }
        NodeKind::MaterializeAppendOnly => Box::new(MaterializeOp::append_only(
            Arc::clone(&node.schema),
            table(0)?,
            partitioner,
        )?),
        NodeKind::Emit { keyed } => {
            Box::new(MaterializeOp::emit(Arc::clone(&node.schema), *keyed)?)
        }
    })
}

/// Computes the key columns of a batch arriving on a port.
type KeyFn = Box<dyn Fn(usize, &RecordBatch) -> Result<Vec<ArrayRef>> + Send + Sync>;

/// How the batches arriving at a keyed node are routed to workers.
enum Exchange {
    None,
    /// Route by these key columns of each batch (computed per port).
    Hash(KeyFn, RowCodecs),
}

/// Key codecs per input port.
type RowCodecs = Vec<RowCodec>;

fn exchange_for(node: &PlanNode, input_schemas: &[SchemaRef]) -> Result<Exchange> {
    Ok(match &node.kind {
        NodeKind::Aggregate(spec) => {
            let g = spec.group_count;
            let types = spec.input_schema.fields()[..g]
                .iter()
                .map(|f| f.data_type().clone())
                .collect();
            Exchange::Hash(
                Box::new(move |_, b: &RecordBatch| Ok(b.columns()[..g].to_vec())),
                vec![RowCodec::new(types)?],
            )
        }
        NodeKind::Join(spec) => {
            let s = spec.clone();
            let types = spec.key_types()?;
            Exchange::Hash(
                Box::new(move |port, b: &RecordBatch| s.key_columns(port, b)),
                vec![RowCodec::new(types.clone())?, RowCodec::new(types)?],
            )
        }
        NodeKind::AsofJoin(spec) => {
            let s = spec.join.clone();
            let types = spec.join.key_types()?;
            Exchange::Hash(
                Box::new(move |port, b: &RecordBatch| s.key_columns(port, b)),
                vec![RowCodec::new(types.clone())?, RowCodec::new(types)?],
            )
        }
        NodeKind::TopN(spec) => {
            let s = spec.clone();
            Exchange::Hash(
                Box::new(move |_, b: &RecordBatch| s.partition_columns(b)),
                vec![spec.partition_codec()?],
            )
        }
        NodeKind::Session(spec) => {
            let s = spec.clone();
            Exchange::Hash(
                Box::new(move |_, b: &RecordBatch| Ok(s.key_columns(b))),
                vec![spec.key_codec()?],
            )
        }
        NodeKind::Over(spec) => {
            let s = spec.clone();
            Exchange::Hash(
                Box::new(move |_, b: &RecordBatch| s.partition_columns(b)),
                vec![spec.partition_codec()?],
            )
        }
        NodeKind::Materialize | NodeKind::Emit { keyed: true } | NodeKind::TemporalFilter(_) => {
            Exchange::Hash(
                Box::new(|_, b: &RecordBatch| Ok(b.columns().to_vec())),
                vec![RowCodec::for_schema(&input_schemas[0])?],
            )
        }
        _ => Exchange::None,
    })
}

/// A running view: its plan and one operator instance per node per worker.
pub struct Dataflow {
    plan: StreamPlan,
    workers: usize,
    /// `instances[node][worker]`.
    instances: Vec<Vec<Box<dyn Operator>>>,
    exchanges: Vec<Exchange>,
    /// Each node's output watermarks after the last epoch.
    watermarks: Vec<Watermarks>,
    /// Per watermark filter node: the late rows it dropped, in all.
    late_rows: Vec<u64>,
    /// The clock temporal filters see, when fixed (tests); else the system's.
    clock: Option<i64>,
    /// The last epoch's clock: the clock never steps back within a run.
    last_clock: Option<i64>,
    /// Per node: what went through it since the dataflow started.
    counters: Vec<NodeCounters>,
    /// The threads workers after the first run on.
    threads: WorkerThreads,
}

#[derive(Debug, Clone, Copy, Default)]
struct NodeCounters {
    rows_in: u64,
    rows_out: u64,
    busy: std::time::Duration,
}

/// One operator of a running view, for metrics: counts since the server started.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorStats {
    /// The node's index in the plan (EXPLAIN (FORMAT DOT) names it `n<index>`).
    pub node: usize,
    /// What it is (`HashAggregate`, `SourceReader`, ...).
    pub operator: &'static str,
    /// Its line in EXPLAIN.
    pub label: String,
    /// The nodes it reads.
    pub inputs: Vec<usize>,
    /// The relation it reads, for sources and source readers.
    pub relation: Option<String>,
    /// Rows (changes) that reached it, and that it emitted.
    pub rows_in: u64,
    pub rows_out: u64,
    /// Time its instances spent working, summed over workers.
    pub busy_seconds: f64,
    /// Entries it holds in memory (groups, rows), summed over workers.
    pub state_rows: u64,
    /// For a source reader: the offsets its splits reached and, when all know it, the
    /// offsets they would reach reading everything there is now.
    pub source_progress: Option<(u64, Option<u64>)>,
    /// For a source reader over external input (Kafka, files): bytes read since the
    /// server started.
    pub source_bytes: Option<u64>,
}

/// One watermark of a running view, for `sabot_catalog.watermarks`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkStatus {
    /// The source or table it is declared on.
    pub relation: String,
    pub column: String,
    /// `None` until the first row arrived.
    pub value: Option<ScalarValue>,
    /// Rows dropped as late.
    pub late_rows: u64,
}

/// The key under which a watermark filter keeps its value and late count.
const WATERMARK_KEY: &[u8] = b"watermark";

impl Dataflow {
    pub fn try_new(plan: StreamPlan, workers: usize) -> Result<Self> {
        let workers = workers.max(1);
        let mut instances = Vec::with_capacity(plan.nodes.len());
        let mut exchanges = Vec::with_capacity(plan.nodes.len());
        for node in &plan.nodes {
            let per_worker = (0..workers)
                .map(|worker| instantiate(node, Partitioner { worker, workers }))
                .collect::<Result<Vec<_>>>()?;
            instances.push(per_worker);
            let input_schemas: Vec<SchemaRef> = node
                .inputs
                .iter()
                .map(|i| Arc::clone(&plan.nodes[*i].schema))
                .collect();
            exchanges.push(exchange_for(node, &input_schemas)?);
        }
        match plan.nodes.last() {
            Some(PlanNode {
                kind:
                    NodeKind::Materialize | NodeKind::MaterializeAppendOnly | NodeKind::Emit { .. },
                ..
            }) => {}
            _ => {
                return Err(DataflowError::Internal(
                    "a stream plan must end in Materialize".into(),
                ))
            }
        }
        let watermarks = plan
            .nodes
            .iter()
            .map(|n| vec![None; n.schema.fields().len()])
            .collect();
        let late_rows = vec![0; plan.nodes.len()];
        let counters = vec![NodeCounters::default(); plan.nodes.len()];
        Ok(Self {
            plan,
            workers,
            instances,
            exchanges,
            watermarks,
            late_rows,
            clock: None,
            last_clock: None,
            counters,
            threads: WorkerThreads::default(),
        })
    }

    pub fn plan(&self) -> &StreamPlan {
        &self.plan
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Loads every operator's committed state.
    pub fn restore(&mut self, store: &Store) -> Result<()> {
        for (node, per_worker) in self.instances.iter_mut().enumerate() {
            let plan_node = &self.plan.nodes[node];
            if let NodeKind::WatermarkFilter(spec) = &plan_node.kind {
                for table in &plan_node.state_tables {
                    for (k, v) in store.scan(*table)? {
                        if k != WATERMARK_KEY {
                            continue;
                        }
                        let (wm, late) = decode_watermark(&v)?;
                        let ty = plan_node.schema.field(spec.column).data_type();
                        self.watermarks[node][spec.column] = Some(scalar_from_i64(wm, ty)?);
                        self.late_rows[node] = late;
                    }
                }
                continue;
            }
            for table in &plan_node.state_tables {
                let entries = store.scan(*table)?;
                for (worker, op) in per_worker.iter_mut().enumerate() {
                    op.restore(
                        *table,
                        &entries,
                        Partitioner {
                            worker,
                            workers: self.workers,
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Fixes the clock (nanoseconds since the Unix epoch) that temporal filters see from
    /// the next epoch on; `None`: the system clock.
    pub fn set_clock(&mut self, now_ns: Option<i64>) {
        self.clock = now_ns;
    }

    /// Whether an operator holds rows whose output changes as the clock moves: epochs
    /// must run even without input.
    pub fn time_driven(&self) -> bool {
        self.instances.iter().flatten().any(|op| op.time_pending())
    }

    /// Runs one epoch. `deltas` maps each source relation to its changes in the epoch;
    /// state changes go into `batch`. Returns the view's change in the epoch.
    pub fn run_epoch(
        &mut self,
        deltas: &HashMap<String, Vec<ChangeBatch>>,
        batch: &mut EpochBatch,
    ) -> Result<Vec<ChangeBatch>> {
        let epoch = batch.epoch();
        let w = self.workers;
        if self
            .instances
            .iter()
            .any(|per_worker| per_worker.len() != w)
        {
            return Err(DataflowError::Internal(
                "this view lost a worker in an earlier epoch".into(),
            ));
        }
        let now = self.clock.unwrap_or_else(system_clock_ns);
        let now = self.last_clock.map_or(now, |last| last.max(now));
        self.last_clock = Some(now);
        // outputs[node][worker]
        let mut outputs: Vec<Vec<Vec<ChangeBatch>>> = Vec::with_capacity(self.plan.nodes.len());
        // How many inputs still read each node's output: a node that feeds several
        // (a shared subplan) is copied to all but the last, which takes it.
        let mut readers = vec![0usize; self.plan.nodes.len()];
        for node in &self.plan.nodes {
            for input in &node.inputs {
                readers[*input] += 1;
            }
        }
        for (i, node) in self.plan.nodes.iter().enumerate() {
            // inputs[worker][port] = messages
            let mut inputs: Vec<Vec<Vec<Message>>> =
                vec![vec![Vec::new(); node.inputs.len().max(1)]; w];
            if let NodeKind::Source { relation } = &node.kind {
                for (k, b) in deltas.get(relation).into_iter().flatten().enumerate() {
                    if !b.is_empty() {
                        inputs[k % w][0].push(Message::Data(b.clone()));
                    }
                }
            } else {
                for (port, input) in node.inputs.iter().enumerate() {
                    // The input's last reader frees its output as it is routed.
                    readers[*input] -= 1;
                    let output = if readers[*input] == 0 {
                        std::mem::take(&mut outputs[*input])
                    } else {
                        outputs[*input].clone()
                    };
                    for (from, batches) in output.into_iter().enumerate() {
                        for b in batches {
                            self.route(i, port, &b, from, &mut inputs)?;
                        }
                    }
                }
            }
            if let NodeKind::TemporalFilter(_) | NodeKind::ProcessingTime = &node.kind {
                // The clock comes first: the epoch's rows are judged by it.
                for per_worker in &mut inputs {
                    per_worker[0].insert(0, Message::Clock(now));
                }
            }
            match &node.kind {
                NodeKind::WatermarkFilter(spec) => {
                    // The filter learns its own watermark before the epoch's rows.
                    if let Some(v) = &self.watermarks[i][spec.column] {
                        for per_worker in &mut inputs {
                            per_worker[0].insert(0, Message::Watermark(spec.column, v.clone()));
                        }
                    }
                }
                _ => {
                    for (port, input) in node.inputs.iter().enumerate() {
                        for (c, v) in self.watermarks[*input].iter().enumerate() {
                            if let Some(v) = v {
                                for per_worker in &mut inputs {
                                    per_worker[port].push(Message::Watermark(c, v.clone()));
                                }
                            }
                        }
                    }
                }
            }
            for per_worker in &mut inputs {
                for port in per_worker.iter_mut() {
                    port.push(Message::Barrier(epoch));
                }
            }
            self.counters[i].rows_in += inputs
                .iter()
                .flatten()
                .flatten()
                .map(|m| match m {
                    Message::Data(b) => b.num_rows() as u64,
                    _ => 0,
                })
                .sum::<u64>();
            let started = std::time::Instant::now();
            let results: Vec<Outcome> = if w == 1 {
                let op = &mut self.instances[i][0];
                inputs
                    .into_iter()
                    .map(|msgs| run_instance(op.as_mut(), msgs))
                    .collect()
            } else {
                self.threads
                    .run(&mut self.instances[i], inputs, run_instance)
            };
            // Wall time of the node's step: with several workers it runs them at once.
            self.counters[i].busy += started.elapsed();
            let mut node_out = Vec::with_capacity(w);
            for r in results {
                let (out, writer) = r?;
                batch.append(writer);
                self.counters[i].rows_out += out.iter().map(|b| b.num_rows() as u64).sum::<u64>();
                node_out.push(out);
            }
            outputs.push(node_out);
            // A bounded source read to its end: no row will ever come again.
            let finished = match (&node.kind, node.inputs.first()) {
                (NodeKind::WatermarkFilter(_), Some(j)) => {
                    matches!(self.plan.nodes[*j].kind, NodeKind::Connector { .. })
                        && self.instances[*j].iter().all(|op| !op.source_active())
                }
                _ => false,
            };
            advance_watermarks(
                &self.plan,
                i,
                &mut self.instances[i],
                &mut self.watermarks,
                &mut self.late_rows,
                finished,
                batch,
            )?;
        }
        Ok(outputs
            .pop()
            .map(|o| o.into_iter().flatten().collect())
            .unwrap_or_default())
    }

    /// Each operator's counters and state size.
    pub fn operator_stats(&self) -> Vec<OperatorStats> {
        let marks = self.plan.watermark_columns().unwrap_or_default();
        self.plan
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| OperatorStats {
                node: i,
                operator: self.instances[i].first().map_or("", |op| op.name()),
                label: self.plan.node_line(i, self.workers, &marks),
                inputs: n.inputs.clone(),
                relation: match &n.kind {
                    NodeKind::Source { relation } | NodeKind::Connector { relation, .. } => {
                        Some(relation.clone())
                    }
                    _ => None,
                },
                rows_in: self.counters[i].rows_in,
                rows_out: self.counters[i].rows_out,
                busy_seconds: self.counters[i].busy.as_secs_f64(),
                state_rows: self.instances[i]
                    .iter()
                    .map(|op| op.state_rows() as u64)
                    .sum(),
                source_bytes: self.instances[i]
                    .iter()
                    .filter_map(|op| op.source_bytes())
                    .reduce(|a, b| a + b),
                source_progress: self.instances[i]
                    .iter()
                    .filter_map(|op| op.source_progress())
                    .reduce(|a, b| (a.0 + b.0, a.1.zip(b.1).map(|(x, y)| x + y))),
            })
            .collect()
    }

    /// The watermarks declared on the relations this view reads, with their current
    /// values and late row counts, one entry per relation and column.
    pub fn watermark_status(&self) -> Vec<WatermarkStatus> {
        let mut out: Vec<WatermarkStatus> = Vec::new();
        for (i, n) in self.plan.nodes.iter().enumerate() {
            let NodeKind::WatermarkFilter(spec) = &n.kind else {
                continue;
            };
            let relation = n
                .inputs
                .first()
                .and_then(|j| match &self.plan.nodes[*j].kind {
                    NodeKind::Source { relation } | NodeKind::Connector { relation, .. } => {
                        Some(relation.clone())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            let column = n.schema.field(spec.column).name().clone();
            let value = self.watermarks[i][spec.column].clone();
            let late_rows = self.late_rows[i];
            // A relation read several times (a self-join, HOP's copies) has a filter per
            // read, each over the same rows: one entry.
            match out
                .iter_mut()
                .find(|w| w.relation == relation && w.column == column)
            {
                Some(w) => {
                    if value.partial_cmp(&w.value) == Some(std::cmp::Ordering::Greater) {
                        w.value = value;
                    }
                    w.late_rows = w.late_rows.max(late_rows);
                }
                None => out.push(WatermarkStatus {
                    relation,
                    column,
                    value,
                    late_rows,
                }),
            }
        }
        out
    }

    /// Sends batch `b`, produced on worker `from`, to node `node`'s input `port`.
    fn route(
        &self,
        node: usize,
        port: usize,
        b: &ChangeBatch,
        from: usize,
        inputs: &mut [Vec<Vec<Message>>],
    ) -> Result<()> {
        let w = self.workers;
        match &self.exchanges[node] {
            Exchange::Hash(keys, codecs) if w > 1 => {
                let cols = keys(port, b.data())?;
                let codec = &codecs[port.min(codecs.len() - 1)];
                let mut parts: Vec<Vec<u32>> = vec![Vec::new(); w];
                if codec.is_empty() {
                    let owner = Partitioner::worker_of(w, &[]);
                    parts[owner] = (0..b.num_rows() as u32).collect();
                } else {
                    let rows = codec.encode(&cols)?;
                    for (r, row) in rows.iter().enumerate() {
                        parts[Partitioner::worker_of(w, row.data())].push(r as u32);
                    }
                }
                for (worker, idx) in parts.into_iter().enumerate() {
                    if !idx.is_empty() {
                        let part = b.take(&UInt32Array::from(idx))?;
                        inputs[worker][port].push(Message::Data(part));
                    }
                }
            }
            _ => inputs[from][port].push(Message::Data(b.clone())),
        }
        Ok(())
    }

    /// Per operator: rows out and busy seconds since the dataflow started (cheap: no
    /// state is walked).
    pub fn operator_counters(&self) -> Vec<(u64, f64)> {
        self.counters
            .iter()
            .map(|c| (c.rows_out, c.busy.as_secs_f64()))
            .collect()
    }

    /// Rows that entered the view (read by its source readers, or changes of the tables
    /// and views it reads) and changes it made to its result, since it started.
    pub fn throughput_counters(&self) -> (u64, u64) {
        let read = self
            .plan
            .nodes
            .iter()
            .zip(&self.counters)
            .filter(|(n, _)| matches!(n.kind, NodeKind::Source { .. } | NodeKind::Connector { .. }))
            .map(|(_, c)| c.rows_out)
            .sum();
        let written = self.counters.last().map_or(0, |c| c.rows_in);
        (read, written)
    }

    /// Over all source readers of this dataflow: the offsets reached and, when every
    /// split is bounded, the offsets where they end. None without source readers.
    pub fn source_progress(&self) -> Option<(u64, Option<u64>)> {
        self.instances
            .iter()
            .flatten()
            .filter_map(|op| op.source_progress())
            .reduce(|a, b| (a.0 + b.0, a.1.zip(b.1).map(|(x, y)| x + y)))
    }

    /// Whether a source reader of this dataflow still has rows to read.
    pub fn sources_active(&self) -> bool {
        self.instances.iter().flatten().any(|op| op.source_active())
    }

    /// Whether a source reader has rows ready now beyond what the last epoch took.
    pub fn wants_more(&self) -> bool {
        self.instances.iter().flatten().any(|op| op.wants_more())
    }

    /// The view's current contents.
    pub fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        let last = self
            .instances
            .last()
            .ok_or_else(|| DataflowError::Internal("empty dataflow".into()))?;
        let mut parts = Vec::new();
        for op in last {
            parts.extend(op.snapshot()?);
        }
        Ok(parts)
    }

    /// The view's current rows as one batch.
    pub fn snapshot_batch(&self) -> Result<RecordBatch> {
        let schema = Arc::clone(&self.plan.nodes[self.plan.nodes.len() - 1].schema);
        Ok(arrow::compute::concat_batches(&schema, &self.snapshot()?)?)
    }
}

/// Runs one worker's instance over its messages of the epoch, port by port. A panic
/// inside an operator (or a kernel it calls) becomes an error of this dataflow.
fn run_instance(op: &mut dyn Operator, ports: Vec<Vec<Message>>) -> Outcome {
    let name = op.name();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_messages(op, ports)))
        .unwrap_or_else(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(DataflowError::Internal(format!(
                "operator {name} panicked: {msg}"
            )))
        })
}

fn run_messages(
    op: &mut dyn Operator,
    ports: Vec<Vec<Message>>,
) -> Result<(Vec<ChangeBatch>, StateWriter)> {
    let mut out = Vec::new();
    let mut writer = StateWriter::default();
    let mut barrier = None;
    for (port, msgs) in ports.into_iter().enumerate() {
        for msg in msgs {
            match msg {
                Message::Data(b) => op.on_data(port, b, &mut out)?,
                Message::Watermark(c, v) => op.on_watermark(port, c, &v)?,
                Message::Clock(now) => op.on_clock(now, &mut out)?,
                Message::Barrier(e) => barrier = Some(e),
            }
        }
    }
    if let Some(epoch) = barrier {
        op.on_barrier(epoch, &mut writer, &mut out)?;
    }
    Ok((out, writer))
}

fn decode_watermark(v: &[u8]) -> Result<(i64, u64)> {
    let (Some(wm), Some(late)) = (v.get(..8), v.get(8..16)) else {
        return Err(DataflowError::Corrupt("watermark entry too short".into()));
    };
    let wm = i64::from_be_bytes(
        wm.try_into()
            .map_err(|_| DataflowError::Corrupt("watermark".into()))?,
    );
    let late = u64::from_be_bytes(
        late.try_into()
            .map_err(|_| DataflowError::Corrupt("late rows".into()))?,
    );
    Ok((wm, late))
}

/// Works out node `i`'s watermarks after it ran in this epoch; a watermark filter's
/// new value and late count go into `batch`. `finished`: the filter's bounded source has
/// been read to its end, so its watermark moves to the end of time (every window
/// closes).
#[allow(clippy::too_many_arguments)]
fn advance_watermarks(
    plan: &StreamPlan,
    i: usize,
    instances: &mut [Box<dyn Operator>],
    watermarks: &mut [Watermarks],
    late_rows: &mut [u64],
    finished: bool,
    batch: &mut EpochBatch,
) -> Result<()> {
    let node = &plan.nodes[i];
    if let NodeKind::WatermarkFilter(spec) = &node.kind {
        let mut seen: Option<i64> = None;
        let mut late = 0u64;
        for op in instances.iter_mut() {
            let (v, l) = op.take_generated();
            late += l;
            if let Some(v) = v {
                seen = Some(seen.map_or(v, |s| s.max(v)));
            }
        }
        let before = match &watermarks[i][spec.column] {
            Some(v) => scalar_to_i64(v)?,
            None => None,
        };
        let ty = node.schema.field(spec.column).data_type();
        let after = match (before, seen) {
            (Some(b), Some(s)) => Some(b.max(s)),
            (b, s) => b.or(s),
        };
        let after = if finished {
            Some(after.map_or(end_of_time(ty), |a| a.max(end_of_time(ty))))
        } else {
            after
        };
        if after == before && late == 0 {
            return Ok(());
        }
        late_rows[i] += late;
        let Some(wm) = after else {
            return Ok(());
        };
        watermarks[i][spec.column] = Some(scalar_from_i64(wm, ty)?);
        let table = node.state_tables.first().copied().ok_or_else(|| {
            DataflowError::Internal("a watermark filter lacks its state table".into())
        })?;
        let mut writer = StateWriter::default();
        let mut value = wm.to_be_bytes().to_vec();
        value.extend_from_slice(&late_rows[i].to_be_bytes());
        writer.put(table, WATERMARK_KEY, &value);
        batch.append(writer);
        return Ok(());
    }
    let inputs: Vec<&Watermarks> = node.inputs.iter().map(|j| &watermarks[*j]).collect();
    let schemas: Vec<SchemaRef> = node
        .inputs
        .iter()
        .map(|j| Arc::clone(&plan.nodes[*j].schema))
        .collect();
    let derived = derive(node, &inputs, &schemas)?;
    watermarks[i] = derived;
    Ok(())
}

/// Nanoseconds since the Unix epoch by the system clock.
fn system_clock_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The watermark of a source that has ended, as the integer of the time type `ty`:
/// 2200-01-01, beyond any event yet within reach of window arithmetic (DataFusion's
/// `date_bin` computes in nanoseconds, which end in 2262).
fn end_of_time(ty: &arrow::datatypes::DataType) -> i64 {
    use arrow::datatypes::{DataType, TimeUnit};
    const YEAR_2200_SECONDS: i64 = 7_258_118_400;
    match ty {
        DataType::Timestamp(TimeUnit::Second, _) => YEAR_2200_SECONDS,
        DataType::Timestamp(TimeUnit::Millisecond, _) => YEAR_2200_SECONDS * 1_000,
        DataType::Timestamp(TimeUnit::Microsecond, _) => YEAR_2200_SECONDS * 1_000_000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => YEAR_2200_SECONDS * 1_000_000_000,
        _ => i64::MAX / 4,
    }
}
