//! The online teacher's caption-embedding cache, bounded by a byte budget.
//!
//! A caption's embedding depends only on the caption, so it is worth keeping; but at training-set
//! size every caption kept (2 KB in each rank, ≈ 54 GB for 14M records of 1.9 captions) would not
//! fit. The cache keeps the first captions embedded until the budget is spent and embeds the others
//! each time they are drawn. Captions are drawn uniformly, so which ones stay barely matters: the
//! hit rate is the share kept, as it would be with an eviction policy, without one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;

/// Rows per block: blocks are allocated as the cache fills, so a large budget costs nothing until
/// it is used and no row is ever moved.
const BLOCK_ROWS: usize = 1024;

/// `row_of` value of a caption not kept.
const NOT_KEPT: u32 = u32::MAX;

/// Embeddings of `dim` values for captions `0..captions`, at most `max_rows` of them kept.
pub struct CaptionCache {
    dim: usize,
    max_rows: usize,
    /// Per caption: the row its embedding is kept in, or [`NOT_KEPT`]. Written once, under the
    /// write lock, after the row itself.
    row_of: Vec<AtomicU32>,
    rows: RwLock<Rows>,
}

#[derive(Default)]
struct Rows {
    blocks: Vec<Box<[f32]>>,
    used: usize,
}

impl CaptionCache {
    /// A cache for `captions` embeddings of `dim` values that keeps at most `budget_bytes` of them
    /// (all when they fit; 0 keeps none).
    pub fn new(captions: usize, dim: usize, budget_bytes: u64) -> Self {
        let row_bytes = (dim.max(1) * std::mem::size_of::<f32>()) as u64;
        let max_rows = (budget_bytes / row_bytes)
            .min(captions as u64)
            .min(u64::from(NOT_KEPT)) as usize;
        CaptionCache {
            dim,
            max_rows,
            row_of: if max_rows == 0 {
                Vec::new()
            } else {
                (0..captions).map(|_| AtomicU32::new(NOT_KEPT)).collect()
            },
            rows: RwLock::new(Rows::default()),
        }
    }

    /// How many embeddings the cache can keep.
    pub fn capacity(&self) -> usize {
        self.max_rows
    }

    /// How many embeddings it keeps now.
    pub fn kept(&self) -> usize {
        self.read().used
    }

    /// Appends caption `caption`'s embedding to `out` when kept; returns whether it was.
    pub fn get_into(&self, caption: usize, out: &mut Vec<f32>) -> bool {
        let row = match self.row_of.get(caption).map(|r| r.load(Ordering::Acquire)) {
            Some(row) if row != NOT_KEPT => row as usize,
            _ => return false,
        };
        let rows = self.read();
        let start = (row % BLOCK_ROWS) * self.dim;
        out.extend_from_slice(&rows.blocks[row / BLOCK_ROWS][start..start + self.dim]);
        true
    }

    /// Whether caption `caption`'s embedding is kept.
    pub fn contains(&self, caption: usize) -> bool {
        self.row_of
            .get(caption)
            .is_some_and(|r| r.load(Ordering::Acquire) != NOT_KEPT)
    }

    /// Keeps `embedding` for caption `caption` unless it is kept already or the budget is spent;
    /// returns whether it is kept now.
    pub fn insert(&self, caption: usize, embedding: &[f32]) -> bool {
        assert_eq!(embedding.len(), self.dim, "caption embedding width");
        let Some(slot) = self.row_of.get(caption) else {
            return false;
        };
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        if slot.load(Ordering::Acquire) != NOT_KEPT {
            return true;
        }
        if rows.used == self.max_rows {
            return false;
        }
        let row = rows.used;
        if row / BLOCK_ROWS == rows.blocks.len() {
            let block_rows = BLOCK_ROWS.min(self.max_rows - row);
            rows.blocks
                .push(vec![0f32; block_rows * self.dim].into_boxed_slice());
        }
        let start = (row % BLOCK_ROWS) * self.dim;
        rows.blocks[row / BLOCK_ROWS][start..start + self.dim].copy_from_slice(embedding);
        rows.used += 1;
        slot.store(row as u32, Ordering::Release);
        true
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Rows> {
        // A panic elsewhere while holding the lock leaves whole rows only (a row is published after
        // it is written), so the data stays usable.
        self.rows.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(caption: usize, dim: usize) -> Vec<f32> {
        (0..dim).map(|k| (caption * 10 + k) as f32).collect()
    }

    #[test]
    fn keeps_the_first_captions_up_to_the_budget() {
        let dim = 3;
        // 2 500 captions, room for 1 500 rows (12 bytes each): two blocks, the second partial.
        let cache = CaptionCache::new(2500, dim, 1500 * 12 + 11);
        assert_eq!(cache.capacity(), 1500);
        for c in (0..2500).rev() {
            let kept = cache.insert(c, &row(c, dim));
            assert_eq!(kept, c >= 1000, "caption {c}");
        }
        assert_eq!(cache.kept(), 1500);
        let mut out = Vec::new();
        assert!(!cache.get_into(999, &mut out) && out.is_empty());
        for c in [1000, 1023, 1024, 2048, 2499] {
            out.clear();
            assert!(cache.get_into(c, &mut out) && cache.contains(c));
            assert_eq!(out, row(c, dim), "caption {c}");
        }
        // Full: a caption kept already stays kept, a new one is refused.
        assert!(cache.insert(2499, &row(2499, dim)));
        assert!(!cache.insert(5, &row(5, dim)) && !cache.contains(5));
        // Out of range: never kept.
        assert!(!cache.insert(2500, &row(0, dim)) && !cache.get_into(2500, &mut out));
    }

    #[test]
    fn a_budget_above_the_captions_keeps_all_and_zero_keeps_none() {
        let cache = CaptionCache::new(4, 2, u64::MAX);
        assert_eq!(cache.capacity(), 4);
        for c in 0..4 {
            assert!(cache.insert(c, &row(c, 2)));
        }
        assert_eq!(cache.kept(), 4);
        let none = CaptionCache::new(4, 2, 7);
        assert_eq!(none.capacity(), 0);
        assert!(!none.insert(0, &row(0, 2)) && none.kept() == 0);
    }

    #[test]
    fn threads_inserting_the_same_captions_keep_each_once() {
        let cache = CaptionCache::new(3000, 4, u64::MAX);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for c in 0..3000 {
                        cache.insert(c, &row(c, 4));
                    }
                });
            }
        });
        assert_eq!(cache.kept(), 3000);
        let mut out = Vec::new();
        for c in 0..3000 {
            out.clear();
            assert!(cache.get_into(c, &mut out));
            assert_eq!(out, row(c, 4));
        }
    }
}
