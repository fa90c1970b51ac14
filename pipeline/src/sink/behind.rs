//! Write-behind: a worker's derived records are encoded and written on a thread of their own, so
//! the worker's thread spends its time in the dataflow (encoding was a sixth of a job's time).
//! The dataflow hands over whole batches; a channel of a few of them is the backpressure: a sink
//! that falls behind (a broker away, a full producer queue) stops the worker at its next batch,
//! which stops the source. The one retry layer for derived records is here.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use schemas::retry::{Delays, Retryable};

use super::{OutputSink, SinkError};
use crate::events;
use crate::output::Output;

/// Batches handed over and not yet written, at most.
const BEHIND: usize = 4;
/// Records gathered that are handed over at once rather than at the end of the activation.
/// Timely's own batches are a few dozen records, and a handover each would cost the two threads
/// more in waking each other than the writing they share, so the sink operator hands over what
/// one activation gathered ([`Behind::hand_over`]), or this many.
const BATCH: usize = 4_096;

enum Message {
    Write(Vec<Output>),
    Flush(SyncSender<Result<(), SinkError>>),
}

/// A worker's sink, written on a thread of its own.
pub struct Behind {
    to: Option<SyncSender<Message>>,
    /// Records gathered and not yet handed over.
    gathered: Vec<Output>,
    /// Batches the thread has written, to be filled again.
    spent: Receiver<Vec<Output>>,
    thread: Option<JoinHandle<()>>,
}

impl Behind {
    /// Starts writing to `sink` on a thread of its own.
    pub fn start(sink: Box<dyn OutputSink>) -> Result<Behind, SinkError> {
        let (to, from) = sync_channel(BEHIND);
        let (spent_to, spent) = sync_channel(BEHIND + 1);
        let thread = std::thread::Builder::new()
            .name("write-behind".into())
            .spawn(move || write(sink, &from, &spent_to))
            .map_err(SinkError::Thread)?;
        Ok(Behind {
            to: Some(to),
            gathered: Vec::with_capacity(BATCH),
            spent,
            thread: Some(thread),
        })
    }

    /// Takes `records` (leaving it empty) to be written; hands a batch over once one is full,
    /// waiting while the thread is [`BEHIND`] batches behind.
    pub fn write(&mut self, records: &mut Vec<Output>) -> Result<(), SinkError> {
        self.gathered.append(records);
        if self.gathered.len() < BATCH {
            return Ok(());
        }
        self.hand_over()
    }

    /// Hands what was gathered over to be written, waiting while the thread is [`BEHIND`]
    /// batches behind.
    pub fn hand_over(&mut self) -> Result<(), SinkError> {
        if self.gathered.is_empty() {
            return Ok(());
        }
        let next = self
            .spent
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let batch = std::mem::replace(&mut self.gathered, next);
        let to = self.to.as_ref().ok_or(SinkError::Gone)?;
        to.send(Message::Write(batch)).map_err(|_| SinkError::Gone)
    }

    /// Waits until everything written is written through and acknowledged.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.hand_over()?;
        let to = self.to.as_ref().ok_or(SinkError::Gone)?;
        let (reply, answer) = sync_channel(1);
        to.send(Message::Flush(reply))
            .map_err(|_| SinkError::Gone)?;
        answer.recv().map_err(|_| SinkError::Gone)?
    }
}

impl Drop for Behind {
    /// Writes what is left (the job flushes on its way out; this catches a way out that did not).
    fn drop(&mut self) {
        if let Err(e) = self.hand_over() {
            tracing::error!(error = %e, "derived records not written on the way out");
        }
        drop(self.to.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the write-behind thread panicked");
        }
    }
}

/// The thread: writes each record, retrying what [`Retryable`] allows with backoff; a record no
/// retry can write is counted and logged, and the rest go on.
fn write(mut sink: Box<dyn OutputSink>, from: &Receiver<Message>, spent: &SyncSender<Vec<Output>>) {
    while let Ok(message) = from.recv() {
        match message {
            Message::Write(mut records) => {
                for record in &records {
                    let mut delays: Option<Delays> = None;
                    while let Err(e) = sink.write(record) {
                        if !e.is_retryable() {
                            events::write_error();
                            tracing::error!(
                                error = %e,
                                event_id = record.event_id(),
                                "a derived record cannot be written"
                            );
                            break;
                        }
                        if !e.is_queue_full() {
                            tracing::warn!(error = %e, "cannot write a derived record; retrying");
                        }
                        let wait = delays.get_or_insert_with(|| e.backoff().delays());
                        std::thread::sleep(wait.next_wait());
                    }
                }
                records.clear();
                // A full return channel, or a worker gone, only costs an allocation.
                let _ = spent.try_send(records);
            }
            Message::Flush(reply) => {
                // The worker waits on the reply; it is gone only if the worker is.
                let _ = reply.send(sink.flush());
            }
        }
    }
    if let Err(e) = sink.flush() {
        tracing::error!(error = %e, "derived records not written on the way out");
    }
}

#[cfg(test)]
mod tests;
