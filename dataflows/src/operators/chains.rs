//! Ordering a vector made of sorted segments, as records arrive from several senders.
//!
//! An operator with several upstream workers receives their batches interleaved, each
//! sender's in that sender's own order. Their keys, batch after batch, are sorted segments
//! that fall into a few chains (one per sender, as a rule): merging the chains orders
//! them in one pass (a scan of the few chains' heads per key), where a sort of the whole
//! took 2.5% of a 2-worker replay's CPU samples (the merge: 1.8%).

use std::ops::Range;

/// Most chains [`Chains::merge`] merges; past that the caller sorts.
const MAX_CHAINS: usize = 8;

/// Scratch space of [`Chains::merge`], kept between calls for its capacity.
#[derive(Debug, Default)]
pub(crate) struct Chains<T> {
    chains: Vec<Chain<T>>,
    merged: Vec<T>,
}

/// Segments that follow one another in order, by their indices in the caller's list.
#[derive(Debug, Default)]
struct Chain<T> {
    segments: Vec<usize>,
    last: T,
}

/// A chain's place in the merge: its next key, at `order[at]`, in the segment ending at
/// `end`, the chain's `segment`-th.
#[derive(Clone, Copy, Debug, Default)]
struct Head<T> {
    key: T,
    at: usize,
    end: usize,
    segment: usize,
    chain: usize,
}

impl<T: Ord + Copy + Default> Chains<T> {
    /// Sorts `order`, the concatenation of `segments` (non-empty, in order, covering it),
    /// by merging: each segment joins the chain whose last key is the greatest below its
    /// first, or starts one. `false`, with `order` untouched, if a segment is not sorted or
    /// the segments make more than [`MAX_CHAINS`] chains. Keys must be distinct.
    pub(crate) fn merge(&mut self, order: &mut Vec<T>, segments: &[Range<usize>]) -> bool {
        let Self { chains, merged } = self;
        let mut used = 0;
        for (s, range) in segments.iter().enumerate() {
            let keys = &order[range.clone()];
            if !keys.is_sorted() {
                return false;
            }
            let first = keys[0];
            let extends = (chains[..used].iter_mut())
                .filter(|c| c.last < first)
                .max_by_key(|c| c.last);
            let chain = match extends {
                Some(chain) => chain,
                None if used == MAX_CHAINS => return false,
                None => {
                    if used == chains.len() {
                        chains.push(Chain::default());
                    }
                    used += 1;
                    let chain = &mut chains[used - 1];
                    chain.segments.clear();
                    chain
                }
            };
            chain.segments.push(s);
            chain.last = keys[keys.len() - 1];
        }
        let mut heads = [Head::default(); MAX_CHAINS];
        for (c, (head, chain)) in heads.iter_mut().zip(&chains[..used]).enumerate() {
            let range = &segments[chain.segments[0]];
            *head = Head {
                key: order[range.start],
                at: range.start,
                end: range.end,
                segment: 0,
                chain: c,
            };
        }
        let mut live = used;
        merged.clear();
        merged.reserve(order.len());
        while live > 0 {
            let mut best = 0;
            for k in 1..live {
                if heads[k].key < heads[best].key {
                    best = k;
                }
            }
            let head = &mut heads[best];
            merged.push(head.key);
            head.at += 1;
            if head.at == head.end {
                head.segment += 1;
                let Some(&s) = chains[head.chain].segments.get(head.segment) else {
                    live -= 1;
                    heads.swap(best, live);
                    continue;
                };
                (head.at, head.end) = (segments[s].start, segments[s].end);
            }
            head.key = order[head.at];
        }
        std::mem::swap(order, merged);
        true
    }
}
