//! Token-level prefix trees over the exact token sequences the model emits at retrieval time, so
//! constrained decoding can only produce real titles and real passages.
//!
//! Layout: a flat arena. Node `n`'s children are the contiguous nodes
//! `first_child .. first_child + n_children`, and `edge[c]` is the token leading into child `c`;
//! children are sorted by token, so the allowed next tokens of a node are a borrowed slice and a
//! step is a binary search. As soon as a prefix identifies a single item the node stores that
//! item and nothing is stored below it: the rest of the sequence is read from the item's own
//! tokens (auto-complete).

pub mod corpus_trie;

pub use corpus_trie::CorpusTrie;

/// Marks a node that does not identify a single item.
pub const NO_ITEM: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    first_child: u32,
    n_children: u32,
    /// The only item below this node (a leaf), or [`NO_ITEM`].
    item: u32,
}

/// A position in the trie: a node and the number of tokens consumed to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub node: u32,
    pub depth: u32,
}

/// A prefix tree over token sequences ("items"), with auto-complete at the uniqueness point.
#[derive(Debug, Clone, Default)]
pub struct TokenTrie {
    nodes: Vec<Node>,
    edge: Vec<u32>,
    tokens: Vec<u32>,
    offsets: Vec<u32>,
    /// Pairs (duplicate item, item it is identical to): they cannot be told apart by tokens.
    duplicates: Vec<(u32, u32)>,
}

impl TokenTrie {
    /// Builds the trie over `sequences` (item `i` is `sequences[i]`). Items that are a strict
    /// prefix of another item are reachable only as that prefix's node; callers end every
    /// sequence with a terminator (end-of-text or a separator) so this does not happen.
    pub fn build(sequences: &[Vec<u32>]) -> TokenTrie {
        let mut tokens = Vec::with_capacity(sequences.iter().map(|s| s.len()).sum());
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0u32);
        for s in sequences {
            tokens.extend_from_slice(s);
            offsets.push(tokens.len() as u32);
        }
        let mut order: Vec<u32> = (0..sequences.len() as u32).collect();
        order.sort_by(|&a, &b| sequences[a as usize].cmp(&sequences[b as usize]));

        let mut trie = TokenTrie {
            nodes: vec![Node {
                first_child: 0,
                n_children: 0,
                item: NO_ITEM,
            }],
            edge: vec![0],
            tokens,
            offsets,
            duplicates: Vec::new(),
        };
        if sequences.is_empty() {
            return trie;
        }
        // Breadth-first: (node, range of `order`, depth). Each node's children are allocated
        // together, which keeps them contiguous and sorted.
        let mut queue = std::collections::VecDeque::new();
        queue.push_back((0u32, 0usize, order.len(), 0usize));
        while let Some((node, lo, hi, depth)) = queue.pop_front() {
            if hi - lo == 1 {
                trie.nodes[node as usize].item = order[lo];
                continue;
            }
            // Items ending here sort first; identical items all end together.
            let mut start = lo;
            while start < hi && sequences[order[start] as usize].len() == depth {
                start += 1;
            }
            if start > lo {
                let first = order[lo];
                trie.nodes[node as usize].item = first;
                for &dup in &order[lo + 1..start] {
                    trie.duplicates.push((dup, first));
                }
                if start == hi {
                    continue;
                }
            }
            let first_child = trie.nodes.len() as u32;
            let mut i = start;
            while i < hi {
                let tok = sequences[order[i] as usize][depth];
                let mut j = i + 1;
                while j < hi && sequences[order[j] as usize][depth] == tok {
                    j += 1;
                }
                let child = trie.nodes.len() as u32;
                trie.nodes.push(Node {
                    first_child: 0,
                    n_children: 0,
                    item: NO_ITEM,
                });
                trie.edge.push(tok);
                queue.push_back((child, i, j, depth + 1));
                i = j;
            }
            let n = trie.nodes.len() as u32 - first_child;
            let nd = &mut trie.nodes[node as usize];
            nd.first_child = first_child;
            nd.n_children = n;
        }
        trie
    }

    /// The starting position.
    pub fn root(&self) -> Cursor {
        Cursor { node: 0, depth: 0 }
    }

    /// Number of items (sequences) the trie was built over.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// True when built over no sequences.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens allowed after this prefix, sorted ascending. Empty at a unique node (use
    /// [`TokenTrie::completion`]) and at the end of a sequence.
    pub fn allowed(&self, c: Cursor) -> &[u32] {
        let n = self.nodes[c.node as usize];
        let s = n.first_child as usize;
        &self.edge[s..s + n.n_children as usize]
    }

    /// The position after `token`, or `None` when no item continues with it.
    pub fn advance(&self, c: Cursor, token: u32) -> Option<Cursor> {
        let n = self.nodes[c.node as usize];
        if n.n_children == 0 {
            // Below the uniqueness point: follow the item's own tokens.
            if n.item == NO_ITEM {
                return None;
            }
            let seq = self.sequence(n.item);
            return (seq.get(c.depth as usize) == Some(&token)).then_some(Cursor {
                node: c.node,
                depth: c.depth + 1,
            });
        }
        let kids = self.allowed(c);
        kids.binary_search(&token).ok().map(|i| Cursor {
            node: n.first_child + i as u32,
            depth: c.depth + 1,
        })
    }

    /// The single item this prefix identifies, if it identifies exactly one.
    pub fn unique_item(&self, c: Cursor) -> Option<u32> {
        let n = self.nodes[c.node as usize];
        (n.n_children == 0 && n.item != NO_ITEM).then_some(n.item)
    }

    /// The rest of the sequence once the prefix is unique (empty if the item is complete).
    pub fn completion(&self, c: Cursor) -> &[u32] {
        match self.unique_item(c) {
            Some(item) => {
                let seq = self.sequence(item);
                &seq[(c.depth as usize).min(seq.len())..]
            }
            None => &[],
        }
    }

    /// The item whose full sequence ends exactly at this position.
    pub fn finished_item(&self, c: Cursor) -> Option<u32> {
        let n = self.nodes[c.node as usize];
        if n.item == NO_ITEM {
            return None;
        }
        (self.sequence(n.item).len() == c.depth as usize).then_some(n.item)
    }

    /// The token sequence of an item.
    pub fn sequence(&self, item: u32) -> &[u32] {
        let i = item as usize;
        &self.tokens[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The item whose sequence is exactly `seq`, if any.
    pub fn find(&self, seq: &[u32]) -> Option<u32> {
        let mut c = self.root();
        for &t in seq {
            c = self.advance(c, t)?;
        }
        self.finished_item(c)
    }

    /// Items identical to an earlier item (not distinguishable by generation).
    pub fn duplicates(&self) -> &[(u32, u32)] {
        &self.duplicates
    }

    /// Number of arena nodes (the branching structure, excluding auto-completed tails).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Total number of tokens over all items.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Bytes held: nodes, edges, the item tokens themselves and their offsets.
    pub fn bytes(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<Node>()
            + self.edge.len() * 4
            + self.tokens.len() * 4
            + self.offsets.len() * 4
            + self.duplicates.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn walk(trie: &TokenTrie, seq: &[u32]) -> Option<u32> {
        let mut c = trie.root();
        for (i, &t) in seq.iter().enumerate() {
            if let Some(item) = trie.unique_item(c) {
                return (trie.completion(c) == &seq[i..]).then_some(item);
            }
            c = trie.advance(c, t)?;
        }
        trie.finished_item(c)
    }

    #[test]
    fn small_example() {
        let seqs = vec![vec![1, 2, 3, 9], vec![1, 2, 4, 9], vec![5, 6, 9]];
        let t = TokenTrie::build(&seqs);
        assert_eq!(t.allowed(t.root()), &[1, 5]);
        let c = t.advance(t.root(), 5).unwrap();
        assert_eq!(t.unique_item(c), Some(2));
        assert_eq!(t.completion(c), &[6, 9]);
        let c = t.advance(t.root(), 1).unwrap();
        assert_eq!(t.unique_item(c), None);
        assert_eq!(t.allowed(c), &[2]);
        let c = t.advance(c, 2).unwrap();
        assert_eq!(t.allowed(c), &[3, 4]);
        assert!(t.advance(c, 7).is_none());
        assert_eq!(t.find(&[1, 2, 4, 9]), Some(1));
        assert_eq!(t.find(&[1, 2, 4]), None);
        // Only branching nodes and their first distinguishing children are stored.
        assert_eq!(t.node_count(), 6);
    }

    #[test]
    fn duplicates_are_reported() {
        let seqs = vec![vec![1, 2], vec![1, 2], vec![3]];
        let t = TokenTrie::build(&seqs);
        assert_eq!(t.duplicates(), &[(1, 0)]);
        assert_eq!(t.find(&[1, 2]), Some(0));
    }

    fn corpus() -> impl Strategy<Value = Vec<Vec<u32>>> {
        // Small alphabet so prefixes are shared; every sequence ends with terminator 0.
        prop::collection::vec(prop::collection::vec(1u32..6, 0..8), 1..40).prop_map(|v| {
            let mut v: Vec<Vec<u32>> = v
                .into_iter()
                .map(|mut s| {
                    s.push(0);
                    s
                })
                .collect();
            v.sort();
            v.dedup();
            v
        })
    }

    proptest! {
        #[test]
        fn every_item_is_reachable_by_its_tokens(seqs in corpus()) {
            let t = TokenTrie::build(&seqs);
            for (i, s) in seqs.iter().enumerate() {
                prop_assert_eq!(walk(&t, s), Some(i as u32));
                prop_assert_eq!(t.find(s), Some(i as u32));
            }
        }

        #[test]
        fn nothing_outside_the_corpus_is_reachable(seqs in corpus(),
                probe in prop::collection::vec(0u32..6, 1..9)) {
            let t = TokenTrie::build(&seqs);
            let inside = seqs.iter().position(|s| *s == probe);
            prop_assert_eq!(t.find(&probe), inside.map(|i| i as u32));
        }

        #[test]
        fn auto_complete_returns_the_right_item(seqs in corpus()) {
            let t = TokenTrie::build(&seqs);
            for (i, s) in seqs.iter().enumerate() {
                let mut c = t.root();
                let mut k = 0;
                while t.unique_item(c).is_none() {
                    prop_assert!(t.allowed(c).contains(&s[k]));
                    c = t.advance(c, s[k]).unwrap();
                    k += 1;
                }
                prop_assert_eq!(t.unique_item(c), Some(i as u32));
                let mut full = s[..k].to_vec();
                full.extend_from_slice(t.completion(c));
                prop_assert_eq!(&full, s);
            }
        }
    }
}
