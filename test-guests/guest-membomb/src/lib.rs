//! Test fixture: every request allocates memory without bound.
//!
//! Exists for the host's memory limit test: `memory.grow` must eventually
//! fail, the allocator aborts the instance, and the host answers `5xx`
//! without the node itself running out of memory.

use std::hint::black_box;

use wedge_sdk::{Request, http_handler};

/// Size of each allocation.
const BLOCK_BYTES: usize = 1024 * 1024;

/// Never returns: pushes 1 MiB blocks filled with non-zero bytes (so every
/// page is really touched) into a vector that is never freed.
#[http_handler]
fn handle(_req: Request) -> &'static str {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let block = vec![black_box(0xA5u8); BLOCK_BYTES];
        hoard.push(black_box(block));
        if black_box(hoard.is_empty()) {
            break;
        }
    }
    std::mem::forget(hoard);
    "unreachable: allocation never stops\n"
}
