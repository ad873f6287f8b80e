//! Drift: a candidate file against its baseline, row by row.

use super::metrics::{aggregate, find_moved, mean_shift, row_metrics, summarise};
use super::{gather, own_rows, Comparison, Ctx};
use crate::consistency::inputs::{validate_rows, EmbeddingInput};
use crate::consistency::kernels::normalised_rows;
use crate::consistency::knn::{Index, Rows};
use crate::consistency::report::*;
use crate::error::Result;
use crate::vocab::Slot;
use std::collections::BTreeSet;

pub(super) fn drift(
    ctx: &Ctx,
    baseline: &EmbeddingInput,
    candidate: &EmbeddingInput,
    selected: &[Slot],
) -> Result<Comparison> {
    let (b, c) = (&baseline.file, &candidate.file);
    let dim = b.dim;
    let none = BTreeSet::new();
    let slot_of = |r: usize| ctx.slot_of(r);
    validate_rows(b, ctx.rps(), &slot_of, &none, &ctx.names)?;
    validate_rows(c, ctx.rps(), &slot_of, &none, &ctx.names)?;
    let rows: Vec<usize> = selected
        .iter()
        .flat_map(|&s| ctx.layout.rows_of(s))
        .collect();
    let bu = normalised_rows(&b.values, dim);
    let cu = normalised_rows(&c.values, dim);
    let m = row_metrics(
        &gather(&b.values, dim, &rows),
        &gather(&c.values, dim, &rows),
        dim,
    );

    let excl: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    let base_index = Index::build(Rows::new(&bu, dim), &ctx.search);
    let cand_index = Index::build(Rows::new(&cu, dim), &ctx.search);
    let (qb, qb_excl) = own_rows(&bu, dim, &rows, &excl);
    let (qc, qc_excl) = own_rows(&cu, dim, &rows, &excl);
    let (nb_base, sb) = base_index.search(Rows::new(&qb, dim), ctx.kmax(), qb_excl);
    let (nb_cand, sc) = cand_index.search(Rows::new(&qc, dim), ctx.kmax(), qc_excl);
    let (moved, sm) = find_moved(&base_index, &qc, dim, &rows, &m.cosine);

    let (slots, disagreements) = aggregate(ctx, &rows, &m, &nb_base, &nb_cand, &moved);
    let mut summary = summarise(ctx, &slots, &m);
    summary.mean_shift = mean_shift(&cu, &bu, dim);
    let mut search = vec![
        NamedSearch {
            space: "baseline".into(),
            stats: sb,
        },
        NamedSearch {
            space: "candidate".into(),
            stats: sc,
        },
    ];
    search.extend(sm);
    Ok(Comparison {
        mode: Mode::Drift,
        ks: ctx.ks.clone(),
        search,
        summary,
        slots,
        regenerated: vec![],
        calibration: None,
        disagreements,
        changed_untouched_slots: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::compare::{run_check, CheckOptions};
    use crate::consistency::knn::SearchConfig;
    use crate::consistency::policy::Policy;
    use crate::consistency::synthetic::{add_noise, clustered, random_rotation, rotate};
    use crate::tensors::EmbeddingFile;

    const ROWS: usize = 600;
    const DIM: usize = 32;

    fn input(values: Vec<f32>, name: &str) -> EmbeddingInput {
        let mut file = EmbeddingFile::new(values, ROWS, DIM);
        file.path = name.into();
        EmbeddingInput {
            file,
            control: None,
            provenance: None,
            sha256: name.into(),
        }
    }

    fn drift_report(base: &[f32], cand: Vec<f32>) -> CheckReport {
        let opts = CheckOptions {
            mode: None,
            policy: Policy::default(),
            slots: None,
            search: SearchConfig::default(),
        };
        run_check(
            &input(base.to_vec(), "base"),
            &input(cand, "cand"),
            None,
            &opts,
        )
        .unwrap()
    }

    #[test]
    fn cosine_and_overlap_fall_monotonically_with_noise() {
        let base = clustered(ROWS, DIM, 12, 0.7, 1);
        let mut last = (1.01f64, 1.01f64);
        for (i, sigma) in [0.0f32, 0.005, 0.02, 0.05, 0.1, 0.3]
            .into_iter()
            .enumerate()
        {
            let mut cand = base.clone();
            add_noise(&mut cand, sigma, 9);
            let r = drift_report(&base, cand);
            let (cos, ov) = (r.summary.cosine.mean, r.summary.overlap[1].dist.mean);
            assert!(
                cos <= last.0 && ov <= last.1 + 1e-9,
                "σ={sigma}: {cos} {ov} after {last:?}"
            );
            if i == 0 {
                assert!(r.passed && cos == 1.0 && ov == 1.0);
            }
            last = (cos, ov);
        }
        assert!(last.0 < 0.9 && last.1 < 0.9, "{last:?}");
    }

    #[test]
    fn rotated_slots_fail_by_name_and_others_pass() {
        let base = clustered(ROWS, DIM, 12, 0.7, 2);
        let rot = random_rotation(DIM, 3);
        let mut cand = base.clone();
        let moved: Vec<Slot> = (0..ROWS).step_by(10).collect();
        for &s in &moved {
            let r = rotate(&base[s * DIM..(s + 1) * DIM], &rot);
            cand[s * DIM..(s + 1) * DIM].copy_from_slice(&r);
        }
        let r = drift_report(&base, cand);
        assert!(!r.passed);
        let rule = r.rules.iter().find(|x| x.id == "min_cosine").unwrap();
        assert_eq!(rule.failing_slots, moved);
        assert!(r
            .disagreements
            .iter()
            .take(10)
            .all(|d| moved.contains(&d.slot)));
    }

    #[test]
    fn lost_normalisation_fails_only_the_norm_rule() {
        let base = clustered(ROWS, DIM, 12, 0.7, 4);
        let cand: Vec<f32> = base.iter().map(|v| v * 3.0).collect();
        let r = drift_report(&base, cand);
        let failed: Vec<&str> = r
            .rules
            .iter()
            .filter(|x| !x.passed)
            .map(|x| x.id.as_str())
            .collect();
        assert_eq!(failed, vec!["max_norm_deviation"]);
    }
}
