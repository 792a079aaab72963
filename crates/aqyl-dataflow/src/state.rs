//! Operator state for checkpoints: how each stateful operator restores its state when the
//! dataflow is built and hands it over when a checkpoint is taken, and how the runtime knows
//! that no record is travelling between operators at that moment.
//!
//! A checkpoint is taken when the dataflow is *quiet*: every worker has stopped feeding input
//! and no record sits in any channel between operators. Every operator's channels are made
//! with [`OperatorStates::counted`], which counts the records pushed into them and pulled out
//! of them (one counter shared by every worker); at a moment when all workers are between
//! steps and the count is zero, the operators' states together hold everything the input has
//! brought, and nothing else. What an operator would still emit on its own when the frontier
//! moves (a window whose end the frontier has not reached yet) is part of its state; restored,
//! it is emitted when the frontier gets there.
//!
//! An operator's state is whatever it keeps between activations, minus its timely
//! capabilities: those it recreates when it is built, from the initial capability timely
//! hands it (at time 0, so any time can be derived from it).

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use timely::communication::{Pull, Push};
use timely::dataflow::channels::pact::ParallelizationContract;
use timely::dataflow::channels::Message;
use timely::logging::TimelyLogger;
use timely::worker::Worker;
use timely::Accountable;

/// Encodes a state (compact binary: `bincode` 1.3, whose format is fixed).
pub fn encode<S: Serialize>(state: &S) -> Result<Vec<u8>, String> {
    bincode::serialize(state).map_err(|e| e.to_string())
}

/// Decodes a state written by [`encode`].
pub fn decode<S: DeserializeOwned>(bytes: &[u8]) -> Result<S, String> {
    bincode::deserialize(bytes).map_err(|e| e.to_string())
}

type Taker = Box<dyn Fn() -> Result<Vec<u8>, String>>;

#[derive(Default)]
struct Inner {
    /// States restored from a checkpoint, by operator name, not yet claimed.
    restored: HashMap<String, Vec<u8>>,
    /// How to take each registered operator's state.
    takers: Vec<(String, Taker)>,
    /// First error met while restoring (reported by [`OperatorStates::finish_restore`]).
    error: Option<String>,
}

/// The stateful operators of one worker's dataflow. Cloning shares it.
#[derive(Clone, Default)]
pub struct OperatorStates {
    inner: Rc<RefCell<Inner>>,
    in_flight: Arc<AtomicI64>,
}

impl OperatorStates {
    /// Operator states of a fresh start; `in_flight` is shared by every worker.
    pub fn new(in_flight: Arc<AtomicI64>) -> Self {
        Self {
            inner: Rc::default(),
            in_flight,
        }
    }

    /// Operator states restored from a checkpoint (`states`: operator name → encoded state).
    pub fn restored(in_flight: Arc<AtomicI64>, states: HashMap<String, Vec<u8>>) -> Self {
        let this = Self::new(in_flight);
        this.inner.borrow_mut().restored = states;
        this
    }

    /// Registers the operator `name` (unique within the dataflow, stable across releases:
    /// checkpoints find states by it) and returns its state: the restored one, or the
    /// default. The returned cell is what the operator keeps and works on; a checkpoint
    /// encodes it as it is then.
    pub fn register<S>(&self, name: &str) -> Rc<RefCell<S>>
    where
        S: Serialize + DeserializeOwned + Default + 'static,
    {
        let mut inner = self.inner.borrow_mut();
        let state = match inner.restored.remove(name) {
            Some(bytes) => decode::<S>(&bytes).unwrap_or_else(|e| {
                inner.error.get_or_insert(format!(
                    "the checkpointed state of operator {name} cannot be read: {e}"
                ));
                S::default()
            }),
            None => S::default(),
        };
        let state = Rc::new(RefCell::new(state));
        let kept = state.clone();
        if inner.takers.iter().any(|(n, _)| n == name) {
            inner
                .error
                .get_or_insert(format!("two operators are named {name}"));
        }
        inner
            .takers
            .push((name.to_string(), Box::new(move || encode(&*kept.borrow()))));
        state
    }

    /// After the dataflow is built: an error if a restored state could not be read, or if a
    /// checkpoint holds state for an operator this dataflow does not have.
    pub fn finish_restore(&self) -> Result<(), String> {
        let mut inner = self.inner.borrow_mut();
        if let Some(e) = inner.error.take() {
            return Err(e);
        }
        let mut left: Vec<&String> = inner.restored.keys().collect();
        left.sort();
        match left.first() {
            Some(name) => Err(format!(
                "the checkpoint holds state of operator {name}, which this dataflow does not have"
            )),
            None => Ok(()),
        }
    }

    /// Every registered operator's state, encoded, in registration order.
    pub fn take(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let inner = self.inner.borrow();
        inner
            .takers
            .iter()
            .map(|(name, take)| Ok((name.clone(), take()?)))
            .collect()
    }

    /// Records pushed into counted channels and not yet pulled out, over all workers.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(SeqCst)
    }

    /// `pact`, with its records counted in [`OperatorStates::in_flight`]. Every operator
    /// input of the dataflow must use a counted pact, or checkpoints could miss records.
    pub fn counted<P>(&self, pact: P) -> Counted<P> {
        Counted {
            pact,
            in_flight: self.in_flight.clone(),
        }
    }
}

/// A parallelization contract whose channels count the records in them.
pub struct Counted<P> {
    pact: P,
    in_flight: Arc<AtomicI64>,
}

impl<T, C, P> ParallelizationContract<T, C> for Counted<P>
where
    T: 'static,
    C: Accountable + 'static,
    P: ParallelizationContract<T, C>,
{
    type Pusher = CountingPusher<P::Pusher>;
    type Puller = CountingPuller<P::Puller>;

    fn connect(
        self,
        worker: &Worker,
        identifier: usize,
        address: Rc<[usize]>,
        logging: Option<TimelyLogger>,
    ) -> (Self::Pusher, Self::Puller) {
        let (pusher, puller) = self.pact.connect(worker, identifier, address, logging);
        (
            CountingPusher {
                inner: pusher,
                in_flight: self.in_flight.clone(),
            },
            CountingPuller {
                inner: puller,
                in_flight: self.in_flight,
            },
        )
    }
}

/// Counts records into a channel.
pub struct CountingPusher<P> {
    inner: P,
    in_flight: Arc<AtomicI64>,
}

impl<T, C: Accountable, P: Push<Message<T, C>>> Push<Message<T, C>> for CountingPusher<P> {
    fn push(&mut self, element: &mut Option<Message<T, C>>) {
        if let Some(message) = element {
            let n = message.data.record_count();
            if n != 0 {
                self.in_flight.fetch_add(n, SeqCst);
            }
        }
        self.inner.push(element);
    }
}

/// Counts records out of a channel.
pub struct CountingPuller<P> {
    inner: P,
    in_flight: Arc<AtomicI64>,
}

impl<T, C: Accountable, P: Pull<Message<T, C>>> Pull<Message<T, C>> for CountingPuller<P> {
    fn pull(&mut self) -> &mut Option<Message<T, C>> {
        let pulled = self.inner.pull();
        if let Some(message) = pulled {
            let n = message.data.record_count();
            if n != 0 {
                self.in_flight.fetch_sub(n, SeqCst);
            }
        }
        pulled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Default, Debug, PartialEq)]
    struct Counter {
        n: u64,
        names: Vec<String>,
    }

    #[test]
    fn a_registered_state_is_taken_and_restored() {
        let flight = Arc::new(AtomicI64::new(0));
        let states = OperatorStates::new(flight.clone());
        let c = states.register::<Counter>("counter");
        c.borrow_mut().n = 7;
        c.borrow_mut().names.push("a".into());
        let taken: HashMap<_, _> = states.take().unwrap().into_iter().collect();
        let again = OperatorStates::restored(flight, taken);
        let c2 = again.register::<Counter>("counter");
        assert_eq!(c2.borrow().n, 7);
        assert_eq!(c2.borrow().names, vec!["a".to_string()]);
        assert!(again.finish_restore().is_ok());
    }

    #[test]
    fn state_of_an_unknown_operator_is_an_error() {
        let flight = Arc::new(AtomicI64::new(0));
        let mut map = HashMap::new();
        map.insert("gone".to_string(), encode(&1u64).unwrap());
        let states = OperatorStates::restored(flight, map);
        let err = states.finish_restore().unwrap_err();
        assert!(err.contains("gone"), "{err}");
    }

    #[test]
    fn unreadable_state_is_an_error_not_a_panic() {
        let flight = Arc::new(AtomicI64::new(0));
        let mut map = HashMap::new();
        map.insert("counter".to_string(), vec![0xff]);
        let states = OperatorStates::restored(flight, map);
        let _ = states.register::<Counter>("counter");
        assert!(states.finish_restore().is_err());
    }
}
