//! Test fixture: every request recurses without bound.
//!
//! Exists for the host's stack overflow test: the instance traps and the
//! host answers `5xx`. Rust on wasm keeps two stacks: wasm's own call stack
//! (bounded by the host's `max_wasm_stack`) and a "shadow" stack in linear
//! memory (1 MiB, for values whose address is taken). Each frame here is
//! small on the shadow stack, so the wasm call stack runs out first and the
//! trap is wasmtime's "call stack exhausted"; with a very large
//! `max_wasm_stack` it would instead be an out-of-bounds memory access when
//! the shadow stack runs out. Both are traps; tests should not rely on which.

use std::hint::black_box;

use wedge_sdk::{Request, http_handler};

/// Recurses forever. The result of the recursive call is used after it
/// returns (not a tail call) and everything goes through `black_box`, so the
/// optimiser cannot turn the recursion into a loop.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    // Never true (the stack runs out long before), but the optimiser cannot
    // know that, and it gives the recursion a base case.
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let below = descend(black_box(depth + 1));
    below.wrapping_add(black_box(depth))
}

/// Never returns normally.
#[http_handler]
fn handle(_req: Request) -> String {
    format!("unreachable: {}\n", descend(0))
}
