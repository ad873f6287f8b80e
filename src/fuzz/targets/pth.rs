//! The `pth` target: PyTorch checkpoints (`torch.save` zip and legacy files), from crafted seeds and
//! from pickles built of random opcodes and `_rebuild_tensor_v2` records with boundary integers.

use super::{int, pick_from, sample_tensors, use_tensors, written};
use crate::checkpoint::pth::PthContent;
use crate::rng::SplitMix64;
use std::io::Write;
use std::path::Path;

pub(super) fn target() -> super::Target {
    super::Target {
        name: "pth",
        file: "checkpoint.pth",
        run: run_pth,
        dict: PICKLE_DICT,
        generate: Some(gen_pth),
        seeds: pth_seeds,
        shared_seeds: &["reference/pth/*"],
    }
}

fn run_pth(path: &Path, _: &[u8]) {
    if let Ok(c) = crate::checkpoint::pth::read(path) {
        use_tensors(path, &c.into_tensor_set());
    }
}

#[rustfmt::skip]
const PICKLE_DICT: &[&[u8]] = &[
    b"\x80\x02", b"}", b"]", b")", b"(", b"t", b"R", b"Q", b"u", b"s", b"a", b"e", b".", b"K", b"J",
    b"M", b"\x8a\x08", b"X", b"\x8c", b"q", b"r", b"h", b"j", b"N", b"\x88", b"\x89", b"G", b"\x85",
    b"\x86", b"\x87", b"0", b"1", b"2", b"(X\x01\x00\x00\x00w",
    b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch\nFloatStorage\n", b"ctorch\nLongStorage\n",
    b"ctorch\nHalfStorage\n", b"ccollections\nOrderedDict\n", b"X\x07\x00\x00\x00storage",
    b"X\x03\x00\x00\x00cpu", b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"data.pkl", b"data/0",
];

/// A legacy (pre-1.6) `torch.save` file with one `[2]` float tensor under key `w`.
pub(super) fn legacy_pth() -> Vec<u8> {
    let mut b = vec![0x80, 0x02, 0x8a, 0x0a];
    b.extend([0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
    b.extend(
        b".\x80\x02M\xe9\x03.\x80\x02}q\x00(X\x10\x00\x00\x00protocol_versionq\x01M\xe9\x03u.",
    );
    b.extend(b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x02tq\x07QK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\nq\x08)Rq\ttq\nRq\x0bs.");
    b.extend(b"\x80\x02]q\x00X\x01\x00\x00\x000q\x01a.");
    b.extend(2u64.to_le_bytes());
    b.extend(1.5f32.to_le_bytes());
    b.extend((-2.0f32).to_le_bytes());
    b
}

fn pth_seeds() -> Vec<(String, Vec<u8>)> {
    let tensors = sample_tensors();
    vec![
        written("dict.pth", |p| {
            crate::checkpoint::pth::write(p, PthContent::Dict(&tensors))
        }),
        written("bare.pth", |p| {
            crate::checkpoint::pth::write(p, PthContent::Tensor(&tensors[0].1))
        }),
        ("legacy.pth".into(), legacy_pth()),
    ]
}

/// A pickle: protocol 2, then random opcodes with arguments, sometimes around a tensor record.
fn gen_pickle(rng: &mut SplitMix64) -> Vec<u8> {
    let mut out = vec![0x80, 0x02];
    if rng.below(2) == 0 {
        out.extend(b"}(X\x01\x00\x00\x00w");
        tensor_record(rng, &mut out);
        for _ in 0..rng.below(4) {
            opcode(rng, &mut out);
        }
        out.extend(b"u.");
        return out;
    }
    for _ in 0..rng.below(40) + 1 {
        opcode(rng, &mut out);
    }
    out.push(b'.');
    out
}

fn tensor_record(rng: &mut SplitMix64, out: &mut Vec<u8>) {
    let storage = pick_from(
        rng,
        &[
            "FloatStorage",
            "HalfStorage",
            "LongStorage",
            "BFloat16Storage",
            "ByteStorage",
            "BoolStorage",
            "Nope",
        ],
    );
    out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage");
    out.extend(format!("ctorch\n{storage}\n").as_bytes());
    out.extend(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpu");
    push_int(out, int(rng));
    out.extend(b"tQ");
    push_int(out, int(rng));
    for _ in 0..2 {
        out.push(b'(');
        for _ in 0..rng.below(4) {
            push_int(out, int(rng));
        }
        out.push(b't');
    }
    out.extend(b"\x89ccollections\nOrderedDict\n)RtR");
}

fn push_int(out: &mut Vec<u8>, v: i64) {
    if (0..256).contains(&v) {
        out.extend([b'K', v as u8]);
    } else if let Ok(v) = i32::try_from(v) {
        out.push(b'J');
        out.extend(v.to_le_bytes());
    } else {
        out.extend([0x8a, 8]);
        out.extend(v.to_le_bytes());
    }
}

fn put_one(rng: &mut SplitMix64, out: &mut Vec<u8>, items: &[&[u8]]) {
    out.extend_from_slice(items[rng.below(items.len() as u64) as usize]);
}

fn opcode(rng: &mut SplitMix64, out: &mut Vec<u8>) {
    match rng.below(16) {
        0 => put_one(
            rng,
            out,
            &[&b"}"[..], b"]", b")", b"(", b"N", b"\x88", b"\x89"],
        ),
        1 => push_int(out, int(rng)),
        2 => put_one(
            rng,
            out,
            &[
                &b"X\x01\x00\x00\x00k"[..],
                b"\x8c\x02ab",
                b"X\x00\x00\x00\x00",
                b"X\xff\xff\xff\x7fx",
            ],
        ),
        3 => put_one(
            rng,
            out,
            &[&b"t"[..], b"\x85", b"\x86", b"\x87", b"l", b"d"],
        ),
        4 => put_one(
            rng,
            out,
            &[
                &b"s"[..],
                b"u",
                b"a",
                b"e",
                b"R",
                b"Q",
                b"b",
                b"0",
                b"1",
                b"2",
            ],
        ),
        5 => out.extend([b'q', rng.below(4) as u8]),
        6 => out.extend([b'h', rng.below(4) as u8]),
        7 => {
            out.push(b'r');
            out.extend((rng.below(4) as u32).to_le_bytes());
        }
        8 => {
            out.push(b'j');
            out.extend((*pick_from(rng, &[0u32, 1, 2, u32::MAX])).to_le_bytes());
        }
        9 => put_one(
            rng,
            out,
            &[
                &b"ctorch._utils\n_rebuild_tensor_v2\n"[..],
                b"ccollections\nOrderedDict\n",
                b"ctorch\nFloatStorage\n",
                b"cos\nsystem\n",
                b"c__builtin__\nset\n",
            ],
        ),
        10 => {
            out.push(b'G');
            out.extend(pick_from(rng, &[0.5f64, f64::NAN, f64::INFINITY, -0.0]).to_be_bytes());
        }
        11 => tensor_record(rng, out),
        12 => put_one(
            rng,
            out,
            &[
                &b"\x8a\x00"[..],
                b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19",
                b"\x8b\xff\xff\xff\xff",
                b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x80",
            ],
        ),
        13 => put_one(
            rng,
            out,
            &[
                &b"C\x03abc"[..],
                b"B\x00\x00\x00\x80",
                b"T\x02\x00\x00\x00ab",
                b"U\x01a",
            ],
        ),
        14 => put_one(
            rng,
            out,
            &[
                &b"\x95\x00\x00\x00\x00\x00\x00\x00\x00"[..],
                b"\x94",
                b"\x93",
                b"\x8d\x00\x00\x00\x00\x00\x00\x00\x00",
            ],
        ),
        _ => out.push(rng.next_u64() as u8),
    }
}

/// A `torch.save` zip (random pickle, storages of random sizes) or a legacy file around a pickle.
pub(super) fn gen_pth(rng: &mut SplitMix64) -> Vec<u8> {
    let pickle = gen_pickle(rng);
    if rng.below(4) == 0 {
        let mut b = legacy_pth();
        let at = memchr::memmem::find(&b, b"\x80\x02}q\x00X\x01").unwrap_or(0);
        let tail = b.split_off(at);
        b.extend(&pickle);
        if rng.below(2) == 0 {
            let keys = memchr::memmem::find(&tail, b"\x80\x02]").unwrap_or(0);
            b.extend(&tail[keys..]);
        }
        return b;
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut put = |name: &str, bytes: &[u8]| -> zip::result::ZipResult<()> {
            zip.start_file(name, opts)?;
            zip.write_all(bytes)?;
            Ok(())
        };
        let archive = pick_from(rng, &["archive", "a/b", ""]);
        let _ = put(&format!("{archive}/data.pkl"), &pickle);
        for k in 0..rng.below(3) {
            let n = *pick_from(rng, &[0usize, 1, 4, 8, 12, 48, 100]);
            let data: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let _ = put(&format!("{archive}/data/{k}"), &data);
        }
        let _ = zip.finish();
    }
    buf.into_inner()
}
