//! A small JSON API over an in-memory collection, routed with the SDK's
//! [`Router`].
//!
//! Routes (relative to the optional base path):
//!
//! | method | path         | answer                                              |
//! |--------|--------------|-----------------------------------------------------|
//! | GET    | `/health`    | `200 {"status":"ok"}`                               |
//! | GET    | `/items`     | `200` with every item                               |
//! | GET    | `/items/:id` | `200` with the item, `404 {"error":...}` if missing |
//! | POST   | `/items`     | `201` with the new item (given an id), `400` on bad JSON |
//!
//! Each request runs in a fresh instance, so the collection is static seed
//! data: a `POST` validates and echoes the created item but does not persist
//! it (a real function would use the wedge cache or an upstream service).
//!
//! The host passes the full original path. When the function is mounted
//! under a route prefix such as `/api`, set the config key `base_path` to
//! that prefix (`wedge deploy --config base_path=/api`) and the routes above
//! match `/api/items` and so on. Without it the routes match from `/`.

use serde::{Deserialize, Serialize};
use wedge_sdk::http::StatusCode;
use wedge_sdk::http::header::{HeaderValue, LOCATION};
use wedge_sdk::{BodyError, IntoResponse, Json, Params, Request, Response, Router};
use wedge_sdk::{config, http_handler, json_error};

/// Largest accepted `POST /items` body.
const MAX_ITEM_BODY_BYTES: usize = 64 * 1024;

/// One item of the collection.
#[derive(Debug, Clone, Serialize)]
struct Item {
    /// Unique, assigned by the API.
    id: u32,
    /// Display name, never empty.
    name: String,
    /// Price in cents, to avoid floating point money.
    price_cents: u64,
}

/// The body of `POST /items`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItem {
    /// Display name; must not be blank.
    name: String,
    /// Price in cents; defaults to 0.
    #[serde(default)]
    price_cents: u64,
}

/// The seed collection every request starts from.
fn items() -> Vec<Item> {
    [("teapot", 1899), ("kettle", 2450), ("mug", 650)]
        .into_iter()
        .zip(1..)
        .map(|((name, price_cents), id)| Item { id, name: name.to_owned(), price_cents })
        .collect()
}

/// `GET /health`.
fn health(_req: Request, _params: Params) -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// `GET /items`.
fn list_items(_req: Request, _params: Params) -> Response {
    Json(items()).into_response()
}

/// `GET /items/:id`.
fn get_item(_req: Request, params: Params) -> Response {
    let raw = params.get("id").unwrap_or_default();
    let Ok(id) = raw.parse::<u32>() else {
        return json_error(StatusCode::BAD_REQUEST, format!("item id must be a number, not `{raw}`"));
    };
    match items().into_iter().find(|item| item.id == id) {
        Some(item) => Json(item).into_response(),
        None => json_error(StatusCode::NOT_FOUND, format!("no item with id {id}")),
    }
}

/// `POST /items`: validates the body and answers with the created item.
fn create_item(req: Request, _params: Params) -> Response {
    let new: NewItem = match req.into_body().with_limit(MAX_ITEM_BODY_BYTES).json() {
        Ok(new) => new,
        Err(e @ BodyError::TooLarge { .. }) => {
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
        }
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let name = new.name.trim();
    if name.is_empty() {
        return json_error(StatusCode::BAD_REQUEST, "`name` must not be blank");
    }
    let id = items().iter().map(|item| item.id).max().unwrap_or(0) + 1;
    let item = Item { id, name: name.to_owned(), price_cents: new.price_cents };
    let base = config::get("base_path").unwrap_or_default();
    let base = base.trim().trim_matches('/');
    let location = if base.is_empty() { format!("/items/{id}") } else { format!("/{base}/items/{id}") };
    let mut response = (StatusCode::CREATED, Json(item)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

/// Routes the request (see the module docs).
#[http_handler]
fn handle(req: Request) -> Response {
    let base_path = config::get("base_path").unwrap_or_default();
    Router::new()
        .base_path(&base_path)
        .get("/health", health)
        .get("/items", list_items)
        .post("/items", create_item)
        .get("/items/:id", get_item)
        .handle(req)
}
