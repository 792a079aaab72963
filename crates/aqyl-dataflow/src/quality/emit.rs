//! `EmitQuality`: hands quality records and incidents to the sinks.

use super::QualityOut;
use crate::state::OperatorStates;
use aqyl_core::quality::QualityRecord;
use aqyl_core::Event;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// Emits quality records (one batch per activation, waiting while the channel is full, so a
/// slow sink holds the workers back instead of filling memory) and incidents. Keeps nothing
/// between activations; its input is counted in `states`.
pub fn emit<'scope>(
    stream: StreamVec<'scope, u64, QualityOut>,
    records: tokio::sync::mpsc::Sender<Vec<QualityRecord>>,
    events: tokio::sync::mpsc::Sender<Event>,
    states: &OperatorStates,
    delivery: std::sync::Arc<aqyl_core::metrics::Metrics>,
) {
    use aqyl_core::metrics::Output;
    stream.sink(
        states.counted(Pipeline),
        "EmitQuality",
        move |(input, _)| {
            let mut batch = Vec::new();
            input.for_each(|_cap, data| {
                for q in data.drain(..) {
                    match q {
                        QualityOut::Record(r) => batch.push(r),
                        QualityOut::Event(e) => {
                            delivery.delivery.sent(Output::Events, 1);
                            if events.blocking_send(e).is_err() {
                                // Shutdown was forced; nothing can take it any more.
                                delivery.delivery.done(Output::Events, 1);
                            }
                        }
                    }
                }
            });
            if !batch.is_empty() {
                let n = batch.len() as u64;
                delivery.delivery.sent(Output::Quality, n);
                // Timely workers are plain threads, never a runtime's: blocking is allowed.
                if records.blocking_send(batch).is_err() {
                    delivery.delivery.done(Output::Quality, n);
                }
            }
        },
    );
}
