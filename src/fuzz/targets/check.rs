//! The `check` and `provenance` targets: `tagfix check`'s whole path on a hostile candidate — the
//! embedding and `control` tensors, the provenance whose slot lists index into them (in safetensors
//! metadata, or in the `.provenance.json` beside an `.npy` file) — against a fixed baseline, through
//! layout, comparability, the kNN searches and the policy.

use super::written;
use crate::consistency::{run_check, CheckOptions, EmbeddingInput, Policy, SearchConfig};
use crate::tensors::{safetensors_io, Provenance, Tensor, TensorSet};
use crate::vocab::Vocabulary;
use std::path::Path;

/// Tags (and baseline rows): more than the largest k, so the searches run.
const TAGS: usize = 24;
const DIM: usize = 8;
const BASELINE_FILE: &str = "check_baseline.safetensors";
/// The `.npy` candidate the `provenance` target's sidecar (its input) sits beside.
const NPY_CANDIDATE: &str = "candidate.npy";

pub(super) fn target() -> super::Target {
    super::Target {
        name: "check",
        file: "candidate.safetensors",
        run: run_check_target,
        dict: CHECK_DICT,
        generate: None,
        seeds: check_seeds,
        shared_seeds: &[],
    }
}

pub(super) fn provenance_target() -> super::Target {
    super::Target {
        name: "provenance",
        file: "candidate.npy.provenance.json",
        run: run_provenance_target,
        dict: PROVENANCE_DICT,
        generate: None,
        seeds: provenance_seeds,
        shared_seeds: &[],
    }
}

#[rustfmt::skip]
const PROVENANCE_DICT: &[&[u8]] = &[
    b"\"data_sha256\"", b"\"control_slots\"", b"\"regenerated_slots\"", b"\"rows_per_slot\"",
    b"\"tag_count\"", b"\"vocabulary_sha256\"", b"\"base_sha256\"", b"null", b"[0,1,2]", b"[23]",
    b"24", b"2", b"0", b"18446744073709551615", b"-1", b"1e400", b"{", b"}", b"[", b"]", b",", b":",
    b"\"", b"\\u0000",
];

#[rustfmt::skip]
const CHECK_DICT: &[&[u8]] = &[
    b"{\"", b"\"dtype\"", b"\"F32\"", b"\"F16\"", b"\"shape\"", b"\"data_offsets\"", b"\"__metadata__\"",
    b"\"embeddings\"", b"[", b"]", b",", b"0", b"4294967296",
    b"\"control\"", b"\"tagfix.control_slots\"", b"\"tagfix.regenerated_slots\"",
    b"\"tagfix.rows_per_slot\"", b"\"tagfix.tag_count\"", b"\"tagfix.vocabulary_sha256\"",
    b"\"tagfix.base_sha256\"", b"\"[0,1,2]\"", b"\"[23]\"", b"\"24\"", b"\"2\"", b"\"0\"",
    b"\"18446744073709551615\"", b"[24,8]", b"[48,8]", b"[3,8]",
];

fn vocab() -> Vocabulary {
    Vocabulary::from_tags((0..TAGS).map(|i| format!("tag{i}")).collect())
}

/// Unit-length baseline rows in four loose clusters (deterministic, so seeds can name its hash).
fn baseline_rows() -> Vec<f32> {
    crate::consistency::synthetic::clustered(TAGS, DIM, 6, 0.3, 7)
}

fn write_embeddings(
    path: &Path,
    rows: &[f32],
    extra: Option<(&[f32], usize)>,
    prov: Option<&Provenance>,
) -> crate::Result<()> {
    let mut tensors = vec![(
        "embeddings".to_string(),
        Tensor::from_f32(vec![rows.len() / DIM, DIM], rows)?,
    )];
    if let Some((control, n)) = extra {
        tensors.push((
            "control".to_string(),
            Tensor::from_f32(vec![n, DIM], control)?,
        ));
    }
    let metadata = prov.map(Provenance::to_metadata).unwrap_or_default();
    safetensors_io::write(path, &TensorSet { tensors, metadata })
}

fn baseline(dir: &Path) -> std::path::PathBuf {
    let path = dir.join(BASELINE_FILE);
    if !path.exists() {
        let _ = write_embeddings(&path, &baseline_rows(), None, None);
    }
    path
}

fn options() -> CheckOptions {
    CheckOptions {
        mode: None,
        policy: Policy {
            k: 3,
            also_k: vec![2, 5],
            ..Policy::default()
        },
        slots: None,
        search: SearchConfig::default(),
    }
}

fn run_check_target(path: &Path, _: &[u8]) {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (Ok(base), Ok(candidate)) = (
        EmbeddingInput::load(&baseline(dir), None),
        EmbeddingInput::load(path, None),
    ) else {
        return;
    };
    let vocab = vocab();
    let _ = run_check(&base, &candidate, Some(&vocab), &options());
    let _ = run_check(&base, &candidate, None, &options());
}

/// The `provenance` target: the input is the sidecar of a fixed `.npy` candidate (the noisy rows),
/// which is loaded with it and checked.
fn run_provenance_target(path: &Path, _: &[u8]) {
    let dir = path.parent().unwrap_or(Path::new("."));
    let npy = dir.join(NPY_CANDIDATE);
    if !npy.exists() {
        let _ = write_npy_candidate(&npy);
    }
    let (Ok(base), Ok(candidate)) = (
        EmbeddingInput::load(&baseline(dir), None),
        EmbeddingInput::load(&npy, None),
    ) else {
        return;
    };
    let _ = run_check(&base, &candidate, Some(&vocab()), &options());
}

fn noisy_rows() -> Vec<f32> {
    let mut noisy = baseline_rows();
    crate::consistency::synthetic::add_noise(&mut noisy, 0.01, 3);
    noisy
}

fn write_npy_candidate(path: &Path) -> crate::Result<()> {
    crate::tensors::EmbeddingFile::new(noisy_rows(), TAGS, DIM).write(path)
}

/// A provenance naming the vocabulary, the baseline's hash, regenerated slots and `control`.
fn seed_provenance(control_slots: Vec<usize>) -> Provenance {
    let base = written(BASELINE_FILE, |p| {
        write_embeddings(p, &baseline_rows(), None, None)
    })
    .1;
    Provenance {
        vocabulary_sha256: vocab().sha256,
        tag_count: TAGS,
        rows_per_slot: 1,
        model: "fuzz".into(),
        recipe: "single".into(),
        regenerated_slots: vec![3, 17],
        control_slots,
        base: Some(BASELINE_FILE.into()),
        base_sha256: Some(crate::fsutil::sha256_hex(&base)),
        ..Default::default()
    }
}

/// The sidecar `embed` writes beside the `.npy` candidate (its hash binds the two).
fn provenance_seeds() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let npy = dir.path().join(NPY_CANDIDATE);
    write_npy_candidate(&npy).expect("writing a seed");
    crate::tensors::provenance::write_sidecar(&npy, &seed_provenance(vec![]))
        .expect("writing a seed");
    let sidecar = crate::tensors::provenance::provenance_sidecar(&npy);
    vec![(
        "sidecar.json".into(),
        std::fs::read(sidecar).expect("reading a seed"),
    )]
}

/// A drift candidate (noisy rows), and a patched file as `embed --control` writes it (regenerated
/// slots, control rows, provenance naming the vocabulary and the baseline's hash).
fn check_seeds() -> Vec<(String, Vec<u8>)> {
    let noisy = noisy_rows();
    let control_slots = vec![0, 1, 2, 5, 8, 13];
    let control: Vec<f32> = control_slots
        .iter()
        .flat_map(|&s| noisy[s * DIM..(s + 1) * DIM].to_vec())
        .collect();
    let prov = seed_provenance(control_slots.clone());
    vec![
        written("drift.safetensors", |p| {
            write_embeddings(p, &noisy, None, None)
        }),
        written("patched.safetensors", |p| {
            write_embeddings(
                p,
                &noisy,
                Some((&control, control_slots.len())),
                Some(&prov),
            )
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both seeds get through the whole check (a report, not an error), so mutations start deep.
    #[test]
    fn seeds_reach_a_report_in_both_modes() {
        let dir = tempfile::tempdir().unwrap();
        let base = EmbeddingInput::load(&baseline(dir.path()), None).unwrap();
        for (name, bytes) in check_seeds() {
            let p = dir.path().join(&name);
            std::fs::write(&p, bytes).unwrap();
            let candidate = EmbeddingInput::load(&p, None).unwrap();
            let report = run_check(&base, &candidate, Some(&vocab()), &options())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let want = if name == "patched.safetensors" {
                "consistency"
            } else {
                "drift"
            };
            assert_eq!(format!("{:?}", report.mode).to_lowercase(), want, "{name}");
        }
    }

    /// The sidecar seed is taken with its `.npy` file (the hash matches) and gets a report.
    #[test]
    fn the_sidecar_seed_binds_to_its_npy_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let base = EmbeddingInput::load(&baseline(dir.path()), None).unwrap();
        let npy = dir.path().join(NPY_CANDIDATE);
        write_npy_candidate(&npy).unwrap();
        let (_, sidecar) = provenance_seeds().remove(0);
        std::fs::write(
            crate::tensors::provenance::provenance_sidecar(&npy),
            sidecar,
        )
        .unwrap();
        let candidate = EmbeddingInput::load(&npy, None).unwrap();
        assert_eq!(
            candidate.provenance.as_ref().unwrap().regenerated_slots,
            [3, 17]
        );
        run_check(&base, &candidate, Some(&vocab()), &options()).unwrap();
    }
}
