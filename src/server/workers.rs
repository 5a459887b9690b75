//! Worker threads for client connections. Each runs a single-threaded tokio runtime of its
//! own, as nginx runs worker processes: a connection's socket, its requests and the upstream
//! connections they borrow are all driven by one thread's event loop, so a request never
//! waits for a wake-up from another thread, and no task state moves between cores. The
//! accept loop hands each new connection to the next worker in turn, which spreads them more
//! evenly than `SO_REUSEPORT`'s hash would.

use std::io;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

/// Work handed to a worker, given the worker's index: runs on the worker's thread, inside
/// its runtime, so what it registers (sockets, timers, spawned tasks) belongs to that
/// worker's event loop.
pub type Job = Box<dyn FnOnce(usize) + Send>;

pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    next: usize,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let count = count.max(1);
        let mut queues = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
            let thread = std::thread::Builder::new()
                .name(format!("wxgate-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some(job) = jobs.recv().await {
                            job(index);
                        }
                    });
                    // Dropping the runtime here cancels what is still running on it: the
                    // accept loop closes the queues only after its drain has ended.
                })?;
            queues.push(queue);
            threads.push(thread);
        }
        Ok(Self {
            queues,
            threads,
            next: 0,
        })
    }

    /// Runs `job` on the next worker. Should that worker be gone, the job runs on the
    /// caller's runtime (as that worker): a connection is never dropped for want of one.
    pub fn dispatch(&mut self, job: Job) {
        let index = self.next % self.queues.len();
        self.next = self.next.wrapping_add(1);
        if let Err(mpsc::error::SendError(job)) = self.queues[index].send(job) {
            tracing::warn!(worker = index, "worker gone; serving on the accept thread");
            job(index);
        }
    }

    /// Closes the queues and waits for every worker thread to end; what still runs on a
    /// worker is cancelled.
    pub async fn stop(self) {
        drop(self.queues);
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let _ = joined.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_round_robin_on_named_worker_threads() {
        let mut workers = Workers::start(2).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.dispatch(Box::new(move |index| {
                // Inside the worker's runtime: spawning works and lands on the same thread.
                tokio::spawn(async move {
                    let name = std::thread::current().name().map(str::to_owned);
                    let _ = tx.send(name.map(|n| format!("{n} {index}")));
                });
            }));
        }
        drop(tx);
        let mut names = Vec::new();
        while let Some(name) = rx.recv().await {
            names.push(name.unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "wxgate-worker-0 0",
                "wxgate-worker-0 0",
                "wxgate-worker-1 1",
                "wxgate-worker-1 1"
            ]
        );
        workers.stop().await;
    }
}
