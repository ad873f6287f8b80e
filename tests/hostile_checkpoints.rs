//! Hostile checkpoints through the real binary (`inspect`, `convert`, `check --baseline`): the
//! reproducers in `../shared/reliability/` and the recipes there (deep nesting, the legacy format,
//! many tensors), generated here. Each must end as exit 2 with a clear message and nothing written;
//! never a panic, an abort, a hang or a silently wrong tensor.

mod common;

use common::tagfix;
use std::io::Write;
use std::path::{Path, PathBuf};
use tagfix::tensors::{safetensors_io, DType, Tensor, TensorSet};

/// Runs `inspect` and `convert` on `file`: both must exit 2 with `want` (and the file's name) in the
/// message, and `convert` must leave no output behind.
fn assert_refused(file: &Path, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let runs: [Vec<&std::ffi::OsStr>; 2] = [
        vec!["inspect".as_ref(), file.as_os_str()],
        vec!["convert".as_ref(), file.as_os_str(), out.as_os_str()],
    ];
    for args in runs {
        let output = tagfix().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: expected exit 2, got {:?}\n{stderr}",
            output.status
        );
        assert!(
            stderr.contains(want) && stderr.contains(&name),
            "{args:?}: message lacks `{want}`:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "convert left {left:?}");
}

fn reliability_dir(test: &str) -> Option<PathBuf> {
    common::shared_dir_for_test(test).map(|d| d.join("reliability"))
}

#[test]
fn shared_reproducers_are_refused_clearly() {
    let Some(dir) = reliability_dir("shared_reproducers_are_refused_clearly") else {
        return;
    };
    for (file, want) in [
        (
            "panic_storage_offset_negative.pth",
            "tensor `w`: storage offset -4 is negative",
        ),
        (
            "panic_convert_dup_tensor_names.pth",
            "state-dict key `w` appears more than once",
        ),
        ("sigabrt_oom_billion_laughs_list.pth", "billion laughs"),
        (
            "silent_wrong_convert_storage_offset_2pow62.pth",
            "tensor `w`: view (offset 4611686018427387904",
        ),
        (
            "silent_wrong_convert_stride_2pow62.pth",
            "tensor `w`: view (offset 0, size [4, 3], stride [4611686018427387904, 1])",
        ),
    ] {
        assert_refused(&dir.join(file), want);
    }
}

#[test]
fn shared_reproducers_are_refused_by_check_baseline() {
    let Some(dir) = reliability_dir("shared_reproducers_are_refused_by_check_baseline") else {
        return;
    };
    for file in [
        "panic_storage_offset_negative.pth",
        "sigabrt_oom_billion_laughs_list.pth",
        "silent_wrong_convert_stride_2pow62.pth",
    ] {
        let f = dir.join(file);
        let output = tagfix()
            .args(["check", "--vocab", "ram", "--baseline"])
            .arg(&f)
            .arg("--candidate")
            .arg(&f)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains(file), "{file}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Files generated here.

/// Writes a torch.save-style zip: `archive/data.pkl` and `archive/data/<key>` for each storage.
fn write_pth(path: &Path, pickle: &[u8], storages: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    for (key, data) in storages {
        zip.start_file(format!("archive/data/{key}"), opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

/// Protocol-2 pickle pieces, as torch.save writes them.
mod pk {
    pub fn str(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
    }

    pub fn int(out: &mut Vec<u8>, v: i64) {
        out.push(0x8a);
        out.push(8);
        out.extend(v.to_le_bytes());
    }

    fn int_tuple(out: &mut Vec<u8>, xs: &[i64]) {
        out.push(b'(');
        xs.iter().for_each(|&x| int(out, x));
        out.push(b't');
    }

    /// `_rebuild_tensor_v2(storage key (f32, numel), offset, size, stride, False, OrderedDict())`.
    pub fn tensor(
        out: &mut Vec<u8>,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) {
        out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        out.push(b'(');
        str(out, "storage");
        out.extend(b"ctorch\nFloatStorage\n");
        str(out, key);
        str(out, "cpu");
        int(out, numel);
        out.extend(b"tQ");
        int(out, offset);
        int_tuple(out, size);
        int_tuple(out, stride);
        out.extend(b"\x89ccollections\nOrderedDict\n)RtR");
    }
}

/// `count` nested lists, dicts or tuples as a pickle body (no PROTO, no STOP).
fn nested(kind: &str, count: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match kind {
        "lists" => {
            p.extend(std::iter::repeat_n(b']', count));
            p.extend(std::iter::repeat_n(b'a', count - 1));
        }
        "dicts" => {
            p.push(b'}');
            for _ in 1..count {
                p.extend([b'K', 1, b'}']);
            }
            p.extend(std::iter::repeat_n(b's', count - 1));
        }
        "tuples" => {
            p.push(b')');
            p.extend(std::iter::repeat_n(0x85, count - 1));
        }
        _ => unreachable!(),
    }
    p
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, count) in [("dicts", 30_000), ("lists", 200_000), ("tuples", 1_000_000)] {
        let mut pickle = vec![0x80, 2];
        pickle.extend(nested(kind, count));
        pickle.push(b'.');
        let f = dir.path().join(format!("nested_{kind}.pth"));
        write_pth(&f, &pickle, &[]);
        assert_refused(&f, "nested deeper than 100 levels");
    }
}

/// The legacy (pre-1.6) format: magic, protocol, sys info, then the root pickle and the key list.
fn legacy_file(root_body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 2, 0x8a, 10];
    f.extend([
        0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
    ]);
    f.extend([0x80, 2, b'M', 0xe9, 0x03, b'.']); // protocol 1001
    f.extend([0x80, 2, b'}', b'.']); // sys info
    f.extend([0x80, 2]);
    f.extend(root_body);
    f.push(b'.');
    f.extend([0x80, 2, b']', b'.']); // no storages
    f
}

#[test]
fn deep_nesting_in_the_legacy_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("legacy_nested.pth");
    std::fs::write(&f, legacy_file(&nested("lists", 200_000))).unwrap();
    assert_refused(&f, "nested deeper than 100 levels");
}

#[test]
fn moderate_nesting_in_extras_still_loads() {
    // {"model": {"w": tensor}, "config": 60 nested lists}: real configs nest a few levels; 60 is fine.
    let mut pickle = vec![0x80, 2, b'}', b'('];
    pk::str(&mut pickle, "model");
    pickle.extend([b'}', b'(']);
    pk::str(&mut pickle, "w");
    pk::tensor(&mut pickle, "0", 2, 0, &[2], &[1]);
    pickle.push(b'u');
    pk::str(&mut pickle, "config");
    pickle.extend(nested("lists", 60));
    pickle.extend([b'u', b'.']);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ok.pth");
    let data: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_pth(&f, &pickle, &[("0", &data)]);
    let out = dir.path().join("ok.safetensors");
    tagfix().arg("convert").arg(&f).arg(&out).assert().success();
    let set = safetensors_io::read(&out).unwrap();
    assert_eq!(
        set.get("w"),
        Some(&Tensor::from_f32(vec![2], &[1.5, -2.0]).unwrap())
    );
    assert!(set.metadata["extra.config"].starts_with("[[[["));
}

/// (name, storage offset, size, stride, expected values).
type ExpectedView<'a> = (&'a str, i64, &'a [i64], &'a [i64], Vec<f32>);

#[test]
fn views_sharing_one_storage_are_each_correct() {
    // One 3x4 storage, viewed whole, transposed, as its second row, as its last column, and as an
    // expanded (stride-0) copy of element 5: each view comes out contiguous and right.
    let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views: [ExpectedView; 5] = [
        ("whole", 0, &[3, 4], &[4, 1], values.clone()),
        (
            "transposed",
            0,
            &[4, 3],
            &[1, 4],
            vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.],
        ),
        ("row", 4, &[4], &[1], vec![4., 5., 6., 7.]),
        ("column", 3, &[3], &[4], vec![3., 7., 11.]),
        ("expanded", 5, &[2, 2], &[0, 0], vec![5.; 4]),
    ];
    let entries: Vec<_> = views
        .iter()
        .map(|(name, offset, size, stride, _)| (*name, *offset, *size, *stride))
        .collect();
    let pickle = state_dict(12, &entries);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("shared.pth");
    write_pth(&f, &pickle, &[("0", &data)]);
    let out = dir.path().join("shared.safetensors");
    tagfix().arg("convert").arg(&f).arg(&out).assert().success();
    let set = safetensors_io::read(&out).unwrap();
    for (name, _, size, _, want) in views {
        let shape = size.iter().map(|&s| s as usize).collect();
        assert_eq!(
            set.get(name),
            Some(&Tensor::from_f32(shape, &want).unwrap()),
            "{name}"
        );
    }
}

/// A state dict of f32 views of storage "0" (`numel` elements): (name, offset, size, stride).
fn state_dict(numel: i64, views: &[(&str, i64, &[i64], &[i64])]) -> Vec<u8> {
    let mut pickle = vec![0x80, 2, b'}', b'('];
    for (name, offset, size, stride) in views {
        pk::str(&mut pickle, name);
        pk::tensor(&mut pickle, "0", numel, *offset, size, stride);
    }
    pickle.extend([b'u', b'.']);
    pickle
}

#[test]
fn a_view_past_its_storage_or_a_short_storage_is_refused() {
    // The second view reaches one element past the 12-element storage; the first fits.
    let past = state_dict(12, &[("ok", 8, &[4], &[1]), ("too_far", 9, &[4], &[1])]);
    let short = state_dict(12, &[("w", 0, &[2], &[1])]);
    let dir = tempfile::tempdir().unwrap();
    for (name, pickle, storage, want) in [
        (
            "past.pth",
            past,
            48,
            "tensor `too_far`: view (offset 9, size [4], stride [1]) reaches element 12",
        ),
        (
            "short.pth",
            short,
            8,
            "storage 0 holds 8 bytes, but the pickle declares 12 f32 elements",
        ),
    ] {
        let f = dir.path().join(name);
        write_pth(&f, &pickle, &[("0", &vec![0u8; storage])]);
        assert_refused(&f, want);
    }
}

#[test]
fn many_tensors_inspect_and_convert_completely() {
    // 20 000 one-element tensors, each its own top-level module (the shape that was quadratic:
    // scripts/bench-checkpoint-scale.sh measures the time; this checks that all of them come out).
    let n = 20_000;
    let set = TensorSet {
        tensors: (0..n)
            .map(|i| {
                (
                    format!("block{i}.w"),
                    Tensor::from_f32(vec![1], &[i as f32]).unwrap(),
                )
            })
            .collect(),
        metadata: Default::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("many.safetensors");
    safetensors_io::write(&st, &set).unwrap();
    let pth = dir.path().join("many.pth");
    tagfix::checkpoint::pth::write(
        &pth,
        tagfix::checkpoint::pth::PthContent::Dict(&set.tensors),
    )
    .unwrap();
    for input in [&st, &pth] {
        let info = tagfix()
            .arg("inspect")
            .arg(input)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            info.status.success(),
            "{}",
            String::from_utf8_lossy(&info.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["keys"].as_array().unwrap().len(), n);
        assert_eq!(info["groups"].as_array().unwrap().len(), n);
        let out = dir.path().join("out.safetensors");
        tagfix()
            .arg("convert")
            .arg(input)
            .arg(&out)
            .assert()
            .success();
        let back = safetensors_io::read(&out).unwrap();
        assert_eq!(back.tensors.len(), n);
        let last = back.get(&format!("block{}.w", n - 1)).unwrap();
        assert_eq!(
            (last.dtype, last.to_f32().unwrap()),
            (DType::F32, vec![(n - 1) as f32])
        );
    }
}

#[test]
fn a_safetensors_header_repeating_a_name_is_refused() {
    // JSON allows the repeat and the safetensors crate would keep the last `w` (u8 [4]).
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(1.0f32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("dup.safetensors");
    std::fs::write(&f, bytes).unwrap();
    assert_refused(&f, "names `w` more than once");
}
