//! `wedge members`: the cluster's members as one node sees them, read from
//! that node's admin listener (`GET /v1/members`, plain HTTP, no token) and
//! printed as a table with a one-line summary, or as the node's JSON.
//!
//! Everything in a members report beyond this node's own fields came from
//! peers over gossip, so names, sites and states are escaped before they
//! reach the terminal.

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use wedge_cluster::agent::{MemberRecord, MembersReport};
use wedge_cluster::membership::LoadSummary;

use crate::client::Reply;
use crate::output::{OutputArgs, Table, escape_controls, human_age, print_json};

/// The admin listener asked when neither `--admin` nor `WEDGE_ADMIN_URL` is given.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:7080";
/// Longest wait for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of the whole request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest report read (a thousand members is a few hundred KiB).
const RESPONSE_BYTES_MAX: u64 = 16 << 20;
/// Largest error body read; only its first [`ERROR_CHARS_MAX`] characters are shown.
const ERROR_BYTES_MAX: u64 = 4 << 10;
/// Longest error body shown.
const ERROR_CHARS_MAX: usize = 300;

/// Arguments of `wedge members`.
#[derive(Debug, Args)]
pub struct MembersArgs {
    /// The node's admin listener: `http://HOST:PORT` or `HOST:PORT` (plain
    /// HTTP; https is refused).
    #[arg(long, env = "WEDGE_ADMIN_URL", default_value = DEFAULT_ADMIN, value_name = "URL", value_parser = admin_url)]
    admin: String,

    #[command(flatten)]
    output: OutputArgs,
}

impl MembersArgs {
    /// Fetches the members report and prints it.
    pub fn run(self) -> anyhow::Result<()> {
        let reply = fetch(&self.admin)?;
        if self.output.json() {
            return print_json(&reply.raw);
        }
        print!("{}", table(&reply.value.members).render());
        println!("{}", summary(&reply.value));
        Ok(())
    }
}

/// Clap value parser of `--admin`: `HOST:PORT` gets `http://`, trailing `/`s
/// go, and any scheme but `http://` is refused (the admin listener does not
/// speak TLS).
pub fn admin_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let rest = match text.split_once("://") {
        None => text,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(format!("the admin listener speaks plain HTTP, not HTTPS: use http://{rest}"));
        }
        Some((scheme, _)) => {
            return Err(format!("unsupported scheme {scheme}://: give http://HOST:PORT or HOST:PORT"));
        }
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        return Err("no host: give http://HOST:PORT or HOST:PORT".into());
    }
    Ok(format!("http://{rest}"))
}

/// `GET {admin}/v1/members`: the report, typed and as sent. `admin` is a
/// URL as [`admin_url`] returns it.
pub fn fetch(admin: &str) -> anyhow::Result<Reply<MembersReport>> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        // An answer other than 200 is reported as it is, not followed.
        .redirects(0)
        .user_agent(concat!("wedge/", env!("CARGO_PKG_VERSION")))
        .build();
    let response = match agent.get(&format!("{admin}/v1/members")).set("Accept", "application/json").call() {
        Ok(response) if response.status() == 200 => response,
        Ok(response) | Err(ureq::Error::Status(_, response)) => return Err(refusal(admin, response)),
        Err(ureq::Error::Transport(transport)) => return Err(transport_failure(admin, &transport)),
    };
    let not_a_report = || format!("the admin listener at {admin} answered with something that is not a members report");
    let raw: serde_json::Value =
        serde_json::from_reader(response.into_reader().take(RESPONSE_BYTES_MAX)).with_context(not_a_report)?;
    let value = serde_json::from_value(raw.clone()).with_context(not_a_report)?;
    Ok(Reply { value, raw })
}

/// An answer other than 200, as one line: its status and the start of its body.
fn refusal(admin: &str, response: ureq::Response) -> anyhow::Error {
    let status = response.status();
    let status_text = escape_controls(response.status_text()).into_owned();
    let mut body = Vec::new();
    let _ = response.into_reader().take(ERROR_BYTES_MAX).read_to_end(&mut body);
    let body = String::from_utf8_lossy(&body);
    let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let escaped = escape_controls(&body);
    let mut shown: String = escaped.chars().take(ERROR_CHARS_MAX).collect();
    if escaped.chars().count() > ERROR_CHARS_MAX {
        shown.push('…');
    }
    let body = if shown.is_empty() { "(empty body)".to_string() } else { shown };
    anyhow!("the admin listener at {admin} answered {status} {status_text}: {body}")
}

/// A failure before any answer, as one line; unreachable says how to start
/// a node with an admin listener.
fn transport_failure(admin: &str, transport: &ureq::Transport) -> anyhow::Error {
    use std::io::ErrorKind;
    let io = std::iter::successors(std::error::Error::source(transport), |error| error.source())
        .find_map(|error| error.downcast_ref::<std::io::Error>());
    // OS errors briefly by kind (`connection refused`), anything else by its message.
    let cause = match io {
        Some(io) if io.raw_os_error().is_some() => io.kind().to_string(),
        Some(io) => io.to_string(),
        None => transport.message().map_or_else(|| transport.kind().to_string(), str::to_string),
    };
    match (transport.kind(), io.map(std::io::Error::kind)) {
        (_, Some(ErrorKind::TimedOut | ErrorKind::WouldBlock)) => {
            anyhow!("the admin listener at {admin} did not answer in time")
        }
        (ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns, _) => anyhow!(
            "cannot reach the admin listener at {admin}: {cause} (is a node running there? \
             `wedge node --admin ADDR` says where it listens; pass the same address to --admin)"
        ),
        _ => anyhow!("request to the admin listener at {admin} failed: {cause}"),
    }
}

/// The `wedge members` table: the reporting node first (its name marked
/// ` *`), then the others by site and name.
pub fn table(members: &[MemberRecord]) -> Table {
    let mut sorted: Vec<&MemberRecord> = members.iter().collect();
    sorted.sort_by(|a, b| b.local.cmp(&a.local).then_with(|| a.site.cmp(&b.site)).then_with(|| a.name.cmp(&b.name)));
    let mut table = Table::new(&["NAME", "SITE", "STATE", "LOAD", "AGE", "GOSSIP", "HTTP", "INC"]);
    for member in sorted {
        let name = escape_controls(&member.name);
        table.row(vec![
            if member.local { format!("{name} *") } else { name.into_owned() },
            escape_controls(&member.site).into_owned(),
            escape_controls(&member.state).into_owned(),
            member.load.as_ref().map_or_else(|| "-".to_string(), load),
            human_age(member.state_age_ms),
            member.gossip_addr.to_string(),
            member.http_addr.to_string(),
            member.incarnation.to_string(),
        ]);
    }
    table
}

/// A load summary in one cell: `3 req, 2 inst, cpu 12%, 4 fn, rev 7`.
fn load(load: &LoadSummary) -> String {
    format!(
        "{} req, {} inst, cpu {}%, {} fn, rev {}",
        load.in_flight,
        load.instances,
        (u32::from(load.cpu_permille) + 5) / 10,
        load.functions_ready,
        load.applied_revision
    )
}

/// The line under the table:
/// `5 members: 4 alive, 1 suspect, 0 down, 0 left (seen from node-a, joined)`.
/// States this CLI does not know (from a newer node) are counted as `other`.
pub fn summary(report: &MembersReport) -> String {
    let count = |state: &str| report.members.iter().filter(|m| m.state == state).count();
    let [alive, suspect, down, left] = ["alive", "suspect", "down", "left"].map(count);
    let total = report.members.len();
    let other = total - alive - suspect - down - left;
    let members = if total == 1 { "member" } else { "members" };
    let other = if other > 0 { format!(", {other} other") } else { String::new() };
    let joined = if report.joined { "joined" } else { "not joined" };
    let node = escape_controls(&report.node);
    format!(
        "{total} {members}: {alive} alive, {suspect} suspect, {down} down, {left} left{other} (seen from {node}, {joined})"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;
    use std::net::{SocketAddr, TcpListener};
    use std::thread::JoinHandle;

    use clap::Parser;
    use wedge_cluster::agent::GossipStats;

    use super::*;

    fn member(name: &str, site: &str, state: &str, last_octet: u8) -> MemberRecord {
        MemberRecord {
            name: name.into(),
            site: site.into(),
            node_id: format!("{last_octet:016x}"),
            gossip_addr: SocketAddr::from(([10, 0, 0, last_octet], 7946)),
            http_addr: SocketAddr::from(([10, 0, 0, last_octet], 8080)),
            incarnation: 1,
            state: state.into(),
            state_age_ms: 42_000,
            load: None,
            load_age_ms: None,
            local: false,
        }
    }

    /// Five members in two sites, given out of order; node-b (site eu) is
    /// the reporting node, node-a carries a load.
    fn report() -> MembersReport {
        let busy =
            LoadSummary { in_flight: 3, instances: 2, cpu_permille: 125, functions_ready: 4, applied_revision: 7 };
        let mut local = member("node-b", "eu", "alive", 2);
        local.local = true;
        local.incarnation = 1_700_000_000_000;
        local.state_age_ms = 3_725_000;
        let mut a = member("node-a", "us", "alive", 1);
        a.load = Some(busy);
        a.load_age_ms = Some(900);
        let mut d = member("node-d", "eu", "suspect", 4);
        d.state_age_ms = 850;
        MembersReport {
            node: "node-b".into(),
            joined: true,
            at_unix_ms: 1_795_839_565_123,
            members: vec![a, member("node-e", "us", "alive", 5), local, d, member("node-c", "eu", "alive", 3)],
            gossip: GossipStats::default(),
        }
    }

    #[test]
    fn table_puts_the_reporting_node_first_then_sorts_by_site_and_name() {
        assert_eq!(
            table(&report().members).render(),
            "NAME      SITE  STATE    LOAD                                 AGE    GOSSIP         HTTP           INC\n\
             node-b *  eu    alive    -                                    1h02m  10.0.0.2:7946  10.0.0.2:8080  1700000000000\n\
             node-c    eu    alive    -                                    42s    10.0.0.3:7946  10.0.0.3:8080  1\n\
             node-d    eu    suspect  -                                    850ms  10.0.0.4:7946  10.0.0.4:8080  1\n\
             node-a    us    alive    3 req, 2 inst, cpu 13%, 4 fn, rev 7  42s    10.0.0.1:7946  10.0.0.1:8080  1\n\
             node-e    us    alive    -                                    42s    10.0.0.5:7946  10.0.0.5:8080  1\n"
        );
    }

    #[test]
    fn names_sites_and_states_from_peers_are_escaped() {
        let mut hostile = member("evil\x1b[2J", "site\r\n", "alive\x07", 9);
        hostile.local = true;
        let text = table(&[hostile]).render();
        assert!(text.contains("evil\\x1b[2J *  site\\x0d\\x0a  alive\\x07"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn summary_counts_states_and_says_whether_joined() {
        let mut report = report();
        assert_eq!(summary(&report), "5 members: 4 alive, 1 suspect, 0 down, 0 left (seen from node-b, joined)");
        report.members[1].state = "down".into();
        report.members[4].state = "left".into();
        report.members[0].state = "quarantined".into();
        assert_eq!(
            summary(&report),
            "5 members: 1 alive, 1 suspect, 1 down, 1 left, 1 other (seen from node-b, joined)"
        );
        report.joined = false;
        report.members.truncate(1);
        report.node = "node\x1b-b".into();
        assert_eq!(
            summary(&report),
            "1 member: 0 alive, 0 suspect, 0 down, 0 left, 1 other (seen from node\\x1b-b, not joined)"
        );
    }

    #[test]
    fn admin_urls_are_normalised_and_https_is_refused() {
        assert_eq!(admin_url("127.0.0.1:7080").unwrap(), "http://127.0.0.1:7080");
        assert_eq!(admin_url("edge-1:7080/").unwrap(), "http://edge-1:7080");
        assert_eq!(admin_url(" HTTP://[::1]:7080// ").unwrap(), "http://[::1]:7080");
        assert_eq!(admin_url("http://proxy:80/wedge-admin/").unwrap(), "http://proxy:80/wedge-admin");
        assert_eq!(admin_url(DEFAULT_ADMIN).unwrap(), DEFAULT_ADMIN);
        assert_eq!(
            admin_url("https://edge-1:7080").unwrap_err(),
            "the admin listener speaks plain HTTP, not HTTPS: use http://edge-1:7080"
        );
        assert_eq!(
            admin_url("ftp://edge-1:7080").unwrap_err(),
            "unsupported scheme ftp://: give http://HOST:PORT or HOST:PORT"
        );
        assert!(admin_url("http://").is_err());
        assert!(admin_url("/").is_err());
    }

    #[test]
    fn the_verb_parses_its_flags() {
        let parse = |args: &[&str]| crate::commands::Cli::try_parse_from(args);
        let cli = parse(&["wedge", "members", "--admin", "10.0.0.1:7080", "-o", "json"]).unwrap();
        let crate::commands::Command::Members(args) = cli.command else { panic!("not members: {cli:?}") };
        assert_eq!(args.admin, "http://10.0.0.1:7080");
        assert!(args.output.json());
        let error = parse(&["wedge", "members", "--admin", "https://10.0.0.1:7080"]).unwrap_err().to_string();
        assert!(error.contains("plain HTTP, not HTTPS"), "{error}");
    }

    /// A one-shot HTTP server on 127.0.0.1: answers the first request with
    /// `status_line` and `body`, and hands back the request's head.
    fn serve_once(status_line: &'static str, body: impl Into<String>) -> (String, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let body = body.into();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            let answer = format!(
                "HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(head).unwrap()
        });
        (url, server)
    }

    #[test]
    fn fetches_and_parses_a_report_from_a_node() {
        let json = serde_json::to_string(&report()).unwrap();
        let (url, server) = serve_once("200 OK", json);
        let reply = fetch(&url).unwrap();
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /v1/members HTTP/1.1\r\n"), "{request}");
        assert_eq!(reply.value, report());
        assert_eq!(reply.raw, serde_json::to_value(report()).unwrap());
    }

    #[test]
    fn an_error_status_is_reported_with_its_body_on_one_line() {
        let (url, server) = serve_once("500 Internal Server Error", "{\"error\":\n\"membership\x1b not started\"}");
        let error = format!("{:#}", fetch(&url).unwrap_err());
        server.join().unwrap();
        assert_eq!(
            error,
            format!(
                "the admin listener at {url} answered 500 Internal Server Error: \
                 {{\"error\": \"membership\\x1b not started\"}}"
            )
        );
    }

    #[test]
    fn a_body_that_is_not_a_report_is_named() {
        let (url, server) = serve_once("200 OK", "{\"functions\": []}");
        let error = format!("{:#}", fetch(&url).unwrap_err());
        server.join().unwrap();
        assert!(
            error.starts_with(&format!(
                "the admin listener at {url} answered with something that is not a members report: missing field"
            )),
            "{error}"
        );
    }

    #[test]
    fn an_unreachable_admin_listener_names_the_url() {
        // A port that was just free: nothing listens there.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let error = format!("{:#}", fetch(&url).unwrap_err());
        assert!(
            error.starts_with(&format!("cannot reach the admin listener at {url}: connection refused (")),
            "{error}"
        );
        assert!(error.contains("wedge node --admin ADDR"), "{error}");
    }
}
