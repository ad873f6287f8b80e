//! Generators that build inputs from a format's structure (the binary and structured formats).

use crate::rng::SplitMix64;

use super::seeds::{detector_keys, gzip, npy_header};

pub(super) fn pick_from<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

pub(super) const INTS: &[i64] = &[
    0,
    1,
    2,
    3,
    -1,
    -4,
    40,
    255,
    65536,
    1 << 31,
    1 << 32,
    1 << 62,
    i64::MAX,
    i64::MIN,
];

pub(super) fn int(rng: &mut SplitMix64) -> i64 {
    if rng.below(2) == 0 {
        *pick_from(rng, INTS)
    } else {
        rng.below(50) as i64
    }
}

/// A JSON value for a record field: mostly the right type, sometimes not.
pub(super) fn json_value(rng: &mut SplitMix64, depth: u32) -> String {
    match rng.below(if depth > 3 { 5 } else { 8 }) {
        0 => int(rng).to_string(),
        1 => pick_from(
            rng,
            &[
                "\"a.jpg\"",
                "\"\"",
                "\"\\u00e9\\ud800\"",
                "\"x\\\"y\"",
                "1.5",
                "-0",
                "1e400",
            ],
        )
        .to_string(),
        2 => pick_from(rng, &["null", "true", "false"]).to_string(),
        3 | 4 => format!(
            "[{}]",
            (0..rng.below(5))
                .map(|_| int(rng).to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        5 => format!(
            "[{}]",
            (0..rng.below(4))
                .map(|_| json_value(rng, depth + 1))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => format!("{{\"k\": {}}}", json_value(rng, depth + 1)),
    }
}

pub(super) fn json_record(rng: &mut SplitMix64) -> String {
    let fields = [
        "image_path",
        "union_label_id",
        "parse_label_id",
        "caption",
        "extra",
    ];
    let present: Vec<&str> = fields.into_iter().filter(|_| rng.below(6) != 0).collect();
    let parts: Vec<String> = present
        .iter()
        .map(|f| {
            let v = match (*f, rng.below(3)) {
                ("image_path", 0 | 1) => format!("\"img/{}.jpg\"", rng.below(8)),
                ("caption", 0) => "[\"a cat\", \"two\"]".to_string(),
                ("parse_label_id", 0) => format!("[[{}], []]", int(rng)),
                _ => json_value(rng, 0),
            };
            format!("\"{f}\": {v}")
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

pub(super) fn gen_annotations(rng: &mut SplitMix64) -> Vec<u8> {
    let records: Vec<String> = (0..rng.below(12)).map(|_| json_record(rng)).collect();
    let text = if rng.below(2) == 0 {
        format!("[\n{}\n]\n", records.join(",\n"))
    } else {
        records.join("\n") + "\n"
    };
    if rng.below(4) == 0 {
        gzip(text.as_bytes())
    } else {
        text.into_bytes()
    }
}

pub(super) fn gen_safetensors(rng: &mut SplitMix64) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut offset = 0i64;
    for k in 0..rng.below(5) {
        let dtype = pick_from(
            rng,
            &[
                "F32", "F16", "BF16", "F64", "I64", "BOOL", "U8", "F8_E4M3", "C64",
            ],
        );
        let shape: Vec<String> = (0..rng.below(4))
            .map(|_| (int(rng).rem_euclid(6)).to_string())
            .collect();
        let len = if rng.below(3) == 0 {
            int(rng)
        } else {
            rng.below(32) as i64
        };
        let end = offset.wrapping_add(len);
        let name = pick_from(rng, &["scores", "embeddings", "w", "w", "label_embed"]);
        // names repeat now and then (`w` twice, or no suffix)
        let suffix = if rng.below(3) == 0 {
            k.to_string()
        } else {
            String::new()
        };
        entries.push(format!("\"{name}{suffix}\": {{\"dtype\": \"{dtype}\", \"shape\": [{}], \"data_offsets\": [{offset}, {end}]}}", shape.join(", ")));
        offset = end;
    }
    if rng.below(2) == 0 {
        entries.push("\"__metadata__\": {\"image_ids\": \"[\\\"a\\\", \\\"b\\\"]\", \"tagfix.schema\": \"1\"}".into());
    }
    let header = format!("{{{}}}", entries.join(", "));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    let data = offset.clamp(0, 4096) as usize;
    out.extend((0..data).map(|_| rng.next_u64() as u8));
    out
}

pub(super) const POLICY_KEYS: &[&str] = &[
    "k",
    "also_k",
    "min_cosine",
    "min_knn_overlap",
    "min_slot_knn_overlap",
    "max_changed_rows",
    "max_mean_shift",
    "max_norm_deviation",
    "max_misaligned_slots",
    "min_trusted_share",
    "calibration_quantile",
    "min_search_recall",
];

/// Values of every type a config key might be given, as TOML and as YAML.
pub(super) const CONFIG_VALUES: &[(&str, &str)] = &[
    ("0", "0"),
    ("1", "1"),
    ("-1", "-1"),
    ("52", "52"),
    ("9223372036854775807", "9223372036854775807"),
    ("0.5", "0.5"),
    ("1e-4", "1e-4"),
    ("-0.0", "-0.0"),
    ("inf", ".inf"),
    ("nan", ".nan"),
    ("1e308", "1e308"),
    ("true", "True"),
    ("\"finetune\"", "finetune"),
    ("\"cosine\"", "'cosine'"),
    ("\"bf16\"", "bf16"),
    ("\"\"", "''"),
    ("[0.9, 0.999]", "[0.9, 0.999]"),
    ("[]", "[]"),
    ("[\"label_embed\"]", "['label_embed']"),
    ("[5, 0, 20]", "[5, 0, 20]"),
    ("{ enabled = true, ops = 2 }", "{enabled: true, ops: 2}"),
    ("{}", "{}"),
    ("1979-05-27", "1979-05-27"),
    ("\"1e-5\"", "'1e-5'"),
    ("\"18446744073709551616\"", "18446744073709551616"),
    // Durations (`checkpoint_every = "30m"`): ordinary, zero, and past what a Duration holds.
    ("\"1h 30m\"", "1h 30m"),
    ("\"0s\"", "0s"),
    (
        "\"18446744073709551615s 999999999ns\"",
        "'18446744073709551615s 999999999ns'",
    ),
    ("\"99999999999999999999y\"", "99999999999999999999y"),
];

/// A config file of random keys (mostly known ones) with values of random types.
pub(super) fn gen_config(rng: &mut SplitMix64, keys: &[&str], yaml: bool) -> Vec<u8> {
    let mut out = String::new();
    for _ in 0..rng.below(8) + 1 {
        let key = if rng.below(8) == 0 {
            "unknown_key"
        } else {
            pick_from(rng, keys)
        };
        let (toml, yml) = pick_from(rng, CONFIG_VALUES);
        if yaml {
            out += &format!("{key}: {yml}\n");
        } else {
            out += &format!("{key} = {toml}\n");
        }
    }
    out.into_bytes()
}

pub(super) fn gen_policy(rng: &mut SplitMix64) -> Vec<u8> {
    gen_config(rng, POLICY_KEYS, false)
}

pub(super) fn gen_train_toml(rng: &mut SplitMix64) -> Vec<u8> {
    // The top-level keys and the `[monitor]` table's detector keys (`monitor.spike.window`).
    let monitor: Vec<String> = detector_keys()
        .iter()
        .map(|k| format!("monitor.{k}"))
        .collect();
    let mut keys: Vec<&str> = crate::train::config::known_keys().into_iter().collect();
    keys.extend(monitor.iter().map(String::as_str));
    gen_config(rng, &keys, false)
}

pub(super) fn gen_detector_toml(rng: &mut SplitMix64) -> Vec<u8> {
    let keys = detector_keys();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    gen_config(rng, &keys, false)
}

pub(super) fn gen_ram_yaml(rng: &mut SplitMix64) -> Vec<u8> {
    gen_config(rng, &crate::train::config::known_keys(), true)
}

pub(super) fn gen_npy(rng: &mut SplitMix64) -> Vec<u8> {
    let descr = pick_from(
        rng,
        &[
            "<f4", "<f8", "<i8", ">f4", ">i8", "|u1", "<f2", "<i4", "|b1", "<U3",
        ],
    );
    let shape: Vec<String> = (0..rng.below(4)).map(|_| int(rng).to_string()).collect();
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.join(", ")),
    };
    let mut b = npy_header(descr, rng.below(2) == 0, &shape);
    let n = *pick_from(rng, &[0usize, 4, 8, 24, 48, 96]);
    b.extend((0..n).map(|_| rng.next_u64() as u8));
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::targets::pth;

    #[test]
    fn generators_are_deterministic() {
        for g in [
            pth::gen_pth,
            gen_npy,
            gen_safetensors,
            gen_annotations,
            gen_ram_yaml,
        ] {
            let a: Vec<_> = (0..20).map(|s| g(&mut SplitMix64(s))).collect();
            let b: Vec<_> = (0..20).map(|s| g(&mut SplitMix64(s))).collect();
            assert_eq!(a, b);
        }
    }
}
