//! The verbs of `wedge`, one file each; each has a `run(self)`.

mod cluster;
mod control;
mod health;
mod members;
mod node;
mod serve;
mod up;
mod values;
// The deployer's verbs: clients of the control plane.
mod deploy;
mod info;
mod logs;
mod ls;
mod placement;
mod queue;
mod rm;
mod rollback;
mod top;
mod versions;

use clap::{Parser, Subcommand};

use crate::logging::LogArgs;

/// wedge — WebAssembly edge functions: write an HTTP handler, build it to a
/// wasm component, serve it.
///
/// Start with `wedge serve hello.wasm`, then `curl localhost:3000/`.
#[derive(Debug, Parser)]
#[command(name = "wedge", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Every verb.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve wasm HTTP components on this machine (like `spin up` or `wasmtime serve`).
    ///
    /// Each component must export `wasi:http/incoming-handler` (any
    /// `wasi:http/proxy` component, or one built with wedge-sdk).
    ///
    /// Examples:
    ///
    ///   wedge serve target/wasm/hello.wasm                 # / -> hello
    ///
    ///   wedge serve hello.wasm echo.wasm --route /hello --route /echo
    ///
    ///   wedge serve slow.wasm --timeout 2s --memory 64MiB --set greeting=hi
    ///
    ///   wedge serve --config functions.toml --listen 0.0.0.0:8080
    ///
    /// Limit flags (--timeout, --memory, --max-body, --max-concurrency),
    /// --set, --env and --allow-outbound apply to the components named on the
    /// command line; functions from --config take theirs from the file.
    ///
    /// The functions' cache (wedge_sdk::cache) is kept in a temporary
    /// directory removed when wedge serve stops; `wedge node` keeps it.
    #[command(verbatim_doc_comment)]
    Serve(serve::ServeArgs),

    /// Run a whole cluster on this machine: a control plane and N nodes in
    /// S sites, each its own process on 127.0.0.1, until Ctrl-C.
    ///
    /// Makes the cluster CA the first time (DIR/cluster), starts the
    /// control plane, then the nodes (node-1 is every node's gossip seed),
    /// waits until every node sees all of them alive, and prints the
    /// ingress URLs, the control plane's URL and its admin token (with -o
    /// json, one JSON object: control, token, ingress, admin). Ctrl-C or
    /// SIGTERM stops the nodes (they leave the cluster), then the control
    /// plane. The same --dir next time brings the same cluster back: same
    /// CA, tokens and deployments. Each process's output is in DIR/logs.
    ///
    /// Ports, all on 127.0.0.1; --port BASE moves them all:
    ///
    ///   control plane     BASE           7070
    ///   node i admin      BASE+10+i      7081, 7082, ...
    ///   node i gossip     BASE+30+i      7101, 7102, ...  (UDP)
    ///   node i ingress    BASE+1010+i    8081, 8082, ...
    ///
    /// Examples:
    ///
    ///   wedge up                                            # 3 nodes in 2 sites, state in ./.wedge
    ///
    ///   wedge up --nodes 5 --sites 3 --dir /tmp/wedge-lab --port 17070
    ///
    ///   wedge up -o json > cluster.json &                   # the line appears once all are up
    ///   export WEDGE_CONTROL=$(jq -r .control cluster.json) WEDGE_TOKEN=$(jq -r .token cluster.json)
    #[command(verbatim_doc_comment)]
    Up(up::UpArgs),

    /// Run a worker node that serves what a control plane deploys.
    ///
    /// The node long-polls the control plane's desired state, fetches each
    /// component by sha256, verifies and compiles it, and swaps its routes
    /// in one step. It keeps what it serves in --data-dir: restarted while
    /// the control plane is down, it serves everything it served before.
    ///
    /// Give it the control plane's node token (printed once by `wedge
    /// control`, kept in the file node-token of its --data-dir) with
    /// --token-file, --token or WEDGE_NODE_TOKEN: with it a node can read
    /// desired state and artifacts and report, but not deploy, roll back or
    /// delete. WEDGE_TOKEN (the deployers' admin token) is never read.
    ///
    /// With --cluster-dir it also joins a cluster: SWIM gossip over QUIC
    /// with mutual TLS (only nodes with a certificate from the cluster CA
    /// get in), through the seeds given with --join. The admin listener
    /// (--admin) answers /healthz, /readyz and `wedge members`.
    ///
    /// SIGTERM drains: /readyz turns 503 at once, the node serves on for
    /// --drain-delay so that load balancers stop sending to it, then it
    /// leaves the cluster gracefully (the others record "left" and send
    /// their requests to other replicas), stops accepting connections, lets
    /// requests in flight finish within --drain-timeout, and exits 0.
    ///
    /// Examples:
    ///
    ///   wedge node --control http://127.0.0.1:7070 --token-file /etc/wedge/node-token
    ///
    ///   wedge node --name edge-2 --site fra --cluster-dir /etc/wedge/cluster \
    ///       --gossip 0.0.0.0:7946 --advertise 10.0.1.12 --join seed.fra.example:7946
    ///
    ///   WEDGE_NODE_TOKEN=... wedge node --name edge-1 --listen 0.0.0.0:8080 --data-dir /var/lib/wedge/node
    #[command(verbatim_doc_comment)]
    Node(node::NodeArgs),

    /// Run the control plane: the deploy API that `wedge deploy` talks to and
    /// the desired state that `wedge node` follows.
    ///
    /// Every upload is validated (a component of a supported world that
    /// compiles) before anything is stored; what it acknowledged survives a
    /// restart. Every /v1 request needs `Authorization: Bearer <token>`,
    /// with one of two tokens:
    ///
    ///   admin token  may do everything; give it to deployers
    ///                (--token or WEDGE_TOKEN, else DIR/token)
    ///   node token   may only read desired state and artifacts, and report;
    ///                give it to `wedge node` (--node-token or WEDGE_NODE_TOKEN,
    ///                else DIR/node-token)
    ///
    /// A token not given is read from its file, or generated, saved there
    /// (mode 0600) and printed once. The two must differ. `wedge info`
    /// counts a node as serving only while it keeps reporting
    /// (--node-stale-after).
    ///
    /// Examples:
    ///
    ///   wedge control                                       # 127.0.0.1:7070, ~/.local/share/wedge/control
    ///
    ///   wedge control --listen 0.0.0.0:7070 --data-dir /var/lib/wedge/control
    ///
    ///   WEDGE_TOKEN=s3cret WEDGE_NODE_TOKEN=n0de wedge control --max-component-size 100MiB
    ///
    ///   curl -H "Authorization: Bearer $(cat ~/.local/share/wedge/control/token)" localhost:7070/v1/functions
    #[command(verbatim_doc_comment)]
    Control(control::ControlArgs),

    /// Make the cluster CA and node certificates: node-to-node traffic
    /// (gossip, forwarded requests, artifacts) is mutual TLS against it.
    ///
    /// `init` makes the CA in DIR: ca.pem, which every node gets, and
    /// ca-key.pem, which must stay secret (whoever holds it can make
    /// certificates that join the cluster) and which no node needs.
    /// `issue-cert` makes one node's certificate and key in DIR/nodes/. A
    /// peer without a certificate from this CA cannot connect or gossip.
    ///
    /// Examples:
    ///
    ///   wedge cluster init --dir ./cluster
    ///
    ///   wedge cluster issue-cert --dir ./cluster --name edge-1
    ///
    ///   wedge cluster issue-cert --dir ./cluster --name edge-2 --san 10.0.0.12 --san edge-2.example.com
    ///
    ///   wedge cluster issue-cert --dir ./cluster --name edge-1 --force     # renew (valid a year)
    #[command(verbatim_doc_comment)]
    Cluster(cluster::ClusterArgs),

    /// List the cluster's members as one node sees them: state, load, addresses.
    ///
    /// Asks the node's admin listener (plain HTTP, no token; `wedge node
    /// --admin ADDR` says where it listens) for GET /v1/members. * marks the
    /// node that answered; AGE is how long a member has been in its state;
    /// LOAD is the last load it gossiped: requests in flight, wasm
    /// instances, CPU, functions ready, desired-state revision applied.
    ///
    /// Examples:
    ///
    ///   wedge members                                       # the node at http://127.0.0.1:7080
    ///
    ///   wedge members --admin 10.0.0.11:7080
    ///
    ///   WEDGE_ADMIN_URL=http://edge-1:7080 wedge members
    ///
    ///   wedge members -o json | jq -r '.members[] | select(.state != "alive") | .name'
    #[command(verbatim_doc_comment)]
    Members(members::MembersArgs),

    /// Ask a health endpoint; exit 0 on a 2xx answer, 1 otherwise.
    ///
    /// Made for container health checks (the image has no curl): /healthz
    /// says the process serves, /readyz that it may take traffic (a node:
    /// joined its cluster and applied the control plane's desired state;
    /// the control plane: its store is open). Prints the answer; on a
    /// failure, the status and the answer (which names what is missing).
    ///
    /// Examples:
    ///
    ///   wedge health                                        # http://127.0.0.1:7080/healthz
    ///
    ///   wedge health http://127.0.0.1:7080/readyz
    ///
    ///   wedge health --quiet --timeout 2s http://127.0.0.1:7070/readyz
    #[command(verbatim_doc_comment)]
    Health(health::HealthArgs),

    /// Deploy a component to the control plane as a new version of a function.
    ///
    /// The component's sha256 is checked first: one the control plane already
    /// stores is not uploaded again. Without a component file, every
    /// [[function]] of ./wedge.toml (or --manifest FILE) is deployed; all of
    /// them are checked before anything is sent.
    ///
    /// Examples:
    ///
    ///   wedge deploy target/wasm/hello.wasm                 # name hello, route /hello
    ///
    ///   wedge deploy json_api.wasm --name api --route /api --route api.example.com/
    ///
    ///   wedge deploy slow.wasm --timeout 5s --memory 64MiB --set greeting=hi --env RUST_LOG=debug
    ///
    ///   wedge deploy                                        # every function of ./wedge.toml
    ///
    ///   wedge deploy --manifest staging.toml -o json
    ///
    /// wedge.toml (the schema of `wedge serve --config`; unknown keys are
    /// errors; component paths are relative to the file):
    ///
    ///   [[function]]
    ///   name = "hello"                    # default: the file stem
    ///   component = "target/wasm/hello.wasm"
    ///   routes = ["/hello"]               # default: /<name>
    ///   allowed_outbound_hosts = ["api.example.com"]
    ///   cache = "pages"                   # cache namespace shared by the functions naming it
    ///   [function.limits]                 # memory, timeout, max_body, max_concurrency
    ///   timeout = "5s"
    ///   [function.config]                 # read with config::get
    ///   greeting = "hi"
    ///   [function.env]
    ///   RUST_LOG = "info"
    ///
    /// Connection: --control URL and --token (or --token-file), or
    /// WEDGE_CONTROL and WEDGE_TOKEN, or a profile in
    /// ~/.config/wedge/config.toml (--profile NAME, else WEDGE_PROFILE, else
    /// default); see --profile below for how they combine:
    ///
    ///   [profile.default]
    ///   control = "http://127.0.0.1:7070"
    ///   token = "..."
    #[command(verbatim_doc_comment)]
    Deploy(deploy::DeployArgs),

    /// List deployed functions: active version, artifact, routes.
    ///
    /// Examples:
    ///
    ///   wedge ls
    ///
    ///   wedge ls -o json | jq -r '.[].name'
    ///
    ///   wedge ls --profile staging
    #[command(verbatim_doc_comment)]
    Ls(ls::LsArgs),

    /// Show one function: routes, artifact, limits, config, serving nodes.
    ///
    /// Environment values are not printed (they may be secrets); -o json
    /// shows everything.
    ///
    /// Examples:
    ///
    ///   wedge info hello
    ///
    ///   wedge info hello -o json
    #[command(verbatim_doc_comment)]
    Info(info::InfoArgs),

    /// List every stored version of a function; * marks the active one.
    ///
    /// Examples:
    ///
    ///   wedge versions hello
    ///
    ///   wedge versions hello -o json
    #[command(verbatim_doc_comment)]
    Versions(versions::VersionsArgs),

    /// Show where each function runs and why: its nodes, its replica
    /// target (autoscaling moves it between --min-replicas and
    /// --max-replicas) and the scheduler's recent decisions with reasons.
    ///
    /// Examples:
    ///
    ///   wedge placement
    ///
    ///   wedge placement hello -o json
    #[command(verbatim_doc_comment)]
    Placement(placement::PlacementArgs),

    /// Watch the cluster live: nodes by site with state, requests in flight
    /// and CPU; functions with replicas (placed/target), requests a second,
    /// 5xx share and p99 over the last 10 s; the latest placement decisions.
    ///
    /// Redraws in place every --interval; q, Esc or Ctrl-C quits and gives
    /// the terminal back as it was. --once prints one frame as plain text
    /// (so does output that is not a terminal). Rates and latency come from
    /// the counters nodes report. The same view is in a browser at
    /// http://CONTROL/ui#token=TOKEN.
    ///
    /// Examples:
    ///
    ///   wedge top
    ///
    ///   wedge top --interval 5s --profile staging
    ///
    ///   wedge top --once | grep -w down
    #[command(verbatim_doc_comment)]
    Top(top::TopArgs),

    /// Make an older version active again: no rebuild, no upload.
    ///
    /// Examples:
    ///
    ///   wedge rollback hello                 # the version before the active one
    ///
    ///   wedge rollback hello --to 3
    #[command(verbatim_doc_comment)]
    Rollback(rollback::RollbackArgs),

    /// Remove a function and all its versions; its routes stop being served.
    ///
    /// Asks first when stdin is a terminal; in scripts (stdin not a
    /// terminal), pass --yes.
    ///
    /// Examples:
    ///
    ///   wedge rm hello
    ///
    ///   wedge rm hello --yes
    #[command(verbatim_doc_comment)]
    Rm(rm::RmArgs),

    /// Print a function's log lines: time, node, request id, stream, line.
    ///
    /// Shows the most recent --lines (default 100); with -f, keeps printing
    /// new lines until Ctrl-C. -o json prints one JSON object per line.
    ///
    /// Examples:
    ///
    ///   wedge logs hello
    ///
    ///   wedge logs hello -f
    ///
    ///   wedge logs hello -n 1000 -o json | jq -r .line
    #[command(verbatim_doc_comment)]
    Logs(logs::LogsArgs),

    /// Look after job queues: list them with their counts, peek at their
    /// jobs, retry dead-lettered jobs, purge a queue.
    ///
    /// peek, retry-dead and purge run on the queue's primary: the control
    /// plane hands them over when that node next reports (within about a
    /// second) and answers with its result. If the node does not answer
    /// within 10 s the command fails with 504, saying whether the node had
    /// taken it (then it may still have run) or not (then nothing ran).
    ///
    /// Examples:
    ///
    ///   wedge queue ls
    ///
    ///   wedge queue peek emails --limit 50
    ///
    ///   wedge queue peek emails --dead
    ///
    ///   wedge queue retry-dead emails
    ///
    ///   wedge queue purge emails --yes
    #[command(verbatim_doc_comment)]
    Queue(queue::QueueArgs),
}

impl Command {
    /// Runs the verb.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Serve(args) => args.run(),
            Command::Up(args) => args.run(),
            Command::Deploy(args) => args.run(),
            Command::Ls(args) => args.run(),
            Command::Info(args) => args.run(),
            Command::Versions(args) => args.run(),
            Command::Placement(args) => args.run(),
            Command::Top(args) => args.run(),
            Command::Rollback(args) => args.run(),
            Command::Rm(args) => args.run(),
            Command::Logs(args) => args.run(),
            Command::Queue(args) => args.run(),
            Command::Node(args) => args.run(),
            Command::Control(args) => args.run(),
            Command::Cluster(args) => args.run(),
            Command::Members(args) => args.run(),
            Command::Health(args) => args.run(),
        }
    }
}
