//! From slots to rows (feature `embed`): recipe texts → encoder → combined rows → patched file with
//! provenance.

use super::encoder::{l2_normalize, TextEncoder};
use super::output::EmbedOutput;
use super::patch::{assemble, check_dim, SlotRows};
use super::recipe::{Combine, Recipe};
use super::EmbedError;
use crate::error::Result;
use crate::tensors::{EmbeddingFile, Provenance};
use crate::vocab::{Slot, Vocabulary};
use indicatif::ProgressBar;

/// Texts of `slots` under `recipe`, flattened, with each slot's text count.
pub fn recipe_texts(
    vocab: &Vocabulary,
    recipe: &Recipe,
    slots: &[Slot],
) -> Result<(Vec<String>, Vec<usize>)> {
    let mut texts = Vec::new();
    let mut counts = Vec::with_capacity(slots.len());
    for &s in slots {
        let t = recipe.texts(s, &vocab.tags[s])?;
        counts.push(t.len());
        texts.extend(t);
    }
    Ok((texts, counts))
}

/// Embeds `slots` of `vocab` with `recipe`: `rows_per_slot` rows per slot.
pub fn embed_slots(
    encoder: &mut TextEncoder,
    vocab: &Vocabulary,
    recipe: &Recipe,
    slots: &[Slot],
    progress: &ProgressBar,
) -> Result<SlotRows> {
    let (texts, counts) = recipe_texts(vocab, recipe, slots)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (vectors, dim) = encoder.encode(&refs, progress)?;
    let rps = recipe.rows_per_slot();
    let mut values = Vec::with_capacity(slots.len() * rps * dim);
    let mut at = 0;
    for n in counts {
        let block = &vectors[at * dim..(at + n) * dim];
        match recipe.combine() {
            Combine::Rows => values.extend_from_slice(block),
            Combine::Average => {
                let mut mean = vec![0.0f32; dim];
                for v in block.chunks(dim) {
                    let mut unit = v.to_vec();
                    l2_normalize(&mut unit);
                    mean.iter_mut()
                        .zip(&unit)
                        .for_each(|(m, u)| *m += u / n as f32);
                }
                l2_normalize(&mut mean);
                values.extend(mean);
            }
        }
        at += n;
    }
    Ok(SlotRows {
        slots: slots.to_vec(),
        values,
        rows_per_slot: rps,
        dim,
    })
}

/// What to embed and where the other rows come from.
pub struct EmbedRequest<'a> {
    pub vocab: &'a Vocabulary,
    pub recipe: &'a Recipe,
    /// Slots whose rows are computed (every slot when there is no base).
    pub regenerate: Vec<Slot>,
    /// Slots with an original row, re-embedded into the `control` tensor.
    pub control: Vec<Slot>,
    /// The base file (already checked with [`super::patch::check_base`]) and its sha256.
    pub base: Option<(&'a EmbeddingFile, String)>,
}

/// Runs the request: embeds regenerated and control slots in one pass, patches, fills provenance.
pub fn run(
    encoder: &mut TextEncoder,
    req: &EmbedRequest<'_>,
    progress: &ProgressBar,
) -> Result<EmbedOutput> {
    let model = encoder.descriptor.display_name();
    if let (Some((base, _)), Some(dim)) = (&req.base, encoder.dim) {
        check_dim(base, dim, &model)?;
    }
    if req.base.is_none() && req.regenerate.len() != req.vocab.len() {
        return Err(EmbedError::FullFileNeedsAll.into());
    }
    let all: Vec<Slot> = req.regenerate.iter().chain(&req.control).copied().collect();
    let rows = embed_slots(encoder, req.vocab, req.recipe, &all, progress)?;
    if let Some((base, _)) = &req.base {
        check_dim(base, rows.dim, &model)?;
    }
    let per_slot = rows.rows_per_slot * rows.dim;
    let split = req.regenerate.len() * per_slot;
    let regenerated = SlotRows {
        slots: req.regenerate.clone(),
        values: rows.values[..split].to_vec(),
        ..rows.clone()
    };
    let control = (!req.control.is_empty()).then(|| SlotRows {
        slots: req.control.clone(),
        values: rows.values[split..].to_vec(),
        ..rows.clone()
    });
    let embeddings = assemble(
        req.base.as_ref().map(|(b, _)| *b),
        req.vocab.len(),
        &regenerated,
    )?;
    let provenance = Provenance {
        vocabulary_sha256: req.vocab.sha256.clone(),
        tag_count: req.vocab.len(),
        rows_per_slot: rows.rows_per_slot,
        model,
        model_sha256: encoder.model_sha256.clone(),
        tokenizer: encoder.tokenizer_description(),
        recipe: req.recipe.name(),
        pooling: encoder.descriptor.pooling_description(),
        regenerated_slots: req.regenerate.clone(),
        base: req.base.as_ref().map(|(b, _)| b.path.display().to_string()),
        base_sha256: req.base.as_ref().map(|(_, sha)| sha.clone()),
        control_slots: req.control.clone(),
        generator: format!("tagfix {}", env!("CARGO_PKG_VERSION")),
    };
    Ok(EmbedOutput {
        embeddings,
        control,
        provenance,
    })
}
