//! Test fixture: a plain `wasi:http/proxy` component that does not use
//! wedge-sdk, only the `wasi` crate.
//!
//! Exists to prove the host runs any standard proxy component, not only
//! ones built with our SDK. Answers every request `200 plain proxy ok\n`.

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// The exported handler type.
struct PlainProxy;

impl wasi::exports::http::incoming_handler::Guest for PlainProxy {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::from_list(&[("content-type".to_owned(), b"text/plain; charset=utf-8".to_vec())])
            .unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = body.write() {
            // Well under the 4096-byte limit of `blocking-write-and-flush`.
            let written = stream.blocking_write_and_flush(b"plain proxy ok\n");
            drop(stream);
            if written.is_ok() {
                let _ = OutgoingBody::finish(body, None);
            }
        }
    }
}

// The export glue is generated `unsafe` ABI code.
#[allow(unsafe_code)]
const _: () = {
    wasi::http::proxy::export!(PlainProxy);
};
