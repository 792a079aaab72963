//! `keep`: a counted filter, which splits `ScoreQuality`'s assessments into readings (for
//! `NeighbourCheck`) and silences (for `FeedSilence`).

use crate::state::OperatorStates;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// The records of `stream` for which `predicate` holds (timely's `filter`, through a counted
/// channel).
pub(crate) fn keep<'scope, D: Clone + 'static>(
    stream: StreamVec<'scope, u64, D>,
    states: &OperatorStates,
    name: &str,
    predicate: impl Fn(&D) -> bool + 'static,
) -> StreamVec<'scope, u64, D> {
    stream.unary(states.counted(Pipeline), name, move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                data.retain(&predicate);
                if !data.is_empty() {
                    output.session(&cap).give_container(data);
                }
            });
        }
    })
}
