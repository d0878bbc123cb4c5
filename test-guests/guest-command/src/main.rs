//! Test fixture: a command-line program compiled to a `wasi:cli/command`
//! component. It exports `wasi:cli/run`, not `wasi:http/incoming-handler`,
//! so `wedge serve` must refuse it as a component of the wrong world.

fn main() {
    println!("this component is a command, not an HTTP handler");
}
