//! What besides its own traffic ends a client connection: the server shutting down, and the
//! connection falling quiet (parked after `PARK_AFTER`, closed after `idle_timeout`).
//!
//! Both are watched with a waker of their own, so the many wakes a busy connection's task gets
//! from its sockets poll only the connection itself. Polled on every wake, the shutdown signal
//! alone took a lock shared by every connection of every worker: the watch channel's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::{Instant, Sleep};

/// A connection with nothing in flight and no byte moved for this long gives its HTTP state
/// back and keeps only its socket. Long enough that a page's burst of requests is served by
/// one live connection, short enough that thousands of idle keep-alive connections cost
/// little more than their sockets.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// What a wait on a connection ended with.
pub enum Event<T> {
    /// The connection (or the read a parked connection waits on) finished.
    Ended(T),
    /// The server is shutting down.
    Shutdown,
    /// Time to look at the connection: see `Signals::look`.
    Quiet,
}

/// Where a connection stands when the quiet timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rest {
    /// A request is in flight or half read or written, or the protocol never parks (HTTP/2).
    Busy,
    /// Between two requests, with nothing held back: it may park.
    Idle,
    /// Parked: only its socket is left.
    Parked,
}

/// What to do with a connection the quiet timer fired for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    Park,
    Close,
}

/// When a connection counts as quiet, from how many times bytes moved.
#[derive(Debug)]
struct Quiet {
    /// How often a live connection is looked at.
    period: Duration,
    idle_timeout: Duration,
    seen: u64,
    /// When the connection was first seen without new traffic.
    since: Instant,
}

impl Quiet {
    fn new(idle_timeout: Duration, now: Instant) -> Self {
        Self {
            period: PARK_AFTER.min(idle_timeout),
            idle_timeout,
            seen: 0,
            since: now,
        }
    }

    /// The verdict, and when to look again.
    fn look(&mut self, moves: u64, rest: Rest, now: Instant) -> (Verdict, Instant) {
        let closes_at = self.since + self.idle_timeout;
        if moves != self.seen {
            self.seen = moves;
            self.since = now;
            return (Verdict::Wait, now + self.period);
        }
        if now >= closes_at {
            return (Verdict::Close, closes_at);
        }
        let quiet = now.saturating_duration_since(self.since);
        match rest {
            Rest::Idle if quiet >= PARK_AFTER => (Verdict::Park, closes_at),
            // A parked connection has nothing to look at until its idle time is up.
            Rest::Parked => (Verdict::Wait, closes_at),
            Rest::Idle | Rest::Busy => (Verdict::Wait, (now + self.period).min(closes_at)),
        }
    }
}

/// Wakes the connection's task and notes that the signals, not the connection, asked.
struct Wakeup {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The shutdown signal and the quiet timer of one connection.
pub struct Signals<'a, S> {
    stop: Pin<&'a mut S>,
    stopped: bool,
    timer: Pin<&'a mut Sleep>,
    quiet: Quiet,
    wakeup: Arc<Wakeup>,
    waker: Waker,
}

impl<'a, S: Future> Signals<'a, S> {
    /// `stop` resolves when the server shuts down; `timer` is any sleep, re-armed here.
    pub fn new(
        stop: Pin<&'a mut S>,
        mut timer: Pin<&'a mut Sleep>,
        idle_timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        let quiet = Quiet::new(idle_timeout, now);
        // A new connection waits for its first bytes like a parked one.
        timer.as_mut().reset(now + idle_timeout);
        let wakeup = Arc::new(Wakeup {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            stop,
            stopped: false,
            timer,
            quiet,
            waker: Waker::from(wakeup.clone()),
            wakeup,
        }
    }

    /// Polls `connection` until it ends or a signal fires.
    pub async fn drive<F: Future + ?Sized>(
        &mut self,
        mut connection: Pin<&mut F>,
    ) -> Event<F::Output> {
        std::future::poll_fn(|cx| {
            if self.wakeup.woken.swap(false, Ordering::AcqRel) {
                self.wakeup.task.register(cx.waker());
                let mut own = Context::from_waker(&self.waker);
                if !self.stopped && self.stop.as_mut().poll(&mut own).is_ready() {
                    self.stopped = true;
                    // The timer still wants watching on the next wait.
                    self.wakeup.woken.store(true, Ordering::Release);
                    return Poll::Ready(Event::Shutdown);
                }
                if self.timer.as_mut().poll(&mut own).is_ready() {
                    return Poll::Ready(Event::Quiet);
                }
            }
            connection.as_mut().poll(cx).map(Event::Ended)
        })
        .await
    }

    /// After `Event::Quiet`: what to do with the connection, given how many times its bytes
    /// have moved and where it stands. Re-arms the timer.
    pub fn look(&mut self, moves: u64, rest: Rest) -> Verdict {
        let (verdict, next) = self.quiet.look(moves, rest, Instant::now());
        self.rearm(next);
        verdict
    }

    /// A parked connection has bytes again: look at it every period from now on.
    pub fn woke(&mut self) {
        let next = Instant::now() + self.quiet.period;
        self.rearm(next);
    }

    fn rearm(&mut self, at: Instant) {
        self.timer.as_mut().reset(at);
        self.wakeup.woken.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn traffic_restarts_the_quiet_time() {
        let start = Instant::now();
        let mut quiet = Quiet::new(75 * SECOND, start);
        let (verdict, next) = quiet.look(3, Rest::Idle, start + SECOND);
        assert_eq!(verdict, Verdict::Wait);
        assert_eq!(next, start + 2 * SECOND);
        // Quiet for a whole period since bytes were last seen moving: parks.
        assert_eq!(quiet.look(3, Rest::Idle, next).0, Verdict::Park);
    }

    #[test]
    fn a_busy_connection_is_never_parked_but_is_closed_once_idle_too_long() {
        let start = Instant::now();
        let mut quiet = Quiet::new(5 * SECOND, start);
        for s in 1..5 {
            assert_eq!(
                quiet.look(0, Rest::Busy, start + s * SECOND).0,
                Verdict::Wait
            );
        }
        assert_eq!(
            quiet.look(0, Rest::Busy, start + 5 * SECOND).0,
            Verdict::Close
        );
    }

    #[test]
    fn a_parked_connection_is_next_looked_at_when_its_idle_time_is_up() {
        let start = Instant::now();
        let mut quiet = Quiet::new(75 * SECOND, start);
        let (verdict, next) = quiet.look(0, Rest::Idle, start + SECOND);
        assert_eq!(verdict, Verdict::Park);
        assert_eq!(next, start + 75 * SECOND);
        assert_eq!(quiet.look(0, Rest::Parked, start + 30 * SECOND).1, next);
        assert_eq!(quiet.look(0, Rest::Parked, next).0, Verdict::Close);
    }

    #[test]
    fn an_idle_timeout_below_the_park_time_closes_instead() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut quiet = Quiet::new(ms(300), start);
        let (verdict, next) = quiet.look(2, Rest::Idle, start + ms(300));
        assert_eq!((verdict, next), (Verdict::Wait, start + ms(600)));
        assert_eq!(quiet.look(2, Rest::Idle, next).0, Verdict::Close);
    }

    #[tokio::test]
    async fn the_connection_ends_the_wait_when_no_signal_fires() {
        let stop = std::future::pending::<()>();
        tokio::pin!(stop);
        let timer = tokio::time::sleep(SECOND);
        tokio::pin!(timer);
        let mut signals = Signals::new(stop, timer, 75 * SECOND);
        let connection = async { 7 };
        tokio::pin!(connection);
        assert!(matches!(signals.drive(connection).await, Event::Ended(7)));
    }

    #[tokio::test]
    async fn shutdown_wakes_a_waiting_connection_once() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let stop = async move {
            let _ = rx.changed().await;
        };
        tokio::pin!(stop);
        let timer = tokio::time::sleep(SECOND);
        tokio::pin!(timer);
        let mut signals = Signals::new(stop, timer, 75 * SECOND);
        let connection = std::future::pending::<()>();
        tokio::pin!(connection);
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(true).unwrap();
            tx
        });
        assert!(matches!(
            signals.drive(connection.as_mut()).await,
            Event::Shutdown
        ));
        let _tx = sender.await.unwrap();
        // Not again: the next wait ends with the connection or the timer.
        let second = tokio::time::timeout(Duration::from_millis(50), signals.drive(connection));
        assert!(second.await.is_err());
    }

    #[tokio::test]
    async fn the_timer_fires_quiet_and_is_rearmed_by_looking() {
        let idle = Duration::from_millis(100);
        let stop = std::future::pending::<()>();
        tokio::pin!(stop);
        let timer = tokio::time::sleep(SECOND);
        tokio::pin!(timer);
        let mut signals = Signals::new(stop, timer, idle);
        let connection = std::future::pending::<()>();
        tokio::pin!(connection);
        let started = Instant::now();
        signals.woke();
        assert!(matches!(
            signals.drive(connection.as_mut()).await,
            Event::Quiet
        ));
        // Bytes moved since the start: the quiet time starts over.
        assert_eq!(signals.look(5, Rest::Busy), Verdict::Wait);
        assert!(matches!(
            signals.drive(connection.as_mut()).await,
            Event::Quiet
        ));
        assert_eq!(signals.look(5, Rest::Busy), Verdict::Close);
        assert!(started.elapsed() >= 2 * idle);
    }
}
