//! What the benchmarks (examples) share: the allocator `sabot` runs with, arguments,
//! the JSON lines they print, and the GPU where one is here.

use std::sync::Arc;

use sabot_gpu::Gpu;

/// The allocator `sabot` runs with (server/src/main.rs), so that the operators allocate
/// here as they do there.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Positional argument `i` as a count (`_` separators allowed), or `default`.
pub fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// One JSON line of results.
pub fn print_line(line: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
}

/// The GPU `SABOT_GPU_LIBRARY` loads, or `None` after a line saying why the GPU runs are
/// skipped.
pub fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::load(None) {
        Ok(gpu) => Some(Arc::new(gpu)),
        Err(e) => {
            print_line(&format!("{{\"run\": \"gpu\", \"skipped\": \"{e}\"}}"));
            None
        }
    }
}
