//! The node's side of the control-plane API: long-poll desired state, fetch
//! artifacts, send reports. Plain HTTP/1.1 over hyper with a bearer token;
//! every call has a deadline and every answer a size bound.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use wedge_control::api::{DesiredState, ErrorBody, NodeReport, QueueCommand, QueueCommandResult};

/// Largest desired-state document accepted.
const STATE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest answer to a report (its queue commands).
const REPORT_ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Slack on top of a long-poll's wait before the call is abandoned.
const LONG_POLL_SLACK: Duration = Duration::from_secs(10);
/// Deadline of calls that do not wait on purpose.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The control plane answered a call with an error status (the error of such a
/// call, for callers that act on the status).
#[derive(Debug, thiserror::Error)]
#[error("{call}: {status}: {message}")]
pub struct ErrorStatus {
    /// The call, as `METHOD url`.
    call: String,
    /// What it answered.
    pub status: StatusCode,
    /// Its error message.
    message: String,
}

/// The control plane's answer to a report ([`wedge_control::api::ReportAnswer`]), read
/// one command at a time: a command this node cannot read (an action of a newer control
/// plane during a rolling upgrade, say) gets an error result instead of making the whole
/// answer, and the commands with it, unreadable.
#[derive(Debug, Default, PartialEq)]
pub struct ReportReply {
    /// The queue commands to run.
    pub commands: Vec<QueueCommand>,
    /// A failed result for each command that could not be read.
    pub unreadable: Vec<QueueCommandResult>,
}

/// [`wedge_control::api::ReportAnswer`] with its commands left unread.
#[derive(Deserialize)]
struct RawReportAnswer {
    #[serde(default)]
    queue_commands: Vec<serde_json::Value>,
}

impl ReportReply {
    /// Reads the answer to `node`'s report.
    fn read(node: &str, answer: &[u8]) -> anyhow::Result<Self> {
        let raw: RawReportAnswer =
            serde_json::from_slice(answer).context("the control plane's answer to a report is not valid JSON")?;
        let mut reply = Self::default();
        for command in raw.queue_commands {
            let id = command.get("id").and_then(serde_json::Value::as_u64);
            match (serde_json::from_value::<QueueCommand>(command), id) {
                (Ok(command), _) => reply.commands.push(command),
                (Err(error), Some(id)) => {
                    let why =
                        format!("node {node} cannot run this command ({error}); is it older than the control plane?");
                    reply.unreadable.push(QueueCommandResult { id, outcome: Err(why) });
                }
                (Err(error), None) => tracing::warn!("a queue command without an id from the control plane: {error}"),
            }
        }
        Ok(reply)
    }
}

/// A client of one control plane.
#[derive(Clone)]
pub struct ControlClient {
    base: String,
    authorization: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ControlClient").field("base", &self.base).finish_non_exhaustive()
    }
}

impl ControlClient {
    /// A client of the control plane at `url` (`http://host:port`).
    pub fn new(url: &str, token: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("control plane URL {url:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("control plane URL {url:?}: scheme {other:?} is not supported (use http://)"),
            None => bail!("control plane URL {url:?} needs a scheme, like http://{url}"),
        }
        if uri.authority().is_none() {
            bail!("control plane URL {url:?} has no host");
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { base: url.trim_end_matches('/').to_string(), authorization: format!("Bearer {token}"), http })
    }

    /// The control plane's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Desired state newer than `after`, or the current one after waiting
    /// up to `wait` for a change.
    /// (Also as soon as the placement generation differs from `placement`.)
    pub async fn desired_state(&self, after: u64, placement: u64, wait: Duration) -> anyhow::Result<DesiredState> {
        let path = format!("/v1/state?after={after}&placement={placement}&wait_ms={}", wait.as_millis());
        let body = self.call(Method::GET, &path, None, wait + LONG_POLL_SLACK, STATE_BYTES_MAX).await?;
        serde_json::from_slice(&body).context("desired state from the control plane is not valid JSON")
    }

    /// The artifact's bytes, exactly `bytes` of them (the hash is the
    /// caller's to check).
    pub async fn artifact(&self, sha256: &str, bytes: u64) -> anyhow::Result<Bytes> {
        let limit = usize::try_from(bytes).context("artifact too large for this machine")?;
        let body = self.call(Method::GET, &format!("/v1/artifacts/{sha256}"), None, CALL_TIMEOUT * 4, limit).await?;
        anyhow::ensure!(body.len() == limit, "artifact {sha256}: got {} bytes, expected {bytes}", body.len());
        Ok(body)
    }

    /// Sends what this node serves and its new guest log lines; the control
    /// plane's answer: the queue commands waiting for this node (none on a
    /// 204).
    pub async fn report(&self, node: &str, report: &NodeReport) -> anyhow::Result<ReportReply> {
        let body = Bytes::from(serde_json::to_vec(report)?);
        let path = format!("/v1/nodes/{node}/report");
        let answer = self.call(Method::POST, &path, Some(body), CALL_TIMEOUT, REPORT_ANSWER_BYTES_MAX).await?;
        if answer.is_empty() {
            return Ok(ReportReply::default());
        }
        ReportReply::read(node, &answer)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
        answer_bytes_max: usize,
    ) -> anyhow::Result<Bytes> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, &self.authorization);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        let call = async {
            let response = self.http.request(request).await?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), answer_bytes_max)
                .collect()
                .await
                .map_err(|error| anyhow::anyhow!("reading the answer: {error}"))?
                .to_bytes();
            anyhow::Ok((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
            .with_context(|| format!("{method} {}{path}", self.base))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
        if status == StatusCode::UNAUTHORIZED {
            bail!("{method} {}{path}: the control plane rejected the token (401): {message}", self.base);
        }
        Err(ErrorStatus { call: format!("{method} {}{path}", self.base), status, message }.into())
    }
}

#[cfg(test)]
mod tests {
    use wedge_control::api::{QueueAction, ReportAnswer};

    use super::*;

    #[test]
    fn a_command_the_node_cannot_read_fails_alone() {
        let purge = QueueCommand { id: 1, queue: "work".into(), action: QueueAction::Purge };
        let known = serde_json::to_value(&purge).unwrap();
        let answer = serde_json::json!({ "queue_commands": [
            { "id": 2, "queue": "work", "action": "compact", "level": 3 },
            known,
            { "queue": "work", "action": "purge" },
        ]});
        let reply = ReportReply::read("n1", answer.to_string().as_bytes()).unwrap();
        assert_eq!(reply.commands, std::slice::from_ref(&purge));
        assert_eq!(reply.unreadable.len(), 1, "{reply:?}");
        assert_eq!(reply.unreadable[0].id, 2);
        let why = reply.unreadable[0].outcome.as_ref().unwrap_err();
        assert!(why.starts_with("node n1 cannot run this command") && why.contains("compact"), "{why}");
        // What the control plane sends reads back whole; an answer that is not JSON is an error.
        let sent = serde_json::to_vec(&ReportAnswer { queue_commands: vec![purge.clone()] }).unwrap();
        assert_eq!(ReportReply::read("n1", &sent).unwrap(), ReportReply { commands: vec![purge], unreadable: vec![] });
        assert!(ReportReply::read("n1", b"{").is_err());
    }
}
