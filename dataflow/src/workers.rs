//! The threads that run a dataflow's worker instances, kept for the dataflow's life.
//!
//! In every epoch each node's instances (one per worker) run at once. Starting a thread
//! per instance per node per epoch costs a thread start and exit each time, and an
//! exiting thread makes the allocator return its cached memory to the system (`madvise`,
//! with a TLB shootdown on every core) for the next epoch's threads to fault back in:
//! a tenth of the CPU of a stateful Nexmark query went there. Instead worker `k > 0`
//! is one long-lived thread, fed through a channel; worker 0 runs on the caller's thread.

use std::sync::mpsc;
use std::thread::JoinHandle;

use sabot_storage::StateWriter;

use crate::batch::ChangeBatch;
use crate::error::{DataflowError, Result};
use crate::operator::{Message, Operator};

/// What one instance made of its epoch: its output and its state writes.
pub(crate) type Outcome = Result<(Vec<ChangeBatch>, StateWriter)>;

/// Runs one instance over its messages of the epoch, port by port.
pub(crate) type RunFn = fn(&mut dyn Operator, Vec<Vec<Message>>) -> Outcome;

/// An instance travelling to its thread with its messages, and a way back.
struct Job {
    op: Box<dyn Operator>,
    ports: Vec<Vec<Message>>,
    back: mpsc::Sender<(Box<dyn Operator>, Outcome)>,
}

struct Thread {
    jobs: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
}

/// Worker threads `1..workers` of one dataflow; none until the first epoch needs them.
#[derive(Default)]
pub(crate) struct WorkerThreads {
    threads: Vec<Thread>,
}

impl std::fmt::Debug for WorkerThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerThreads")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl WorkerThreads {
    /// Runs `ops[k]` over `inputs[k]` for every `k` at once (`ops[0]` on this thread)
    /// and puts every instance back into `ops`, in order, returning their outcomes.
    /// An instance whose thread is gone cannot come back: `ops` then ends short and
    /// its outcome is an error (the dataflow cannot go on).
    pub(crate) fn run(
        &mut self,
        ops: &mut Vec<Box<dyn Operator>>,
        inputs: Vec<Vec<Vec<Message>>>,
        run: RunFn,
    ) -> Vec<Outcome> {
        let mut inputs = inputs.into_iter();
        let mut taken = std::mem::take(ops).into_iter();
        let (Some(mut first), Some(first_ports)) = (taken.next(), inputs.next()) else {
            return Vec::new();
        };
        let mut pending = Vec::new();
        for (k, (op, ports)) in taken.zip(inputs).enumerate() {
            pending.push(self.send(k, op, ports, run));
        }
        let mut outcomes = vec![run(first.as_mut(), first_ports)];
        ops.push(first);
        let mut lost = false;
        for back in pending {
            let came_back = back.and_then(|rx| {
                rx.recv().map_err(|_| {
                    DataflowError::Internal("a worker thread of this view stopped".into())
                })
            });
            match came_back {
                Ok((op, outcome)) if !lost => {
                    ops.push(op);
                    outcomes.push(outcome);
                }
                // Instances after a lost one cannot keep their places: drop them too.
                Ok(_) => outcomes.push(Err(DataflowError::Internal(
                    "a worker thread of this view stopped".into(),
                ))),
                Err(e) => {
                    lost = true;
                    outcomes.push(Err(e));
                }
            }
        }
        outcomes
    }

    /// Hands an instance to thread `k` (started if it is not yet); an error (and the
    /// instance dropped) if the thread cannot take it.
    fn send(
        &mut self,
        k: usize,
        op: Box<dyn Operator>,
        ports: Vec<Vec<Message>>,
        run: RunFn,
    ) -> Result<mpsc::Receiver<(Box<dyn Operator>, Outcome)>> {
        while self.threads.len() <= k {
            let (tx, rx) = mpsc::channel::<Job>();
            let handle = std::thread::Builder::new()
                .name(format!("sabot-worker-{}", self.threads.len() + 1))
                .spawn(move || {
                    for mut job in rx {
                        let outcome = run(job.op.as_mut(), job.ports);
                        // The caller is gone only when its epoch failed: drop the job.
                        let _ = job.back.send((job.op, outcome));
                    }
                });
            let handle = handle.map_err(|e| {
                DataflowError::Internal(format!("cannot start a worker thread: {e}"))
            })?;
            self.threads.push(Thread {
                jobs: Some(tx),
                handle: Some(handle),
            });
        }
        let stopped = || DataflowError::Internal("a worker thread of this view stopped".into());
        let (back, rx) = mpsc::channel();
        let jobs = self.threads[k].jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(Job { op, ports, back }).map_err(|_| stopped())?;
        Ok(rx)
    }
}

impl Drop for WorkerThreads {
    fn drop(&mut self) {
        for t in &mut self.threads {
            // Closing the channel ends the thread's loop.
            t.jobs = None;
        }
        for t in &mut self.threads {
            if let Some(h) = t.handle.take() {
                let _ = h.join();
            }
        }
    }
}
