//! [`CommandBook`]: operators' queue commands (`wedge queue peek|retry-dead|purge`)
//! waiting for their queue's primary. The control plane never dials a node: a command
//! waits here until the primary's next `POST /v1/nodes/{node}/report`, leaves in that
//! report's answer ([`crate::api::ReportAnswer`]), and its result comes back in a later
//! report ([`crate::api::NodeReport::queue_results`]), matched by id.
//!
//! Plain state: no clock, no sockets. Each command's waiter (the operator's request)
//! holds the receiving end of a oneshot; the book holds the sending end. A waiter that
//! gives up (its deadline, a primary that changed, a client that went away) either
//! withdraws its command or just drops its receiver, and the book forgets such commands
//! the next time it looks at that node. So what it holds is bounded by
//! [`COMMANDS_PER_NODE_MAX`] per node, and a command is handed over at most once.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use crate::api::{QueueAction, QueueCommand, QueueCommandOutput, QueueCommandResult};

/// Most commands waiting for (or run by) one node at once; beyond it a new one is
/// refused ([`CommandError::Busy`]).
pub(crate) const COMMANDS_PER_NODE_MAX: usize = 64;

/// Why a command has no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommandError {
    /// Too many commands wait for the node already; nothing was sent.
    #[error("{COMMANDS_PER_NODE_MAX} queue commands already wait for node {node}; try again shortly")]
    Busy {
        /// The queue's primary.
        node: String,
    },
    /// The queue's primary changed before the command reached it; nothing ran.
    #[error("the primary of queue {queue} changed before node {node} took the command (nothing ran); try again")]
    PrimaryChanged {
        /// The queue.
        queue: String,
        /// The primary it waited for.
        node: String,
    },
    /// The node ran it and failed (it is not the primary any more, say): what it
    /// said (nodes name themselves in it).
    #[error("{0}")]
    Failed(String),
}

/// What a waiter receives.
pub(crate) type CommandOutcome = Result<QueueCommandOutput, CommandError>;

/// One command in the book.
#[derive(Debug)]
struct Entry {
    command: QueueCommand,
    /// Whether it left in a report's answer (then it is never handed over again).
    handed: bool,
    reply: oneshot::Sender<CommandOutcome>,
}

/// Every node's commands; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct CommandBook {
    next_id: u64,
    /// Node → its commands by id, oldest first.
    nodes: BTreeMap<String, BTreeMap<u64, Entry>>,
}

impl CommandBook {
    /// Takes a command for `queue`'s primary `node`: its id and where its outcome will
    /// arrive. Refused when the node has [`COMMANDS_PER_NODE_MAX`] already.
    pub(crate) fn submit(
        &mut self,
        node: &str,
        queue: &str,
        action: QueueAction,
    ) -> Result<(u64, oneshot::Receiver<CommandOutcome>), CommandError> {
        let entries = self.nodes.entry(node.to_owned()).or_default();
        entries.retain(|_, entry| !entry.reply.is_closed());
        if entries.len() >= COMMANDS_PER_NODE_MAX {
            return Err(CommandError::Busy { node: node.to_owned() });
        }
        self.next_id += 1;
        let id = self.next_id;
        let (reply, outcome) = oneshot::channel();
        let command = QueueCommand { id, queue: queue.to_owned(), action };
        entries.insert(id, Entry { command, handed: false, reply });
        Ok((id, outcome))
    }

    /// The commands to hand `node` in the answer to its report, each once. A command
    /// whose queue's primary (`primary_of`, as published) is no longer `node` fails
    /// instead with [`CommandError::PrimaryChanged`].
    pub(crate) fn hand_over(&mut self, node: &str, primary_of: impl Fn(&str) -> Option<String>) -> Vec<QueueCommand> {
        let Some(entries) = self.nodes.get_mut(node) else { return Vec::new() };
        entries.retain(|_, entry| !entry.reply.is_closed());
        let moved: Vec<u64> = entries
            .iter()
            .filter(|(_, entry)| !entry.handed && primary_of(&entry.command.queue).as_deref() != Some(node))
            .map(|(id, _)| *id)
            .collect();
        for id in moved {
            if let Some(entry) = entries.remove(&id) {
                let error = CommandError::PrimaryChanged { queue: entry.command.queue, node: node.to_owned() };
                let _ = entry.reply.send(Err(error));
            }
        }
        let handed = entries
            .values_mut()
            .filter(|entry| !entry.handed)
            .map(|entry| {
                entry.handed = true;
                entry.command.clone()
            })
            .collect();
        self.forget_idle(node);
        handed
    }

    /// Results `node` sent: each goes to its waiter. Results for commands this book
    /// did not hand to `node` (unknown ids, another node's, withdrawn ones) are dropped.
    pub(crate) fn finish(&mut self, node: &str, results: Vec<QueueCommandResult>) {
        let Some(entries) = self.nodes.get_mut(node) else { return };
        for result in results {
            if !entries.get(&result.id).is_some_and(|entry| entry.handed) {
                continue;
            }
            let Some(entry) = entries.remove(&result.id) else { continue };
            let outcome = result.outcome.map_err(CommandError::Failed);
            let _ = entry.reply.send(outcome);
        }
        self.forget_idle(node);
    }

    /// Removes command `id` of `node` unless it was handed over already; whether it was
    /// removed (then it never runs).
    pub(crate) fn withdraw_unsent(&mut self, node: &str, id: u64) -> bool {
        let Some(entries) = self.nodes.get_mut(node) else { return false };
        let removed = entries.get(&id).is_some_and(|entry| !entry.handed) && entries.remove(&id).is_some();
        self.forget_idle(node);
        removed
    }

    /// Removes command `id` of `node`, handed over or not (its waiter stopped waiting).
    pub(crate) fn forget(&mut self, node: &str, id: u64) {
        if let Some(entries) = self.nodes.get_mut(node) {
            entries.remove(&id);
        }
        self.forget_idle(node);
    }

    /// Commands the book holds for `node`.
    #[cfg(test)]
    fn held(&self, node: &str) -> usize {
        self.nodes.get(node).map_or(0, BTreeMap::len)
    }

    /// Drops `node`'s entry once it holds nothing, so nodes that come and go leave
    /// nothing behind.
    fn forget_idle(&mut self, node: &str) {
        if self.nodes.get(node).is_some_and(BTreeMap::is_empty) {
            self.nodes.remove(node);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const PEEK: QueueAction = QueueAction::Peek { limit: 5, dead: false };

    /// `node` is the primary of every queue.
    fn primary(node: &'static str) -> impl Fn(&str) -> Option<String> {
        move |_| Some(node.to_owned())
    }

    fn done(id: u64, output: QueueCommandOutput) -> QueueCommandResult {
        QueueCommandResult { id, outcome: Ok(output) }
    }

    #[test]
    fn a_command_goes_out_once_and_its_result_reaches_its_waiter() {
        let mut book = CommandBook::default();
        let (id, mut outcome) = book.submit("n1", "work", QueueAction::Purge).unwrap();
        assert!(book.hand_over("n2", primary("n2")).is_empty(), "another node's report takes nothing");
        let handed = book.hand_over("n1", primary("n1"));
        assert_eq!(handed, vec![QueueCommand { id, queue: "work".into(), action: QueueAction::Purge }]);
        assert!(book.hand_over("n1", primary("n1")).is_empty(), "handed over twice");
        assert!(outcome.try_recv().is_err(), "answered before the result");
        // Another node's result for this id, and an unknown id, are dropped.
        book.finish("n2", vec![done(id, QueueCommandOutput::Purged(9))]);
        book.finish("n1", vec![done(id + 100, QueueCommandOutput::Purged(9))]);
        assert!(outcome.try_recv().is_err());
        book.finish("n1", vec![done(id, QueueCommandOutput::Purged(3))]);
        assert_eq!(outcome.try_recv().unwrap(), Ok(QueueCommandOutput::Purged(3)));
        assert_eq!(book.held("n1"), 0);
    }

    #[test]
    fn a_result_before_the_hand_over_is_not_taken() {
        let mut book = CommandBook::default();
        let (id, mut outcome) = book.submit("n1", "work", PEEK).unwrap();
        book.finish("n1", vec![done(id, QueueCommandOutput::Jobs(Vec::new()))]);
        assert!(outcome.try_recv().is_err());
        assert_eq!(book.hand_over("n1", primary("n1")).len(), 1);
    }

    #[test]
    fn a_node_failure_reaches_the_waiter_as_it_said_it() {
        let mut book = CommandBook::default();
        let (id, mut outcome) = book.submit("n1", "work", QueueAction::RetryDead).unwrap();
        book.hand_over("n1", primary("n1"));
        let message = "node n1 is not the primary of queue work".to_owned();
        book.finish("n1", vec![QueueCommandResult { id, outcome: Err(message.clone()) }]);
        let error = outcome.try_recv().unwrap().unwrap_err();
        assert_eq!(error, CommandError::Failed(message));
        assert_eq!(error.to_string(), "node n1 is not the primary of queue work");
    }

    #[test]
    fn each_node_holds_a_bounded_number_and_gone_waiters_free_their_place() {
        let mut book = CommandBook::default();
        let mut waiting: Vec<_> =
            (0..COMMANDS_PER_NODE_MAX).map(|_| book.submit("n1", "work", PEEK).unwrap()).collect();
        assert_eq!(book.submit("n1", "work", PEEK).unwrap_err(), CommandError::Busy { node: "n1".into() });
        // Another node is not affected.
        assert!(book.submit("n2", "work", PEEK).is_ok());
        // A waiter that gave up (its receiver dropped) frees its place and is never sent.
        let (gone, _) = waiting.remove(0);
        let (_, kept) = book.submit("n1", "work", PEEK).unwrap();
        let handed = book.hand_over("n1", primary("n1"));
        assert_eq!(handed.len(), COMMANDS_PER_NODE_MAX);
        assert!(handed.iter().all(|command| command.id != gone));
        drop((waiting, kept));
        assert!(book.hand_over("n1", primary("n1")).is_empty());
        assert_eq!(book.held("n1"), 0, "closed waiters are forgotten");
    }

    #[test]
    fn a_waiter_that_times_out_withdraws_its_command() {
        let mut book = CommandBook::default();
        let (unsent, _outcome) = book.submit("n1", "work", PEEK).unwrap();
        assert!(book.withdraw_unsent("n1", unsent), "not handed over: withdrawn");
        assert!(book.hand_over("n1", primary("n1")).is_empty(), "a withdrawn command is never sent");
        let (sent, _outcome) = book.submit("n1", "work", QueueAction::Purge).unwrap();
        book.hand_over("n1", primary("n1"));
        assert!(!book.withdraw_unsent("n1", sent), "handed over: it may run, so it stays");
        book.forget("n1", sent);
        assert_eq!(book.held("n1"), 0);
        // Its late result is dropped.
        book.finish("n1", vec![done(sent, QueueCommandOutput::Purged(1))]);
    }

    #[test]
    fn a_command_fails_when_the_primary_changed_before_it_was_handed_over() {
        let mut book = CommandBook::default();
        let (_, mut moved) = book.submit("n1", "work", QueueAction::Purge).unwrap();
        let (_, mut stays) = book.submit("n1", "other", PEEK).unwrap();
        let primary_of = |queue: &str| Some(if queue == "work" { "n2" } else { "n1" }.to_owned());
        let handed = book.hand_over("n1", primary_of);
        assert_eq!(handed.iter().map(|c| c.queue.as_str()).collect::<Vec<_>>(), ["other"]);
        assert_eq!(
            moved.try_recv().unwrap(),
            Err(CommandError::PrimaryChanged { queue: "work".into(), node: "n1".into() })
        );
        assert!(stays.try_recv().is_err());
        // A queue that has no primary at all is a change too.
        let (_, mut unassigned) = book.submit("n1", "gone", PEEK).unwrap();
        assert!(book.hand_over("n1", |_| None).is_empty());
        assert!(matches!(unassigned.try_recv().unwrap(), Err(CommandError::PrimaryChanged { .. })));
    }
}
