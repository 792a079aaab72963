//! `Feed`: a worker's way into the dataflow that hands every batch on as soon as the worker
//! has taken it.
//!
//! timely's `InputHandle` passes its records through the exchange to other workers only when
//! its epoch changes (the exchange buffers per destination until the sender says it is done).
//! Our epoch is the watermark, so a reading that does not move it (one in the same
//! millisecond as the newest, or from a sensor a little behind) would wait for the next reading
//! that does: live, for ever if none comes. A feed gives each batch through an unordered
//! input's session instead, and closing the session flushes the exchange, so rules that judge
//! readings on arrival see them at once.

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::core::unordered_input::UnorderedHandle;
use timely::dataflow::operators::core::UnorderedInput;
use timely::dataflow::operators::ActivateCapability;
use timely::dataflow::{Scope, StreamVec};

/// A worker's input of records `D`, timestamped with the watermark.
pub struct Feed<D: Clone + 'static> {
    handle: UnorderedHandle<u64, CapacityContainerBuilder<Vec<D>>>,
    /// The capability to send at the current input time; `None` once closed.
    cap: Option<ActivateCapability<u64>>,
    batch: Vec<D>,
}

impl<D: Clone + 'static> Feed<D> {
    /// A feed and the stream it feeds, at input time 0.
    pub fn new<'scope>(scope: &Scope<'scope, u64>) -> (Self, StreamVec<'scope, u64, D>) {
        let ((handle, cap), stream) =
            scope.new_unordered_input::<CapacityContainerBuilder<Vec<D>>>();
        let feed = Self {
            handle,
            cap: Some(cap),
            batch: Vec::new(),
        };
        (feed, stream)
    }

    /// Adds a record to the current batch, at the current input time.
    pub fn send(&mut self, record: D) {
        self.batch.push(record);
    }

    /// The current input time (`u64::MAX` once closed).
    pub fn time(&self) -> u64 {
        self.cap.as_ref().map_or(u64::MAX, |c| *c.time())
    }

    /// Hands the current batch on to the dataflow, through the exchange.
    pub fn flush(&mut self) {
        let Some(cap) = &self.cap else { return };
        if self.batch.is_empty() {
            return;
        }
        let mut output = self.handle.activate();
        output.session(cap).give_container(&mut self.batch);
        self.batch.clear();
    }

    /// Flushes, then promises no more records before `time`.
    pub fn advance_to(&mut self, time: u64) {
        self.flush();
        if let Some(cap) = &mut self.cap {
            if time > *cap.time() {
                cap.downgrade(&time);
            }
        }
    }

    /// Flushes, then ends the input: the frontier downstream runs out.
    pub fn close(&mut self) {
        self.flush();
        self.cap = None;
    }
}
