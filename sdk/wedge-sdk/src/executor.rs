//! A tiny single-threaded executor driven by `wasi:io/poll`.
//!
//! A guest instance lives for one request on one thread, so the executor is
//! deliberately small: [`block_on`] polls one future; whenever that future
//! waits on a WASI operation it registers the operation's pollable and its
//! waker in a thread-local reactor ([`wait_for`]). While the future is
//! pending, `block_on` hands every registered pollable to `wasi:io/poll.poll`,
//! which blocks in the host until at least one is ready, and wakes the ready
//! ones. There is no busy loop and no spawning: concurrency inside a handler
//! comes from combining futures (for example joining two outbound requests).
//!
//! Nested `block_on` calls (a blocking SDK call made from inside an async
//! handler) are allowed: the inner call also wakes the outer call's waiters,
//! and the outer call sees its wake-up flag when the inner one returns.

use std::cell::RefCell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use crate::bindings::wasi::clocks::monotonic_clock;
use crate::bindings::wasi::io::poll::{Pollable, poll};

/// One operation some future is waiting on.
struct Waiter {
    /// Identifies the entry so a dropped [`WaitFor`] can withdraw it.
    id: u64,
    /// Ready when the operation can make progress. Owned here so that the
    /// reactor can hand it to `poll`.
    pollable: Pollable,
    /// Set to `true` when the pollable fired; shared with the [`WaitFor`].
    fired: Rc<std::cell::Cell<bool>>,
    /// Wakes the task that owns the [`WaitFor`].
    waker: Waker,
}

/// Everything this thread (the whole instance) is waiting on.
#[derive(Default)]
struct Reactor {
    /// Pending waiters. Bounded by the number of futures alive at once.
    waiters: Vec<Waiter>,
    /// Next [`Waiter::id`].
    next_id: u64,
}

thread_local! {
    static REACTOR: RefCell<Reactor> = RefCell::new(Reactor::default());
}

/// Blocks in `wasi:io/poll.poll` until at least one registered pollable is
/// ready, then wakes the ready waiters and removes them from the reactor.
///
/// Returns `false` when nothing is registered (so nothing could ever wake a
/// pending future).
fn poll_once() -> bool {
    // Take the waiters out so that no RefCell borrow is held while wakers
    // run (a waker may be arbitrary user code).
    let waiters = REACTOR.with(|r| std::mem::take(&mut r.borrow_mut().waiters));
    if waiters.is_empty() {
        return false;
    }
    let ready: Vec<u32> = {
        let list: Vec<&Pollable> = waiters.iter().map(|w| &w.pollable).collect();
        poll(&list)
    };
    let mut fired = Vec::with_capacity(ready.len());
    let mut still_waiting = Vec::with_capacity(waiters.len());
    for (index, waiter) in waiters.into_iter().enumerate() {
        if ready.contains(&(index as u32)) {
            fired.push(waiter);
        } else {
            still_waiting.push(waiter);
        }
    }
    REACTOR.with(|r| {
        let mut r = r.borrow_mut();
        // Waiters registered while we were polling (none today, but keep
        // them) go after the ones still waiting.
        still_waiting.append(&mut r.waiters);
        r.waiters = still_waiting;
    });
    for waiter in fired {
        waiter.fired.set(true);
        // Drop the pollable before waking: the woken future may drop the
        // resource the pollable is a child of.
        let Waiter { pollable, waker, .. } = waiter;
        drop(pollable);
        waker.wake();
    }
    true
}

/// A future that completes when `pollable` is ready. See [`wait_for`].
#[must_use = "futures do nothing unless awaited"]
pub struct WaitFor {
    /// The pollable until it is handed to the reactor.
    pollable: Option<Pollable>,
    /// The reactor entry once registered.
    registered: Option<u64>,
    /// Set by the reactor when the pollable fired.
    fired: Rc<std::cell::Cell<bool>>,
}

impl Future for WaitFor {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired.get() {
            self.registered = None;
            return Poll::Ready(());
        }
        if let Some(pollable) = self.pollable.take() {
            if pollable.ready() {
                return Poll::Ready(());
            }
            let fired = self.fired.clone();
            let id = REACTOR.with(|r| {
                let mut r = r.borrow_mut();
                let id = r.next_id;
                r.next_id += 1;
                r.waiters.push(Waiter { id, pollable, fired, waker: cx.waker().clone() });
                id
            });
            self.registered = Some(id);
            return Poll::Pending;
        }
        if let Some(id) = self.registered {
            // Polled again before firing: keep the newest waker.
            REACTOR.with(|r| {
                if let Some(w) = r.borrow_mut().waiters.iter_mut().find(|w| w.id == id) {
                    w.waker.clone_from(cx.waker());
                }
            });
            return Poll::Pending;
        }
        // Neither registered nor holding a pollable: already completed.
        Poll::Ready(())
    }
}

impl Drop for WaitFor {
    fn drop(&mut self) {
        // Withdraw the pollable: it is a child of some resource the caller is
        // about to drop, and a child outliving its parent traps.
        if let Some(id) = self.registered.take() {
            let removed = REACTOR.with(|r| {
                let mut r = r.borrow_mut();
                let index = r.waiters.iter().position(|w| w.id == id);
                index.map(|i| r.waiters.swap_remove(i))
            });
            drop(removed);
        }
    }
}

/// Returns a future that completes when `pollable` is ready.
///
/// This is the building block for async WASI calls: subscribe to a stream,
/// a future response or a clock, then `wait_for(pollable).await`. The
/// pollable is dropped when the future completes or is dropped.
pub fn wait_for(pollable: Pollable) -> WaitFor {
    WaitFor { pollable: Some(pollable), registered: None, fired: Rc::new(std::cell::Cell::new(false)) }
}

/// Completes after `duration` (measured on the monotonic clock).
pub async fn sleep(duration: Duration) {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    wait_for(monotonic_clock::subscribe_duration(nanos)).await;
}

/// Waker of a [`block_on`] call: records that the future asked to be polled.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `future` to completion on this thread and returns its output.
///
/// While the future is pending, the call blocks in `wasi:io/poll.poll` on
/// every pollable registered through [`wait_for`] (the SDK's async functions
/// all use it). `#[http_handler]` on an `async fn` uses this to run the
/// handler.
///
/// # Panics
///
/// Panics if the future is pending while nothing is registered with the
/// reactor and it has not woken itself: nothing could ever make progress.
/// This happens when a future waits on something that is not a WASI
/// pollable (for example a channel whose sender was leaked).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if flag.0.swap(false, Ordering::Relaxed) {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            continue;
        }
        if !poll_once() && !flag.0.load(Ordering::Relaxed) {
            panic!(
                "wedge_sdk::executor::block_on: the future is pending but waits on no \
                 WASI pollable, so it can never complete"
            );
        }
    }
}
