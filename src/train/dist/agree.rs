//! The check every rank runs before the first step: all ranks must train the same configuration
//! on the same vocabulary and label embeddings from the same checkpoint step.

use super::{DistError, ProcessGroup};

/// What must be equal on every rank before training starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// sha256 of the resolved training configuration.
    pub config_sha256: String,
    /// sha256 of the vocabulary (slot manifest).
    pub vocab_sha256: String,
    /// sha256 of the label-embedding file.
    pub label_embed_sha256: String,
    /// The checkpoint step training resumes from (0 for a fresh run).
    pub step: u64,
}

impl Fingerprint {
    /// The fields in a fixed order, for naming the first that differs.
    fn fields(&self) -> [(&'static str, String); 4] {
        [
            ("config_sha256", self.config_sha256.clone()),
            ("vocab_sha256", self.vocab_sha256.clone()),
            ("label_embed_sha256", self.label_embed_sha256.clone()),
            ("step", self.step.to_string()),
        ]
    }
}

impl ProcessGroup {
    /// Gathers every rank's fingerprint and fails, on every rank alike, naming the lowest rank
    /// that differs from rank 0 and the first field in which it does.
    pub fn check_agreement(&mut self, mine: &Fingerprint) -> Result<(), DistError> {
        let bytes = serde_json::to_vec(mine).map_err(DistError::EncodeFingerprint)?;
        let all = self.all_gather_bytes(&bytes)?;
        let prints = all
            .iter()
            .enumerate()
            .map(|(rank, b)| {
                serde_json::from_slice::<Fingerprint>(b)
                    .map_err(|source| DistError::UnreadableFingerprint { rank, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        first_disagreement(&prints).map_or(Ok(()), Err)
    }
}

/// The first rank (after 0) whose fingerprint differs from rank 0's, with the first such field.
fn first_disagreement(prints: &[Fingerprint]) -> Option<DistError> {
    let reference = prints.first()?.fields();
    prints.iter().enumerate().skip(1).find_map(|(rank, p)| {
        reference
            .iter()
            .zip(p.fields())
            .find(|((_, a), (_, b))| a != b)
            .map(|((field, expected), (_, value))| DistError::Disagreement {
                rank,
                field,
                value,
                expected: expected.clone(),
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(config: &str, step: u64) -> Fingerprint {
        Fingerprint {
            config_sha256: config.into(),
            vocab_sha256: "v".into(),
            label_embed_sha256: "e".into(),
            step,
        }
    }

    #[test]
    fn names_the_first_rank_and_field_that_differ() {
        assert!(first_disagreement(&[print("a", 3), print("a", 3)]).is_none());
        let e = first_disagreement(&[print("a", 3), print("a", 3), print("a", 4), print("b", 3)])
            .unwrap();
        assert!(
            matches!(&e, DistError::Disagreement { rank: 2, field: "step", value, expected }
                if value == "4" && expected == "3"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("rank 2 disagrees with rank 0 on step"),
            "{e}"
        );
    }
}
