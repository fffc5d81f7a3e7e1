//! The reading cache: each passage's keys and values under the query likelihood's prompt,
//! kept between queries. The prompt reads a passage before the question, so all of it but
//! the question is the same whatever is asked: read once, a passage is then scored for any
//! question by continuing its cache with the question's few tokens, a tenth of the work of
//! reading it again. Entries are kept in f16 (half the memory; the scores move by about 1e-4)
//! and the least recently used go first when the cache is full.

use crate::error::Result;
use crate::model::KvCache;
use candle_core::DType;
use std::collections::HashMap;
use std::sync::Mutex;

/// Memory the cache may hold by default: about 800 passages of SmolLM2-135M.
pub const DEFAULT_READING_CACHE_MB: usize = 4096;

/// Which model read a passage: the retriever's own weights or its base model (a LoRA run's
/// frozen weights), whose caches differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reader {
    Own,
    Base,
}

/// Passage caches by (passage index, reader), bounded in bytes.
#[derive(Debug)]
pub struct ReadingCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<(usize, Reader), Entry>,
    capacity: usize,
    bytes: usize,
    clock: u64,
    hits: usize,
    misses: usize,
}

#[derive(Debug)]
struct Entry {
    cache: KvCache,
    bytes: usize,
    used: u64,
}

/// What the cache holds and how often it served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadingStats {
    pub passages: usize,
    pub bytes: usize,
    pub hits: usize,
    pub misses: usize,
}

impl ReadingCache {
    /// A cache of at most `megabytes` (0: nothing is kept).
    pub fn new(megabytes: usize) -> Self {
        ReadingCache {
            inner: Mutex::new(Inner {
                capacity: megabytes.saturating_mul(1 << 20),
                ..Default::default()
            }),
        }
    }

    /// Changes the bound, dropping the least recently used entries past it.
    pub fn set_capacity_mb(&self, megabytes: usize) {
        let mut inner = self.lock();
        let capacity = megabytes.saturating_mul(1 << 20);
        inner.capacity = capacity;
        inner.evict_to(capacity);
    }

    /// A passage's cache (f16) if kept; counts a hit or a miss.
    pub fn get(&self, passage: usize, reader: Reader) -> Option<KvCache> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        match inner.entries.get_mut(&(passage, reader)) {
            Some(e) => {
                e.used = now;
                let cache = e.cache.clone();
                inner.hits += 1;
                Some(cache)
            }
            None => {
                inner.misses += 1;
                None
            }
        }
    }

    /// Keeps a passage's cache (stored as f16) if it fits the bound.
    pub fn insert(&self, passage: usize, reader: Reader, cache: &KvCache) -> Result<()> {
        let capacity = self.lock().capacity;
        if capacity == 0 {
            return Ok(());
        }
        let half = cache.to_dtype(DType::F16)?;
        let bytes = half.bytes();
        let mut inner = self.lock();
        if bytes > inner.capacity {
            return Ok(());
        }
        if let Some(old) = inner.entries.remove(&(passage, reader)) {
            inner.bytes -= old.bytes;
        }
        let room = inner.capacity - bytes;
        inner.evict_to(room);
        inner.clock += 1;
        let used = inner.clock;
        inner.bytes += bytes;
        inner.entries.insert(
            (passage, reader),
            Entry {
                cache: half,
                bytes,
                used,
            },
        );
        Ok(())
    }

    pub fn stats(&self) -> ReadingStats {
        let inner = self.lock();
        ReadingStats {
            passages: inner.entries.len(),
            bytes: inner.bytes,
            hits: inner.hits,
            misses: inner.misses,
        }
    }

    /// Forgets every passage (another model or corpus).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.bytes = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent entries: use them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Drops least recently used entries until at most `limit` bytes are held.
    fn evict_to(&mut self, limit: usize) {
        while self.bytes > limit {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A one-layer cache of `len` positions whose every value is `fill`.
    fn cache(len: usize, fill: f32) -> KvCache {
        let mut c = KvCache::new(1);
        let t = Tensor::full(fill, (1, 1, len, 4), &Device::Cpu).unwrap();
        c.append(0, t.clone(), t).unwrap();
        c
    }

    #[test]
    fn the_least_recently_used_passage_goes_first_and_the_bound_holds() {
        // Each entry: 2 tensors x 8 positions x 4 values x 2 bytes = 128 bytes.
        let c = ReadingCache::new(0);
        c.inner.lock().unwrap().capacity = 300;
        for p in 0..2 {
            c.insert(p, Reader::Own, &cache(8, p as f32)).unwrap();
        }
        assert!(c.get(0, Reader::Own).is_some());
        c.insert(2, Reader::Own, &cache(8, 2.0)).unwrap();
        // Passage 1 was used least recently: it made room.
        assert!(c.get(1, Reader::Own).is_none());
        assert!(c.get(0, Reader::Own).is_some());
        assert!(c.get(2, Reader::Base).is_none());
        let kept = c.get(2, Reader::Own).unwrap();
        assert_eq!(kept.seq_len(), 8);
        let s = c.stats();
        assert_eq!((s.passages, s.bytes), (2, 256));
        assert_eq!((s.hits, s.misses), (3, 2));
        c.set_capacity_mb(0);
        assert_eq!(c.stats().passages, 0);
        // A cache of no capacity keeps nothing.
        c.insert(3, Reader::Own, &cache(8, 1.0)).unwrap();
        assert_eq!(c.stats().bytes, 0);
    }
}
