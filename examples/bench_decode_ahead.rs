//! `tag` / `eval --checkpoint` scoring: each batch decoded and then scored (in turn), against the
//! next batch decoded while this one is scored (`prefetch::in_order`, one batch ahead), in one run on the same
//! images and model, the two paths alternating, `ROUNDS` times (medians); run by
//! `scripts/bench-decode-ahead.sh`. Also times decoding alone and scoring alone, whose larger is
//! what overlapping them can reach at best, and checks that both paths give the same scores.
//!
//!   bench_decode_ahead CHECKPOINT MODEL CLASSES IMAGE_DIR [BATCH] [ROUNDS] [DEVICE]
//!   (defaults: 8 5 cpu; DEVICE cpu or cuda)
//!   bench_decode_ahead generate DIR COUNT     (photo-like JPEGs where no photos are at hand)

use std::path::PathBuf;
use std::time::Instant;
use tagfix::imaging::files::collect_images;
use tagfix::train::infer::{decode_batch, load_model, InputTransform, LoadedModel};

#[path = "common/stats.rs"]
mod stats;
use stats::median;

#[path = "common/photos.rs"]
mod photos;

/// Every image's scores through `score_files_ahead` with `ahead`, and the seconds it took.
fn score_all(
    model: &LoadedModel,
    paths: &[PathBuf],
    batch: usize,
    ahead: usize,
) -> (Vec<f32>, f64) {
    let start = Instant::now();
    let mut rows = Vec::new();
    model
        .score_files_ahead(
            paths,
            |p| p.as_path(),
            batch,
            ahead,
            |_, scored| {
                for row in scored {
                    rows.extend(row?);
                }
                Ok::<_, tagfix::error::Error>(())
            },
        )
        .expect("scoring");
    (rows, start.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, dir, count] = &args[..] {
        assert_eq!(mode, "generate", "usage: generate DIR COUNT");
        for k in 0..count.parse::<usize>().expect("COUNT") {
            let (w, h) = photos::SIZES[k % photos::SIZES.len()];
            photos::write_jpeg(
                &PathBuf::from(dir).join(format!("{k:04}.jpg")),
                w,
                h,
                k as u32 + 1,
            );
        }
        return;
    }
    let [checkpoint, config, classes, dir] = [0, 1, 2, 3].map(|i| {
        args.get(i)
            .cloned()
            .expect("usage: CHECKPOINT MODEL CLASSES IMAGE_DIR [BATCH] [ROUNDS] [DEVICE]")
    });
    let batch: usize = args.get(4).map_or(8, |s| s.parse().expect("BATCH"));
    let rounds: usize = args.get(5).map_or(5, |s| s.parse().expect("ROUNDS"));
    let device = match args.get(6).map_or("cpu", String::as_str) {
        "cuda" => tch::Device::Cuda(0),
        _ => tch::Device::Cpu,
    };
    let classes: usize = classes.parse().expect("CLASSES");
    let model = load_model(
        checkpoint.as_ref(),
        Some(&config),
        Some(classes),
        None,
        device,
    )
    .expect("model");
    let paths: Vec<PathBuf> = collect_images(&[PathBuf::from(&dir)])
        .expect("images")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let n = paths.len() as f64;
    // Warm-up, and the check that both paths score alike.
    let (in_turn, _) = score_all(&model, &paths, batch, 0);
    let (ahead, _) = score_all(&model, &paths, batch, 1);
    assert!(in_turn == ahead, "the two paths' scores differ");

    let side = model.input_size();
    let (mut t_turn, mut t_ahead, mut t_decode, mut t_score) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        t_turn.push(score_all(&model, &paths, batch, 0).1);
        t_ahead.push(score_all(&model, &paths, batch, 1).1);
        let start = Instant::now();
        let decoded: Vec<_> = paths
            .chunks(batch)
            .map(|c| decode_batch(c, side, &InputTransform::OFFICIAL))
            .collect();
        t_decode.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        for d in decoded {
            model.score_decoded(d).expect("scoring");
        }
        t_score.push(start.elapsed().as_secs_f64());
    }
    let [turn, ahead, decode, score] = [t_turn, t_ahead, t_decode, t_score].map(median);
    println!(
        "model {config} ({side} px, {classes} classes), {} images, batch {batch}, {rounds} rounds, {device:?}, {} rayon threads",
        paths.len(),
        rayon::current_num_threads()
    );
    println!("| path | s (median) | images/s |");
    println!("|---|---:|---:|");
    for (name, s) in [
        ("decode alone", decode),
        ("score alone", score),
        ("in turn: decode, then score", turn),
        ("one batch ahead: the next decoded while scoring", ahead),
    ] {
        println!("| {name} | {s:.3} | {:.1} |", n / s);
    }
    println!(
        "ratio ahead / in turn, images/s: {:.2} (the ideal, sum / max of the two alone: {:.2})",
        turn / ahead,
        (decode + score) / decode.max(score)
    );
}
