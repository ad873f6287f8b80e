//! Peak-memory probe of teacher files (scripts/bench-teacher-memory.sh): `write N PATH` writes a
//! teacher file of N records (keys shaped like RAM's image paths) from rows held in memory, as
//! `tagfix synth-images` does; `read PATH` opens it and looks every key up, as `tagfix train
//! --teacher PATH` does before its first step. Uses only the API that every version of
//! `TeacherFeatures` has, so the same file builds against the baseline.

use std::path::Path;
use tagfix::teacher::{TeacherFeatures, TEACHER_DIM};

fn key(i: usize) -> String {
    format!("cc3m/train/{:05}/{i:09}.jpg", i / 1000)
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(key).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["write", n, path] => {
            let n: usize = n.parse().expect("N");
            let keys = keys(n);
            let image: Vec<f32> = (0..n * TEACHER_DIM)
                .map(|i| (i % 977) as f32 * 1e-3)
                .collect();
            let text: Vec<f32> = (0..n * TEACHER_DIM)
                .map(|i| (i % 499) as f32 * 1e-3 + 0.1)
                .collect();
            TeacherFeatures::write(Path::new(path), &keys, &image, &text).expect("write");
            println!("wrote {n} records");
        }
        ["read", path] => {
            let t = TeacherFeatures::read(Path::new(path)).expect("read");
            // One key at a time, so that the peak is the reader's alone.
            let found = (0..t.len())
                .filter(|&i| t.row_of(&key(i)) == Some(i))
                .count();
            assert_eq!(found, t.len());
            println!("read {} records", t.len());
        }
        _ => panic!("usage: teacher_memory write N PATH | read PATH"),
    }
}
