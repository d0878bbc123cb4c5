//! A page-view counter: every request adds one to the count of its path in
//! the node-local cache and answers with the new count.
//!
//! `cache::increment` is atomic, so concurrent requests never lose a view.
//! The counts live in the node's cache: they survive a restart of the node
//! (`wedge node` keeps the cache in its data directory) and are per node —
//! two nodes serving this function count separately.
//!
//! ```text
//! $ curl localhost:3000/docs
//! /docs: 1 view
//! $ curl localhost:3000/docs
//! /docs: 2 views
//! ```

use wedge_sdk::http::StatusCode;
use wedge_sdk::{Request, cache, http_handler, text};

/// Counts the view of this request's path; `500` with the reason if the
/// cache refuses (for example a path longer than the node's key limit).
#[http_handler]
fn handle(req: Request) -> wedge_sdk::Response {
    let path = req.uri().path();
    match cache::increment(&format!("views:{path}"), 1, None) {
        Ok(1) => text(StatusCode::OK, format!("{path}: 1 view\n")),
        Ok(views) => text(StatusCode::OK, format!("{path}: {views} views\n")),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot count the view: {error}\n")),
    }
}
