//! Reads RAM-format annotation files exactly as `tagfix train` loads its training records (every
//! record kept: image path and checked slots) and prints how many there are. `scripts/bench-records.sh`
//! runs it under `/usr/bin/time -v` to measure the peak memory of record loading without libtorch.
//!
//! `cargo run --release --example read_records -- SLOTS FILE...`

use std::path::PathBuf;
use tagfix::annotations::records::RecordSet;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let slots: usize = args
        .next()
        .ok_or("usage: read_records SLOTS FILE...")?
        .parse()?;
    let files: Vec<PathBuf> = args.map(PathBuf::from).collect();
    let set = RecordSet::read(&files, slots)?;
    let labels: usize = set.slot_lists().map(<[u32]>::len).sum();
    println!("{} records, {labels} labels", set.len());
    Ok(())
}
