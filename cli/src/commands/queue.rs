//! `wedge queue`: the cluster's job queues. `ls` shows each queue's holders and
//! counts (from the control plane's `GET /v1/queues`); `peek`, `retry-dead` and
//! `purge` are commands the control plane relays to the queue's primary (see
//! `wedge_control::api`). `purge` asks first when stdin is a terminal and needs
//! `--yes` anywhere else, like `wedge rm`.

use std::io::IsTerminal;

use anyhow::bail;
use clap::{Args, Subcommand};
use wedge_control::api::{
    JOB_PAYLOAD_PREVIEW_BYTES, JobSummary, QUEUE_PEEK_BYTES_MAX, QUEUE_PEEK_LIMIT_MAX, QueueCommandAnswer,
    QueueCommandOutput, QueueStatus, now_unix_ms,
};

use crate::client::Client;
use crate::output::{OutputArgs, Table, escape_controls, human_age, plural, print_json};
use crate::profile::ConnectionArgs;

/// Arguments of `wedge queue` (its help text is on `Command::Queue`).
#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List every job queue: its function, primary and backup, and how many
    /// jobs are ready, delayed, in flight and dead, as the primary last
    /// reported them ('-' while it has not reported lately: a primary gone
    /// silent has no current counts); OLDEST is the age of the oldest job
    /// not dead.
    ///
    /// Examples:
    ///
    ///   wedge queue ls
    ///
    ///   wedge queue ls -o json | jq '.queues[] | {queue, dead: .counts.dead}'
    #[command(verbatim_doc_comment)]
    Ls(LsArgs),

    /// Show the oldest jobs of a queue (dead-lettered ones with --dead):
    /// id, state, attempts, idempotency key, age and the start of the
    /// payload. Read on the queue's primary; changes nothing. An answer
    /// holds about 1 MiB of jobs, so with long errors or keys it may list
    /// fewer than --limit (it says so).
    ///
    /// Examples:
    ///
    ///   wedge queue peek emails
    ///
    ///   wedge queue peek emails --dead --limit 100
    ///
    ///   wedge queue peek emails --dead -o json | jq -r '.output.jobs[].last_error'
    #[command(verbatim_doc_comment)]
    Peek(PeekArgs),

    /// Make every dead-lettered job of a queue ready again, with fresh
    /// attempts (as many as the queue's depth limit allows).
    ///
    /// Answered once done and flushed on the queue's primary; the backup
    /// gets the change right after. A primary lost in that moment may leave
    /// the promoted backup with the jobs still dead: check `wedge queue ls`.
    ///
    /// Examples:
    ///
    ///   wedge queue retry-dead emails
    ///
    ///   wedge queue retry-dead emails -o json
    #[command(verbatim_doc_comment)]
    RetryDead(QueueNameArgs),

    /// Remove every job of a queue, dead ones included, and forget its
    /// idempotency keys. Asks first when stdin is a terminal; in scripts
    /// (stdin not a terminal), pass --yes.
    ///
    /// Answered once done and flushed on the queue's primary; the backup
    /// gets the change right after. A primary lost in that moment may bring
    /// the purged jobs back on the promoted backup: check `wedge queue ls`.
    ///
    /// Examples:
    ///
    ///   wedge queue purge emails
    ///
    ///   wedge queue purge emails --yes
    #[command(verbatim_doc_comment)]
    Purge(PurgeArgs),
}

impl QueueArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            QueueCommand::Ls(args) => args.run(),
            QueueCommand::Peek(args) => args.run(),
            QueueCommand::RetryDead(args) => args.run(),
            QueueCommand::Purge(args) => args.run(),
        }
    }
}

/// Clap value parser of a queue name: checked before it goes into a URL path.
fn queue_name(text: &str) -> Result<String, String> {
    wedge_host::validate_label("queue name", text).map(|()| text.to_owned())
}

/// Arguments of `wedge queue ls`.
#[derive(Debug, Args)]
struct LsArgs {
    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

impl LsArgs {
    fn run(self) -> anyhow::Result<()> {
        let reply = Client::new(&self.connection.resolve()?).queues()?;
        if self.output.json() {
            return print_json(&reply.raw);
        }
        if reply.value.queues.is_empty() {
            println!("no job queues (bind a function to one with `wedge deploy --queue NAME`)");
            return Ok(());
        }
        print!("{}", queues_table(&reply.value.queues).render());
        Ok(())
    }
}

/// The `wedge queue ls` table; `-` where nothing is known (no backup, no
/// counts from a primary yet).
fn queues_table(queues: &[QueueStatus]) -> Table {
    let mut table =
        Table::new(&["QUEUE", "FUNCTION", "PRIMARY", "BACKUP", "READY", "DELAYED", "IN-FLIGHT", "DEAD", "OLDEST"]);
    let unknown = || "-".to_owned();
    for status in queues {
        let assignment = status.assignment.as_ref();
        let mut row = vec![
            status.queue.clone(),
            status.function.clone(),
            assignment.map_or_else(unknown, |a| escape_controls(&a.primary).into_owned()),
            assignment.and_then(|a| a.backup.as_deref()).map_or_else(unknown, |b| escape_controls(b).into_owned()),
        ];
        match status.counts {
            Some(counts) => row.extend([
                counts.ready.to_string(),
                counts.delayed.to_string(),
                counts.in_flight.to_string(),
                counts.dead.to_string(),
                if counts.oldest_age_ms == 0 { unknown() } else { human_age(counts.oldest_age_ms) },
            ]),
            None => row.extend(std::iter::repeat_n(unknown(), 5)),
        }
        table.row(row);
    }
    table
}

/// Arguments of `wedge queue peek`.
#[derive(Debug, Args)]
struct PeekArgs {
    /// The queue.
    #[arg(value_name = "QUEUE", value_parser = queue_name)]
    queue: String,

    /// Dead-lettered jobs instead of the others (ready, delayed, in flight).
    #[arg(long)]
    dead: bool,

    /// How many jobs, oldest first.
    #[arg(short = 'n', long, default_value_t = 20, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(QUEUE_PEEK_LIMIT_MAX)))]
    limit: u32,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

impl PeekArgs {
    fn run(self) -> anyhow::Result<()> {
        let reply = Client::new(&self.connection.resolve()?).queue_jobs(&self.queue, self.limit, self.dead)?;
        if self.output.json() {
            return print_json(&reply.raw);
        }
        let QueueCommandOutput::Jobs(jobs) = &reply.value.output else {
            bail!("the control plane answered a peek with {:?}", reply.value.output);
        };
        if jobs.is_empty() {
            let which = if self.dead { "dead" } else { "waiting or running" };
            println!("no {which} jobs in queue {} (on {})", self.queue, escape_controls(&reply.value.node));
            return Ok(());
        }
        print!("{}", jobs_table(jobs, self.dead, now_unix_ms()).render());
        if let Some(note) = cut_note(jobs, self.limit) {
            eprintln!("{note}");
        }
        Ok(())
    }
}

/// What to say when a peek's answer was cut short of `limit` jobs: the primary stops
/// adding jobs once their JSON passes [`QUEUE_PEEK_BYTES_MAX`], so fewer jobs than
/// asked and that many bytes mean there may be more.
fn cut_note(jobs: &[JobSummary], limit: u32) -> Option<String> {
    let bytes: usize = jobs.iter().map(JobSummary::json_bytes).sum();
    (jobs.len() < limit as usize && bytes >= QUEUE_PEEK_BYTES_MAX).then(|| {
        format!(
            "listed {} of the {limit} jobs asked for: an answer holds about {} KiB of jobs, so there may be more",
            jobs.len(),
            QUEUE_PEEK_BYTES_MAX / 1024
        )
    })
}

/// The `wedge queue peek` table at `now_ms`; dead jobs get their last error
/// as a last column. Text from senders and guests is escaped for the terminal.
fn jobs_table(jobs: &[JobSummary], dead: bool, now_ms: u64) -> Table {
    let mut columns = vec!["ID", "STATE", "ATTEMPT", "KEY", "AGE", "PAYLOAD"];
    if dead {
        columns.push("ERROR");
    }
    let mut table = Table::new(&columns);
    for job in jobs {
        let mut payload = escape_controls(&job.payload_preview).into_owned();
        // The preview is lossy UTF-8, so its length says nothing of the payload's.
        if job.payload_bytes > JOB_PAYLOAD_PREVIEW_BYTES as u64 {
            payload.push('…');
        }
        let mut row = vec![
            job.id.clone(),
            job.state.clone(),
            job.attempt.to_string(),
            job.idempotency_key.as_deref().map_or_else(|| "-".to_owned(), |key| escape_controls(key).into_owned()),
            human_age(now_ms.saturating_sub(job.enqueued_at_unix_ms)),
            payload,
        ];
        if dead {
            row.push(escape_controls(job.last_error.as_deref().unwrap_or("-")).into_owned());
        }
        table.row(row);
    }
    table
}

/// Arguments of `wedge queue retry-dead`.
#[derive(Debug, Args)]
struct QueueNameArgs {
    /// The queue.
    #[arg(value_name = "QUEUE", value_parser = queue_name)]
    queue: String,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

impl QueueNameArgs {
    fn run(self) -> anyhow::Result<()> {
        let reply = Client::new(&self.connection.resolve()?).queue_command(&self.queue, "retry-dead")?;
        if self.output.json() {
            return print_json(&reply.raw);
        }
        let moved = count_of(&reply.value)?;
        println!("{} of queue {} ready again (on {})", jobs(moved), self.queue, escape_controls(&reply.value.node));
        Ok(())
    }
}

/// Arguments of `wedge queue purge`.
#[derive(Debug, Args)]
struct PurgeArgs {
    /// The queue.
    #[arg(value_name = "QUEUE", value_parser = queue_name)]
    queue: String,

    /// Purge without asking (needed when stdin is not a terminal).
    #[arg(short = 'y', long)]
    yes: bool,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

impl PurgeArgs {
    fn run(self) -> anyhow::Result<()> {
        if !self.yes && !std::io::stdin().is_terminal() {
            bail!("not purging queue {}: stdin is not a terminal, so pass --yes to confirm", self.queue);
        }
        let client = Client::new(&self.connection.resolve()?);
        if !self.yes {
            let report = client.queues()?.value;
            let Some(status) = report.queues.iter().find(|status| status.queue == self.queue) else {
                bail!("no such queue: {} (no deployed function handles it)", self.queue);
            };
            let held = status.counts.map_or_else(
                || "the".to_owned(),
                |c| {
                    let total = u64::from(c.ready) + u64::from(c.delayed) + u64::from(c.in_flight) + u64::from(c.dead);
                    total.to_string()
                },
            );
            if !super::rm::confirm(&format!("Purge {held} jobs of queue {}? [y/N] ", self.queue))? {
                bail!("nothing purged");
            }
        }
        let reply = client.queue_command(&self.queue, "purge")?;
        if self.output.json() {
            return print_json(&reply.raw);
        }
        let removed = count_of(&reply.value)?;
        println!("purged {} of queue {} (on {})", jobs(removed), self.queue, escape_controls(&reply.value.node));
        Ok(())
    }
}

/// The count a retry-dead or purge answered.
fn count_of(answer: &QueueCommandAnswer) -> anyhow::Result<u64> {
    match answer.output {
        QueueCommandOutput::Retried(count) | QueueCommandOutput::Purged(count) => Ok(count),
        QueueCommandOutput::Jobs(_) => bail!("the control plane answered with jobs instead of a count"),
    }
}

/// `1 job`, `3 jobs`.
fn jobs(count: u64) -> String {
    format!("{count} {}", plural(count, "job"))
}

#[cfg(test)]
mod tests {
    use wedge_control::api::{QueueAssignment, QueueCounts};

    use super::*;

    #[test]
    fn the_queue_table_shows_counts_and_dashes_for_what_is_unknown() {
        let counted = QueueStatus {
            queue: "emails".into(),
            function: "mailer".into(),
            assignment: Some(QueueAssignment {
                function: "mailer".into(),
                epoch: 2,
                primary: "n1".into(),
                backup: Some("n2".into()),
                config: Default::default(),
            }),
            counts: Some(QueueCounts { ready: 1, delayed: 2, in_flight: 3, dead: 4, oldest_age_ms: 192_000 }),
            ..QueueStatus::default()
        };
        let waiting = QueueStatus { queue: "thumbs".into(), function: "resizer".into(), ..QueueStatus::default() };
        assert_eq!(
            queues_table(&[counted, waiting]).render(),
            "QUEUE   FUNCTION  PRIMARY  BACKUP  READY  DELAYED  IN-FLIGHT  DEAD  OLDEST\n\
             emails  mailer    n1       n2      1      2        3          4     3m12s\n\
             thumbs  resizer   -        -       -      -        -          -     -\n"
        );
    }

    #[test]
    fn peeked_jobs_are_escaped_and_cut_payloads_marked() {
        let job = JobSummary {
            id: "1-7".into(),
            state: "dead".into(),
            attempt: 3,
            idempotency_key: Some("k\u{1b}[2J".into()),
            enqueued_at_unix_ms: 1_000,
            run_at_unix_ms: None,
            last_error: Some("boom\nagain".into()),
            payload_bytes: 300,
            payload_preview: "{\"to\":\"a\"".into(),
        };
        assert_eq!(
            jobs_table(&[job], true, 43_000).render(),
            "ID   STATE  ATTEMPT  KEY       AGE  PAYLOAD     ERROR\n\
             1-7  dead   3        k\\x1b[2J  42s  {\"to\":\"a\"…  boom\\x0aagain\n"
        );
    }

    #[test]
    fn only_payloads_longer_than_the_preview_are_marked_cut() {
        let job = |payload_bytes, preview: &str| JobSummary {
            id: "1-7".into(),
            state: "ready".into(),
            attempt: 0,
            idempotency_key: None,
            enqueued_at_unix_ms: 1_000,
            run_at_unix_ms: Some(1_000),
            last_error: None,
            payload_bytes,
            payload_preview: preview.into(),
        };
        let payload = |job| jobs_table(&[job], false, 1_000).render().lines().nth(1).unwrap().to_owned();
        // 300 bytes that are not UTF-8: the preview of the first 256 is 768 bytes long.
        assert!(payload(job(300, &"\u{fffd}".repeat(256))).ends_with('…'));
        // 10 such bytes, all shown.
        assert!(!payload(job(10, &"\u{fffd}".repeat(10))).ends_with('…'));
        assert!(!payload(job(256, &"x".repeat(256))).ends_with('…'));
    }

    #[test]
    fn a_peek_cut_short_by_the_answer_size_says_so() {
        let job = JobSummary {
            id: "1-7".into(),
            state: "dead".into(),
            attempt: 3,
            idempotency_key: None,
            enqueued_at_unix_ms: 1_000,
            run_at_unix_ms: None,
            last_error: Some("e".repeat(4_000)),
            payload_bytes: 0,
            payload_preview: String::new(),
        };
        let many = vec![job.clone(); QUEUE_PEEK_BYTES_MAX / 4_000 + 1];
        let note = cut_note(&many, 1_000).unwrap();
        assert!(note.starts_with(&format!("listed {} of the 1000 jobs asked for", many.len())), "{note}");
        assert_eq!(cut_note(&many, many.len() as u32), None, "all that were asked");
        assert_eq!(cut_note(&[job], 1_000), None, "a short queue");
    }

    #[test]
    fn queue_names_are_checked() {
        assert_eq!(queue_name("emails-2").unwrap(), "emails-2");
        for bad in ["", "Emails", "-x", "a/b", &"q".repeat(64)] {
            assert!(queue_name(bad).is_err(), "{bad:?}");
        }
    }
}
