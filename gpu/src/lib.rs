//! Sabot's GPU path: libcudf behind the C ABI of `shim/sabot_cudf.h`.
//!
//! The shim (`libsabot_cudf.so`, built by `shim/build.sh` against libcudf) is loaded at run
//! time, so the `sabot` binary builds and runs where neither it nor a GPU exists: [`Gpu::load`]
//! then returns an error saying why, and callers keep to the CPU path. Batches cross the
//! boundary through the Arrow C Data Interface; errors from C++ come back as [`GpuError`]s,
//! never as aborts.

use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, AsArray, Int32Array, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Int32Type};
use arrow::error::ArrowError;
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};

mod expr;
mod sys {
    #![allow(
        non_camel_case_types,
        non_upper_case_globals,
        non_snake_case,
        dead_code,
        clippy::all
    )]
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub use expr::{BinaryOp, ExprBuilder, NodeId, UnaryOp};

/// The file name the loader looks for when no path is given (found through the usual
/// `dlopen` search: `LD_LIBRARY_PATH`, the runpath, the system's directories).
pub const DEFAULT_LIBRARY: &str = "libsabot_cudf.so";

/// The environment variable naming the shim library's path.
pub const LIBRARY_ENV: &str = "SABOT_GPU_LIBRARY";

/// Pinned host memory the shim stages input batches through (DMA from pageable memory
/// runs at a fraction of the link's speed).
pub const DEFAULT_PINNED_BYTES: i64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The shim library (or a library it needs, such as libcudf) could not be loaded.
    #[error("GPU library {path} could not be loaded: {message}")]
    Load { path: String, message: String },
    #[error("GPU library {path} has interface version {found}, this build needs {expected}")]
    Abi {
        path: String,
        found: i32,
        expected: i32,
    },
    /// No usable CUDA device or driver, or the CUDA runtime failed.
    #[error("GPU unavailable: {0}")]
    Device(String),
    /// libcudf does not support this type or operation: run it on the CPU.
    #[error("not supported on the GPU: {0}")]
    Unsupported(String),
    #[error("invalid GPU request: {0}")]
    Invalid(String),
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    #[error("GPU error: {0}")]
    Internal(String),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

impl GpuError {
    /// The same work can be done on the CPU instead (everything but a bug in the
    /// request itself).
    pub fn cpu_can_take_over(&self) -> bool {
        !matches!(self, GpuError::Invalid(_))
    }
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

/// What the CUDA runtime says of device 0.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub device_count: i32,
    pub compute_capability: (i32, i32),
    pub total_memory: i64,
    pub free_memory: i64,
    pub runtime_version: i32,
    pub driver_version: i32,
}

/// An aggregation for [`Gpu::group_by`]: its function over an input column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agg {
    pub kind: AggKind,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// libcudf's widening: INT64 over integers, FLOAT64 over floats.
    Sum,
    /// Non-NULL values (INT32).
    CountValid,
    /// Rows (INT32).
    CountAll,
    Min,
    Max,
    /// FLOAT64.
    Mean,
}

impl AggKind {
    fn code(self) -> i32 {
        (match self {
            AggKind::Sum => sys::SABOT_CUDF_AGG_SUM,
            AggKind::CountValid => sys::SABOT_CUDF_AGG_COUNT_VALID,
            AggKind::CountAll => sys::SABOT_CUDF_AGG_COUNT_ALL,
            AggKind::Min => sys::SABOT_CUDF_AGG_MIN,
            AggKind::Max => sys::SABOT_CUDF_AGG_MAX,
            AggKind::Mean => sys::SABOT_CUDF_AGG_MEAN,
        }) as i32
    }
}

/// The loaded shim and the device it found.
pub struct Gpu {
    /// Never unloaded: unloading libcudf while the CUDA runtime holds its state is not
    /// safe, and a process loads it once anyway.
    lib: std::mem::ManuallyDrop<sys::SabotCudf>,
    path: String,
    device: DeviceInfo,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("path", &self.path)
            .field("device", &self.device)
            .finish()
    }
}

fn cols_i32(cols: &[usize]) -> Result<Vec<i32>> {
    cols.iter()
        .map(|&c| i32::try_from(c).map_err(|_| GpuError::Invalid(format!("column {c}"))))
        .collect()
}

/// A batch exported for the call's duration (the shim never releases it).
struct Exported {
    array: FFI_ArrowArray,
    schema: FFI_ArrowSchema,
}

impl Exported {
    fn new(batch: &RecordBatch) -> Result<Self> {
        let data = StructArray::from(batch.clone()).into_data();
        let (array, schema) = arrow::ffi::to_ffi(&data)?;
        Ok(Self { array, schema })
    }

    fn schema(&self) -> *const sys::ArrowSchema {
        (&self.schema as *const FFI_ArrowSchema).cast()
    }

    fn array(&self) -> *const sys::ArrowArray {
        (&self.array as *const FFI_ArrowArray).cast()
    }
}

/// Where the shim writes a result; imported (and released) by [`Output::batch`].
struct Output {
    array: FFI_ArrowArray,
    schema: FFI_ArrowSchema,
}

impl Output {
    fn new() -> Self {
        Self {
            array: FFI_ArrowArray::empty(),
            schema: FFI_ArrowSchema::empty(),
        }
    }

    fn schema(&mut self) -> *mut sys::ArrowSchema {
        (&mut self.schema as *mut FFI_ArrowSchema).cast()
    }

    fn array(&mut self) -> *mut sys::ArrowArray {
        (&mut self.array as *mut FFI_ArrowArray).cast()
    }

    fn batch(self) -> Result<RecordBatch> {
        if self.array.is_released() {
            return Err(GpuError::Internal(
                "the GPU library returned no batch".into(),
            ));
        }
        // SAFETY: the shim filled both structs by the C Data Interface on success; the
        // import takes ownership of the array and releases it when its buffers drop.
        let data = unsafe { arrow::ffi::from_ffi(self.array, &self.schema)? };
        if !matches!(data.data_type(), DataType::Struct(_)) {
            return Err(GpuError::Internal(
                "the GPU library returned a non-struct array".into(),
            ));
        }
        Ok(RecordBatch::from(StructArray::from(data)))
    }
}

impl Gpu {
    /// Loads the shim from `path` (or [`LIBRARY_ENV`], or [`DEFAULT_LIBRARY`]), checks its
    /// interface version, probes device 0 and sets up device memory. Fails, saying why,
    /// where the library, libcudf, a driver or a device is missing.
    pub fn load(path: Option<&Path>) -> Result<Gpu> {
        let path: PathBuf = match path {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os(LIBRARY_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_LIBRARY)),
        };
        let shown = path.display().to_string();
        // SAFETY: loading runs the library's initializers: libsabot_cudf and libcudf's,
        // which only register types and allocate nothing on the device.
        let lib = unsafe { sys::SabotCudf::new(&path) }.map_err(|e| GpuError::Load {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let lib = std::mem::ManuallyDrop::new(lib);
        // SAFETY: a function without arguments, present (checked by the load).
        let found = unsafe { lib.sabot_cudf_abi_version() };
        let expected = sys::SABOT_CUDF_ABI_VERSION as i32;
        if found != expected {
            return Err(GpuError::Abi {
                path: shown,
                found,
                expected,
            });
        }
        let mut gpu = Gpu {
            lib,
            path: shown,
            device: DeviceInfo {
                name: String::new(),
                device_count: 0,
                compute_capability: (0, 0),
                total_memory: 0,
                free_memory: 0,
                runtime_version: 0,
                driver_version: 0,
            },
        };
        gpu.device = gpu.probe()?;
        gpu.call(|lib, err| unsafe { lib.sabot_cudf_init(DEFAULT_PINNED_BYTES, err) })?;
        Ok(gpu)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    /// Asks the CUDA runtime again (free memory changes).
    pub fn probe(&self) -> Result<DeviceInfo> {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut info: sys::sabot_cudf_device = unsafe { std::mem::zeroed() };
        self.call(|lib, err| unsafe { lib.sabot_cudf_device_info(&mut info, err) })?;
        // SAFETY: the shim writes a NUL-terminated name (snprintf into the array).
        let name = unsafe { CStr::from_ptr(info.name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(DeviceInfo {
            name,
            device_count: info.device_count,
            compute_capability: (info.compute_major, info.compute_minor),
            total_memory: info.total_memory,
            free_memory: info.free_memory,
            runtime_version: info.runtime_version,
            driver_version: info.driver_version,
        })
    }

    /// Runs one shim call and turns its status and message into a `Result`.
    fn call(&self, f: impl FnOnce(&sys::SabotCudf, *mut *mut c_char) -> i32) -> Result<()> {
        let mut err: *mut c_char = std::ptr::null_mut();
        let status = f(&self.lib, &mut err);
        if status == sys::SABOT_CUDF_OK as i32 {
            return Ok(());
        }
        let message = if err.is_null() {
            format!("status {status}")
        } else {
            // SAFETY: the shim sets `err` to a NUL-terminated string it allocated; it is
            // freed by the shim's own function, once.
            let m = unsafe { CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned();
            unsafe { self.lib.sabot_cudf_free_error(err) };
            m
        };
        Err(match status as u32 {
            sys::SABOT_CUDF_INVALID => GpuError::Invalid(message),
            sys::SABOT_CUDF_UNSUPPORTED => GpuError::Unsupported(message),
            sys::SABOT_CUDF_DEVICE => GpuError::Device(message),
            sys::SABOT_CUDF_OUT_OF_MEMORY => GpuError::OutOfMemory(message),
            _ => GpuError::Internal(message),
        })
    }

    /// Hash group-by of one batch: the distinct keys (in no particular order), then one
    /// column per aggregation. NULL keys group together.
    pub fn group_by(
        &self,
        batch: &RecordBatch,
        keys: &[usize],
        aggs: &[Agg],
    ) -> Result<RecordBatch> {
        let input = Exported::new(batch)?;
        let keys = cols_i32(keys)?;
        let aggs = to_sys_aggs(aggs)?;
        let mut out = Output::new();
        self.call(|lib, err| unsafe {
            lib.sabot_cudf_groupby(
                input.schema(),
                input.array(),
                keys.as_ptr(),
                keys.len(),
                aggs.as_ptr(),
                aggs.len(),
                out.schema(),
                out.array(),
                err,
            )
        })?;
        out.batch()
    }

    /// Hash group-by whose aggregated values are expressions evaluated on the device:
    /// each [`Agg::column`] is the index of a node of `exprs` ([`NodeId::index`]) over
    /// `batch`'s columns. Output as [`Gpu::group_by`]'s.
    pub fn group_by_exprs(
        &self,
        batch: &RecordBatch,
        keys: &[usize],
        exprs: &ExprBuilder,
        aggs: &[Agg],
    ) -> Result<RecordBatch> {
        let input = Exported::new(batch)?;
        let keys = cols_i32(keys)?;
        let nodes = exprs.nodes();
        let aggs = to_sys_aggs(aggs)?;
        let mut out = Output::new();
        self.call(|lib, err| unsafe {
            lib.sabot_cudf_groupby_exprs(
                input.schema(),
                input.array(),
                keys.as_ptr(),
                keys.len(),
                nodes.as_ptr(),
                nodes.len(),
                aggs.as_ptr(),
                aggs.len(),
                out.schema(),
                out.array(),
                err,
            )
        })?;
        out.batch()
    }

    /// libcudf's stateful group-by: partial aggregates stay on the device across batches.
    /// `max_distinct_keys` bounds the distinct keys over its life and the rows of a batch.
    pub fn streaming_group_by(
        self: &Arc<Self>,
        keys: &[usize],
        aggs: &[Agg],
        max_distinct_keys: usize,
    ) -> Result<StreamingGroupBy> {
        let keys = cols_i32(keys)?;
        let aggs = to_sys_aggs(aggs)?;
        let max = i32::try_from(max_distinct_keys)
            .map_err(|_| GpuError::Invalid(format!("max_distinct_keys {max_distinct_keys}")))?;
        let mut handle: *mut sys::sabot_cudf_streaming_groupby = std::ptr::null_mut();
        self.call(|lib, err| unsafe {
            lib.sabot_cudf_streaming_groupby_new(
                keys.as_ptr(),
                keys.len(),
                aggs.as_ptr(),
                aggs.len(),
                max,
                &mut handle,
                err,
            )
        })?;
        Ok(StreamingGroupBy {
            gpu: Arc::clone(self),
            handle,
        })
    }

    /// The rows of `batch` where `predicate` is true (all rows without one), with one
    /// column per projection. Nodes come from an [`ExprBuilder`] whose columns refer to
    /// `batch`'s.
    pub fn filter_project(
        &self,
        batch: &RecordBatch,
        exprs: &ExprBuilder,
        predicate: Option<NodeId>,
        projections: &[NodeId],
    ) -> Result<RecordBatch> {
        let input = Exported::new(batch)?;
        let nodes = exprs.nodes();
        let projections: Vec<i32> = projections.iter().map(|p| p.0).collect();
        let mut out = Output::new();
        self.call(|lib, err| unsafe {
            lib.sabot_cudf_filter_project(
                input.schema(),
                input.array(),
                nodes.as_ptr(),
                nodes.len(),
                predicate.map_or(-1, |p| p.0),
                projections.as_ptr(),
                projections.len(),
                out.schema(),
                out.array(),
                err,
            )
        })?;
        out.batch()
    }

    /// Inner hash join on equal keys (NULL keys never match): the matching (left row,
    /// right row) index pairs, in no particular order.
    pub fn inner_join(
        &self,
        left: &RecordBatch,
        left_keys: &[usize],
        right: &RecordBatch,
        right_keys: &[usize],
    ) -> Result<(Int32Array, Int32Array)> {
        if left_keys.len() != right_keys.len() || left_keys.is_empty() {
            return Err(GpuError::Invalid(
                "a join needs the same number of keys on both sides".into(),
            ));
        }
        let l = Exported::new(left)?;
        let r = Exported::new(right)?;
        let lk = cols_i32(left_keys)?;
        let rk = cols_i32(right_keys)?;
        let mut out = Output::new();
        self.call(|lib, err| unsafe {
            lib.sabot_cudf_inner_join(
                l.schema(),
                l.array(),
                lk.as_ptr(),
                r.schema(),
                r.array(),
                rk.as_ptr(),
                lk.len(),
                out.schema(),
                out.array(),
                err,
            )
        })?;
        let pairs = out.batch()?;
        let column = |i: usize| -> Result<Int32Array> {
            pairs
                .column(i)
                .as_primitive_opt::<Int32Type>()
                .cloned()
                .ok_or_else(|| GpuError::Internal("join indices are not INT32".into()))
        };
        Ok((column(0)?, column(1)?))
    }
}

fn to_sys_aggs(aggs: &[Agg]) -> Result<Vec<sys::sabot_cudf_agg>> {
    aggs.iter()
        .map(|a| {
            Ok(sys::sabot_cudf_agg {
                column: cols_i32(&[a.column])?[0],
                kind: a.kind.code(),
            })
        })
        .collect()
}

/// A libcudf `streaming_groupby` on the device; freed on drop.
pub struct StreamingGroupBy {
    gpu: Arc<Gpu>,
    handle: *mut sys::sabot_cudf_streaming_groupby,
}

// SAFETY: the handle is only used through `&mut self` (aggregate) or `&self` calls that
// libcudf documents as safe from any host thread; it is not tied to the creating thread.
unsafe impl Send for StreamingGroupBy {}

impl StreamingGroupBy {
    /// Adds a batch (its columns as the key and aggregation column indices refer to).
    pub fn aggregate(&mut self, batch: &RecordBatch) -> Result<()> {
        let input = Exported::new(batch)?;
        let handle = self.handle;
        self.gpu.call(|lib, err| unsafe {
            lib.sabot_cudf_streaming_groupby_aggregate(handle, input.schema(), input.array(), err)
        })
    }

    /// The result so far: keys, then one column per aggregation. The state stays.
    pub fn finalize(&self) -> Result<RecordBatch> {
        let mut out = Output::new();
        let handle = self.handle;
        self.gpu.call(|lib, err| unsafe {
            lib.sabot_cudf_streaming_groupby_finalize(handle, out.schema(), out.array(), err)
        })?;
        out.batch()
    }

    pub fn distinct_keys(&self) -> i64 {
        // SAFETY: a live handle from `streaming_groupby_new`.
        unsafe {
            self.gpu
                .lib
                .sabot_cudf_streaming_groupby_distinct_keys(self.handle)
        }
    }
}

impl Drop for StreamingGroupBy {
    fn drop(&mut self) {
        // SAFETY: the handle came from `streaming_groupby_new` and is freed once, here.
        unsafe { self.gpu.lib.sabot_cudf_streaming_groupby_free(self.handle) }
    }
}

/// The process's GPU, loaded once by [`init`]: `Err` says why there is none.
static GLOBAL: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();

/// Loads the GPU library once for the process (the server does at start when its GPU
/// setting is not `off`). Later calls return the first outcome.
pub fn init(path: Option<&Path>) -> std::result::Result<Arc<Gpu>, String> {
    GLOBAL
        .get_or_init(|| Gpu::load(path).map(Arc::new).map_err(|e| e.to_string()))
        .clone()
}

/// The process's GPU, if [`init`] found one.
pub fn global() -> Option<Arc<Gpu>> {
    GLOBAL.get().and_then(|g| g.as_ref().ok().cloned())
}

/// Why the process has no GPU (`None`: it has one, or [`init`] has not run).
pub fn unavailable_reason() -> Option<String> {
    GLOBAL.get().and_then(|g| g.as_ref().err().cloned())
}

// The shim's Arrow structs are arrow-rs's, byte for byte.
const _: () =
    assert!(std::mem::size_of::<FFI_ArrowArray>() == std::mem::size_of::<sys::ArrowArray>());
const _: () =
    assert!(std::mem::size_of::<FFI_ArrowSchema>() == std::mem::size_of::<sys::ArrowSchema>());
