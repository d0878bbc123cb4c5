//! Test fixture: every request spins forever.
//!
//! Exists for the host's wall-time limit test: the host must cut the request
//! off (epoch interruption) and answer `5xx`, and the node must keep serving.

use std::hint::black_box;

use wedge_sdk::{Request, http_handler};

/// Never returns: a loop whose counter goes through `black_box`, so the
/// optimiser can neither prove it infinite nor remove it.
#[http_handler]
fn handle(_req: Request) -> &'static str {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
        if black_box(false) {
            break;
        }
    }
    black_box(counter);
    "unreachable: the loop never ends\n"
}
