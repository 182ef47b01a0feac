//! How records cross to the worker that owns their impression ([`route`]): a container
//! whose records all go to one worker crosses whole.
//!
//! # Why not timely's `Exchange` pact
//!
//! `Exchange` moves every record out of the container it is given and into a container per
//! worker, whether or not they all go to the same one: for the label join's 280-byte
//! records (their hashed features inline; 344 bytes when this was measured), two copies of
//! each record that crosses, 3.4% of a 2-worker replay's CPU. The sender already knows
//! where its records go (it keeps the ones it owns,
//! [`LearnOnline::learn_online_routed`](super::LearnOnline)), so it can send containers
//! bound for one worker each; [`Routed`] checks that they are (one hash per record, no copy)
//! and passes such a container on as it is. A mixed container is split as `Exchange` splits
//! it, so the pact is correct for any sender.

use timely::communication::Push;
use timely::container::{CapacityContainerBuilder, ContainerBuilder, PushInto};
use timely::dataflow::channels::pact::DistributorPact;
use timely::dataflow::channels::pushers::exchange::Distributor;
use timely::dataflow::channels::{Message, Stamp};

use super::learn_online::route;
use crate::record::Interaction;

/// The pact of the label join's exchanged input: each record to worker
/// `route(id) % peers`, whole containers where they allow it.
pub type RoutedPact = DistributorPact<fn(usize) -> Routed>;

/// The label join's exchange pact.
pub fn routed() -> RoutedPact {
    DistributorPact(Routed::new)
}

/// Distributes containers of [`Interaction`]s by [`route`] (see the module docs).
pub struct Routed {
    /// Per worker, records of mixed containers on their way there.
    builders: Vec<CapacityContainerBuilder<Vec<Interaction>>>,
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("peers", &self.builders.len())
            .finish()
    }
}

impl Routed {
    /// A distributor for `peers` workers.
    pub fn new(peers: usize) -> Self {
        Self {
            builders: std::iter::repeat_with(Default::default)
                .take(peers)
                .collect(),
        }
    }

    /// The worker every record of `records` goes to, if they all go to one.
    fn single_target(records: &[Interaction], peers: u64) -> Option<usize> {
        let (first, rest) = records.split_first()?;
        let target = route(&first.id) % peers;
        rest.iter()
            .all(|x| route(&x.id) % peers == target)
            .then_some(target as usize)
    }
}

impl Distributor<Vec<Interaction>> for Routed {
    fn partition<T: Clone, P: Push<Message<T, Vec<Interaction>>>>(
        &mut self,
        container: &mut Vec<Interaction>,
        stamp: &Stamp<T>,
        pushers: &mut [P],
    ) {
        let peers = pushers.len() as u64;
        if let Some(target) = Self::single_target(container, peers) {
            // What is already on its way there goes first, so each worker receives the
            // records in the order they were sent.
            while let Some(pending) = self.builders[target].finish() {
                Message::push_at(pending, stamp.clone(), &mut pushers[target]);
            }
            Message::push_at(container, stamp.clone(), &mut pushers[target]);
            return;
        }
        for record in container.drain(..) {
            let target = (route(&record.id) % peers) as usize;
            self.builders[target].push_into(record);
            while let Some(full) = self.builders[target].extract() {
                Message::push_at(full, stamp.clone(), &mut pushers[target]);
            }
        }
    }

    fn flush<T: Clone, P: Push<Message<T, Vec<Interaction>>>>(
        &mut self,
        stamp: &Stamp<T>,
        pushers: &mut [P],
    ) {
        for (builder, pusher) in self.builders.iter_mut().zip(pushers.iter_mut()) {
            while let Some(container) = builder.finish() {
                Message::push_at(container, stamp.clone(), pusher);
            }
        }
    }

    fn relax(&mut self) {
        for builder in &mut self.builders {
            builder.relax();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::InteractionKind;

    /// A worker's end of the exchange: what it received, as the containers it received.
    #[derive(Default)]
    struct Received(Vec<Vec<Interaction>>);

    impl Push<Message<u64, Vec<Interaction>>> for Received {
        fn push(&mut self, message: &mut Option<Message<u64, Vec<Interaction>>>) {
            if let Some(message) = message.take() {
                self.0.push(message.data);
            }
        }
    }

    fn click(id: &str) -> Interaction {
        Interaction {
            ts: 1,
            pos: 0,
            id: id.into(),
            kind: InteractionKind::Click,
        }
    }

    /// Ids owned by `worker` of `peers`.
    fn owned_by(worker: u64, peers: u64, n: usize) -> Vec<String> {
        (0..)
            .map(|k| format!("imp-{k}"))
            .filter(|id| route(id) % peers == worker)
            .take(n)
            .collect()
    }

    #[test]
    fn a_container_bound_for_one_worker_crosses_whole_and_a_mixed_one_is_split() {
        let stamp = Stamp::from_elem(0u64);
        let mut pushers: Vec<Received> = (0..3).map(|_| Received::default()).collect();
        let mut routed = Routed::new(3);

        let ids = owned_by(2, 3, 5);
        let mut whole: Vec<Interaction> = ids.iter().map(|id| click(id)).collect();
        let allocation = whole.as_ptr();
        routed.partition(&mut whole, &stamp, &mut pushers);
        assert!(whole.is_empty());
        assert_eq!(pushers[2].0.len(), 1);
        assert_eq!(
            pushers[2].0[0].as_ptr(),
            allocation,
            "the same container, not copied"
        );

        let mut mixed: Vec<Interaction> = (0..30).map(|k| click(&format!("mixed-{k}"))).collect();
        routed.partition(&mut mixed, &stamp, &mut pushers);
        routed.flush(&stamp, &mut pushers);
        let mut total = 0;
        for (worker, received) in pushers.iter().enumerate() {
            for record in received.0.iter().flatten() {
                assert_eq!(route(&record.id) % 3, worker as u64, "{}", record.id);
                total += 1;
            }
        }
        assert_eq!(total, 35, "every record once");
        assert!(
            pushers.iter().all(|p| !p.0.is_empty()),
            "30 random ids reach all 3"
        );
    }
}
