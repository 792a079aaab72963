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
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::ParallelizationContract;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::channels::Message;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
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

    /// Both streams as one, through counted channels (timely's `concat` uses uncounted ones,
    /// where a record could wait unseen while a checkpoint is taken).
    pub fn concat<'scope, D: Clone + 'static>(
        &self,
        a: StreamVec<'scope, u64, D>,
        b: StreamVec<'scope, u64, D>,
    ) -> StreamVec<'scope, u64, D> {
        a.binary::<Vec<D>, CapacityContainerBuilder<Vec<D>>, _, _, _, _>(
            b,
            self.counted(Pipeline),
            self.counted(Pipeline),
            "Concat",
            |_, _| {
                |a, b, output| {
                    a.for_each(|cap, data| output.session(&cap).give_container(data));
                    b.for_each(|cap, data| output.session(&cap).give_container(data));
                }
            },
        )
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

/// Drives one operator by hand through a checkpoint, for the operators' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use timely::dataflow::operators::{Inspect, Probe};
    use timely::dataflow::{InputHandleVec, ProbeHandle, StreamVec};

    /// Builds the operator under test on the input stream, registering its state.
    pub(crate) type Build<D, R> = Arc<
        dyn for<'s> Fn(StreamVec<'s, u64, D>, &OperatorStates) -> StreamVec<'s, u64, R>
            + Send
            + Sync,
    >;

    /// `f` as a [`Build`] (a function, so the closure's lifetimes are inferred).
    pub(crate) fn build<D, R, F>(f: F) -> Build<D, R>
    where
        F: for<'s> Fn(StreamVec<'s, u64, D>, &OperatorStates) -> StreamVec<'s, u64, R>
            + Send
            + Sync
            + 'static,
    {
        Arc::new(f)
    }

    /// What the test does to the input.
    #[derive(Clone, Debug)]
    pub(crate) enum Step<D> {
        /// Sends records at the input's current time.
        Send(Vec<D>),
        /// Advances the input to this time, and steps until the output has caught up.
        Advance(u64),
    }

    /// One run on a fresh worker: the operator's state restored from `restored` (if any), the
    /// input advanced to `start`, then `steps`; at the end the input is closed if `close`.
    /// Returns what came out and the states taken at the end (before closing).
    pub(crate) fn run<D, R>(
        build: Build<D, R>,
        restored: Option<HashMap<String, Vec<u8>>>,
        start: u64,
        steps: Vec<Step<D>>,
        close: bool,
    ) -> (Vec<R>, Vec<(String, Vec<u8>)>)
    where
        D: Clone + Send + Sync + 'static,
        R: Clone + Send + 'static,
    {
        timely::execute_directly(move |worker| {
            let in_flight = Arc::new(AtomicI64::new(0));
            let states = match restored {
                Some(taken) => OperatorStates::restored(in_flight, taken),
                None => OperatorStates::new(in_flight),
            };
            let seen = Rc::new(RefCell::new(Vec::new()));
            let sink = seen.clone();
            let mut input = InputHandleVec::<u64, D>::new();
            let probe = ProbeHandle::new();
            worker.dataflow::<u64, _, _>(|scope| {
                build(input.to_stream(scope), &states)
                    .inspect(move |r| sink.borrow_mut().push(r.clone()))
                    .probe_with(&probe);
            });
            assert_eq!(states.finish_restore(), Ok(()));
            input.advance_to(start);
            for step in steps {
                match step {
                    Step::Send(records) => records.into_iter().for_each(|r| input.send(r)),
                    Step::Advance(t) => {
                        input.advance_to(t);
                        while probe.less_than(input.time()) {
                            worker.step();
                        }
                    }
                }
            }
            // A checkpoint is taken when the dataflow is quiet: what was sent since the last
            // advance has reached the operator.
            input.flush();
            while states.in_flight() > 0 {
                worker.step();
            }
            let taken = states.take().expect("states encode");
            if close {
                input.close();
                while !probe.done() {
                    worker.step();
                }
            }
            let out = seen.borrow().clone();
            (out, taken)
        })
    }

    /// The time the input was last advanced to in `steps`.
    fn reached<D>(steps: &[Step<D>]) -> u64 {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Advance(t) => Some(*t),
                Step::Send(_) => None,
            })
            .next_back()
            .unwrap_or(0)
    }

    /// Records in a fixed order (what one activation emits may follow a hash map's order,
    /// which differs between runs).
    fn canonical<R: std::fmt::Debug>(records: &[R]) -> Vec<String> {
        let mut all: Vec<String> = records.iter().map(|r| format!("{r:?}")).collect();
        all.sort();
        all
    }

    /// Runs `first` then `second` through the operator, once without a break, once with a
    /// checkpoint between them (the state taken after `first`, restored into a new worker
    /// that goes on with `second`), and checks that both give the same output (the same
    /// records, whatever their order). Checks too that the cut matters: without the restored
    /// state, `second` alone gives another output. Both runs close their input at the end.
    /// Returns the uninterrupted run's output.
    pub(crate) fn same_across_a_checkpoint<D, R>(
        build: Build<D, R>,
        first: Vec<Step<D>>,
        second: Vec<Step<D>>,
    ) -> Vec<R>
    where
        D: Clone + Send + Sync + 'static,
        R: Clone + Send + PartialEq + std::fmt::Debug + 'static,
    {
        let at = reached(&first);
        let whole: Vec<Step<D>> = first.iter().chain(&second).cloned().collect();
        let (uninterrupted, _) = run(build.clone(), None, 0, whole, true);
        let (mut resumed, taken) = run(build.clone(), None, 0, first, false);
        let restored = taken.into_iter().collect();
        let (after, _) = run(build.clone(), Some(restored), at, second.clone(), true);
        let (lost, _) = run(build, None, at, second, true);
        resumed.extend(after.clone());
        assert_eq!(
            canonical(&resumed),
            canonical(&uninterrupted),
            "the output across a checkpoint differs from the uninterrupted run's"
        );
        assert_ne!(
            canonical(&after),
            canonical(&lost),
            "no state was open at the cut: the test proves nothing"
        );
        uninterrupted
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
