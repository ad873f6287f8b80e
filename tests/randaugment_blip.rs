//! RandomAugment's four operations from BLIP's full list (Solarize, Color, Contrast, Posterize)
//! against BLIP's NumPy code (`scripts/blip_randaugment_reference.py`, run by the Python with NumPy
//! that scripts/setup.sh installs into .venv-fixtures): every value of a random 640×480 image at
//! every magnitude 0–10, each operation's argument drawn by `RandomAugment::draw` as training draws it.
#![cfg(feature = "train")]

mod common;

use rand::{Rng, SeedableRng};
use std::path::Path;
use tagfix::train::config::{AugOp, RandomAugmentConfig};
use tagfix::train::data::randaugment::{apply_op, RandomAugment};

#[test]
fn blip_operations_equal_blips_numpy_code() {
    let test = "blip_operations_equal_blips_numpy_code";
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".venv-fixtures/bin/python");
    let has_numpy = std::process::Command::new(&py)
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_numpy {
        common::skip::<()>(
            test,
            format_args!("{} cannot import numpy: run scripts/setup.sh", py.display()),
        );
        return;
    }
    let (w, h) = (640u32, 480u32);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let img = image::RgbImage::from_fn(w, h, |_, _| image::Rgb(rng.gen::<[u8; 3]>()));
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("image.rgb");
    std::fs::write(&input, img.as_raw()).unwrap();
    let out = tmp.path().join("blip");
    let o = std::process::Command::new(&py)
        .arg(root.join("scripts/blip_randaugment_reference.py"))
        .arg(&input)
        .args([w.to_string(), h.to_string()])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for m in 0..=10 {
        for (name, op) in [
            ("solarize", AugOp::Solarize),
            ("color", AugOp::Color),
            ("contrast", AugOp::Contrast),
            ("posterize", AugOp::Posterize),
        ] {
            // The argument as training draws it: this operation alone, always applied.
            let only = RandomAugment::from_config(&RandomAugmentConfig {
                enabled: true,
                ops: 1,
                magnitude: f64::from(m),
                prob: 1.0,
                augs: vec![op],
            })
            .unwrap();
            let drawn = only.draw(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
            assert_eq!(drawn.len(), 1);
            let want = std::fs::read(out.join(format!("{name}{m}.rgb"))).unwrap();
            let mut got = img.clone();
            apply_op(&mut got, op, drawn[0].1);
            let differ = got
                .as_raw()
                .iter()
                .zip(&want)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differ, 0, "{name} at magnitude {m}: {differ} values differ");
        }
    }
}
