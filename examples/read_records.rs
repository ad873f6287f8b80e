//! Reads RAM-format annotation files exactly as `tagfix train` loads its training records (every
//! record kept: image path and checked slots; with `--captions`, also every caption, as `tagfix
//! teacher` and the online teacher read them) and prints the records' fingerprint.
//! `scripts/bench-records.sh` runs it under `/usr/bin/time` to measure the peak memory of record
//! loading without libtorch. It calls only `RecordSet::read_with` and `fingerprint`, so that the same
//! source builds against the revision it is compared with.
//!
//! `cargo run --release --example read_records -- [--captions] SLOTS FILE...`

use std::path::PathBuf;
use tagfix::annotations::records::{ReadOptions, RecordSet};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let captions = args.next_if(|a| a == "--captions").is_some();
    let slots: usize = args
        .next()
        .ok_or("usage: read_records [--captions] SLOTS FILE...")?
        .parse()?;
    let files: Vec<PathBuf> = args.map(PathBuf::from).collect();
    let opts = ReadOptions {
        num_slots: Some(slots),
        captions,
    };
    let set = RecordSet::read_with(&files, opts)?;
    println!("records fingerprint {}", set.fingerprint());
    Ok(())
}
