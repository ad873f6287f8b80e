//! Tokenizers behind one interface: texts in, a right-padded id matrix with per-row lengths out. The
//! encoder gathers batches of rows from it and cuts them to the longest real sequence in the batch.

use super::clip_bpe::ClipBpe;
use crate::error::Result;

/// Token ids of a list of texts, right-padded with `pad_id` to a common `width`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenMatrix {
    /// `rows × width` ids.
    pub ids: Vec<i64>,
    /// `rows × width` token-type ids (zeros for tokenizers without segments).
    pub type_ids: Vec<i64>,
    /// Real (unpadded) length of each row.
    pub lengths: Vec<usize>,
    pub width: usize,
    pub pad_id: i64,
}

/// One batch ready for the model: ids, attention mask and type ids, `rows × width` each.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub type_ids: Vec<i64>,
    pub rows: usize,
    pub width: usize,
}

impl TokenMatrix {
    /// Pads unpadded sequences to the longest one.
    pub fn from_sequences(seqs: &[Vec<u32>], pad_id: i64) -> Self {
        let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![pad_id; seqs.len() * width];
        for (r, s) in seqs.iter().enumerate() {
            for (c, &t) in s.iter().enumerate() {
                ids[r * width + c] = i64::from(t);
            }
        }
        TokenMatrix {
            type_ids: vec![0; ids.len()],
            ids,
            lengths: seqs.iter().map(Vec::len).collect(),
            width,
            pad_id,
        }
    }

    /// Number of texts.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// The rows `rows`, each cut or padded to `width` columns (cutting never drops real tokens: the
    /// caller passes at least the longest real length), with the attention mask of the real tokens.
    pub fn gather(&self, rows: &[usize], width: usize) -> TokenBatch {
        let n = rows.len();
        let mut batch = TokenBatch {
            ids: vec![self.pad_id; n * width],
            attention_mask: vec![0; n * width],
            type_ids: vec![0; n * width],
            rows: n,
            width,
        };
        let copy = width.min(self.width);
        for (i, &r) in rows.iter().enumerate() {
            let src = r * self.width..r * self.width + copy;
            let dst = i * width..i * width + copy;
            batch.ids[dst.clone()].copy_from_slice(&self.ids[src.clone()]);
            batch.type_ids[dst].copy_from_slice(&self.type_ids[src]);
            let real = self.lengths[r].min(width);
            batch.attention_mask[i * width..i * width + real].fill(1);
        }
        batch
    }
}

/// A text tokenizer usable by the encoder: adds the model's special tokens and truncates to the
/// model's maximum length.
pub trait TextTokenizer: Send + Sync {
    /// Tokenizes `texts`.
    fn tokenize(&self, texts: &[&str]) -> Result<TokenMatrix>;
    /// What it is, for logs and provenance.
    fn describe(&self) -> String;
}

/// CLIP's BPE with a context length (77 for CLIP), padded with 0 like `clip.tokenize`.
pub struct ClipTokenizer {
    pub bpe: ClipBpe,
    pub context: usize,
}

impl TextTokenizer for ClipTokenizer {
    fn tokenize(&self, texts: &[&str]) -> Result<TokenMatrix> {
        use rayon::prelude::*;
        let seqs: Vec<Vec<u32>> = texts
            .par_iter()
            .map(|t| self.bpe.tokenize(t, self.context))
            .collect();
        Ok(TokenMatrix::from_sequences(&seqs, 0))
    }

    fn describe(&self) -> String {
        format!(
            "clip-bpe {} (context {})",
            self.bpe.path.display(),
            self.context
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_cuts_and_pads_with_mask() {
        let m = TokenMatrix::from_sequences(&[vec![5, 6, 7], vec![8]], 0);
        assert_eq!(m.width, 3);
        let b = m.gather(&[1, 0], 3);
        assert_eq!(b.ids, vec![8, 0, 0, 5, 6, 7]);
        assert_eq!(b.attention_mask, vec![1, 0, 0, 1, 1, 1]);
        let cut = m.gather(&[1], 1);
        assert_eq!((cut.ids, cut.attention_mask), (vec![8], vec![1]));
        let wide = m.gather(&[1], 5);
        assert_eq!(wide.ids, vec![8, 0, 0, 0, 0]);
        assert_eq!(wide.attention_mask, vec![1, 0, 0, 0, 0]);
    }
}
