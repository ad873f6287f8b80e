//! Shards: the N contiguous blocks of some work that N processes or machines compute apart (one
//! Slurm array task or one GPU each), each writing a file of a set `PREFIX-IIIII-of-NNNNN.EXT` that
//! a later command reads back whole: `tagfix teacher --shard` (teacher sets for `train --teacher
//! DIR`) and `tagfix tag --shard` (tag and score sets for `eval --scores DIR`).
//!
//! Shard I of N holds the items `I·n/N .. (I+1)·n/N` ([`super::block`]); I counts from 0, like a
//! Slurm array task id or a torchrun rank. `--shard auto` takes the launcher's place
//! ([`Shard::from_env`]), `--device cuda` the launcher's local GPU ([`local_gpu`]).

use crate::error::Result;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The items of this shard among `n`: a contiguous block, the blocks' sizes differing by at
    /// most one.
    pub fn range(&self, n: usize) -> Range<usize> {
        crate::share::block(self.index, self.count, n)
    }

    /// Checks `index < count`.
    pub fn new(index: usize, count: usize) -> std::result::Result<Shard, String> {
        if index >= count {
            return Err(format!(
                "shard {index}/{count}: the index counts from 0 and must be below the count"
            ));
        }
        Ok(Shard { index, count })
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parse = |part: &str| part.trim().parse::<usize>().ok();
        match s.split_once('/').map(|(i, n)| (parse(i), parse(n))) {
            Some((Some(index), Some(count))) => Shard::new(index, count),
            _ => Err(format!(
                "`{s}` is not a shard: write I/N, e.g. 0/8 for the first of 8 (I counts from 0)"
            )),
        }
    }
}

/// The GPU a launcher's process takes for `--device cuda` given without an index, and the
/// variables it came from: torchrun's `LOCAL_RANK`, else `srun`'s `SLURM_LOCALID`, counted modulo
/// the devices `CUDA_VISIBLE_DEVICES` lists (a launcher that gives each process a GPU of its own
/// lists one, which is then device 0). `None` outside a launcher, where `cuda` means device 0.
pub fn local_gpu(
    var: impl Fn(&str) -> Option<String>,
) -> std::result::Result<Option<(i32, String)>, String> {
    let Some((name, value)) = ["LOCAL_RANK", "SLURM_LOCALID"]
        .into_iter()
        .find_map(|name| var(name).map(|v| (name, v)))
    else {
        return Ok(None);
    };
    let local: i32 = value.trim().parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
        format!("--device cuda: {name}={value:?} is not a non-negative integer: give --device cuda:N")
    })?;
    let visible = var("CUDA_VISIBLE_DEVICES")
        .map(|v| v.split(',').filter(|d| !d.trim().is_empty()).count() as i32)
        .filter(|&n| n > 0);
    Ok(Some(match visible {
        Some(n) => (
            local % n,
            format!("{name}={local}, CUDA_VISIBLE_DEVICES lists {n}"),
        ),
        None => (local, format!("{name}={local}")),
    }))
}

/// `--shard`: a shard given as `I/N`, or `auto`: this process's place among a launcher's
/// ([`Shard::from_env`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    Given(Shard),
    Auto,
}

impl std::str::FromStr for ShardSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(ShardSpec::Auto),
            _ => s
                .parse()
                .map(ShardSpec::Given)
                .map_err(|e| format!("{e}, or auto")),
        }
    }
}

impl ShardSpec {
    /// The shard, `auto` read from the environment through `var`, and for `auto` the variables it
    /// came from (for the log).
    pub fn resolve(
        self,
        var: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<(Shard, Option<String>), String> {
        match self {
            ShardSpec::Given(shard) => Ok((shard, None)),
            ShardSpec::Auto => Shard::from_env(var).map(|(shard, from)| (shard, Some(from))),
        }
    }
}

impl Shard {
    /// This process's shard from a launcher's variables (`var` reads one), and the variables used:
    /// torchrun's `RANK` of `WORLD_SIZE`; else a Slurm job array's task, counted from
    /// `SLURM_ARRAY_TASK_MIN` among `SLURM_ARRAY_TASK_COUNT` (the array must be contiguous, so
    /// that every shard has a task); else `srun`'s `SLURM_PROCID` of `SLURM_NTASKS` when there are
    /// several tasks.
    pub fn from_env(
        var: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<(Shard, String), String> {
        let number = |name: &str| -> std::result::Result<Option<usize>, String> {
            match var(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    format!("--shard auto: {name}={v:?} is not a non-negative integer")
                }),
            }
        };
        let shard = |index: usize, count: usize, from: String| {
            Shard::new(index, count)
                .map(|s| (s, from.clone()))
                .map_err(|e| format!("--shard auto: {e} ({from})"))
        };
        if let (Some(rank), Some(world)) = (number("RANK")?, number("WORLD_SIZE")?) {
            return shard(rank, world, format!("RANK={rank}, WORLD_SIZE={world}"));
        }
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let max = number("SLURM_ARRAY_TASK_MAX")?;
            let count = number("SLURM_ARRAY_TASK_COUNT")?;
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
            let from = format!(
                "SLURM_ARRAY_TASK_ID={id}, SLURM_ARRAY_TASK_MIN={min}, SLURM_ARRAY_TASK_COUNT={}",
                count.map_or("unset".into(), |c| c.to_string())
            );
            return match (count, max) {
                (Some(count), Some(max))
                    if step == 1
                        && id >= min
                        && max.checked_sub(min).and_then(|d| d.checked_add(1)) == Some(count) =>
                {
                    shard(id - min, count, from)
                }
                (Some(_), Some(_)) => Err(format!(
                    "--shard auto: the job array is not one contiguous range ({from}, \
                     SLURM_ARRAY_TASK_MAX={}, step {step}): give --shard I/N",
                    max.unwrap_or(0)
                )),
                _ => Err(format!(
                    "--shard auto: a Slurm array task without SLURM_ARRAY_TASK_COUNT and \
                     SLURM_ARRAY_TASK_MAX ({from}): give --shard I/N"
                )),
            };
        }
        if let (Some(id), Some(tasks)) = (number("SLURM_PROCID")?, number("SLURM_NTASKS")?) {
            if tasks > 1 {
                return shard(
                    id,
                    tasks,
                    format!("SLURM_PROCID={id}, SLURM_NTASKS={tasks}"),
                );
            }
        }
        Err(
            "--shard auto: no launcher's variables (torchrun's RANK and WORLD_SIZE, a Slurm job \
             array's SLURM_ARRAY_TASK_*, or srun's SLURM_PROCID and SLURM_NTASKS with several \
             tasks): give --shard I/N"
                .into(),
        )
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// How the files of one kind of shard set are named: `PREFIX-IIIII-of-NNNNN.EXT`, and what makes
/// them (for the errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetNaming {
    pub prefix: &'static str,
    pub ext: &'static str,
    /// What one file is, e.g. "teacher shard".
    pub what: &'static str,
    /// The command that writes one, e.g. "tagfix teacher --shard I/N".
    pub made_by: &'static str,
}

impl SetNaming {
    /// `PREFIX-IIIII-of-NNNNN.EXT`.
    pub fn file_name(&self, shard: Shard) -> String {
        format!(
            "{}-{:05}-of-{:05}.{}",
            self.prefix, shard.index, shard.count, self.ext
        )
    }

    /// The shard a file name of [`Self::file_name`]'s form names: exactly that name, so that no two
    /// names (`teacher-1-of-2…`, `teacher-00001-of-00002…`) claim one shard.
    pub fn shard_of(&self, name: &str) -> Option<Shard> {
        let middle = name
            .strip_prefix(self.prefix)?
            .strip_prefix('-')?
            .strip_suffix(self.ext)?
            .strip_suffix('.')?;
        let (index, count) = middle.split_once("-of-")?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(index) || !digits(count) {
            return None;
        }
        let shard = Shard::new(index.parse().ok()?, count.parse().ok()?).ok()?;
        (self.file_name(shard) == name).then_some(shard)
    }

    /// Whether `name` looks like a shard's name, [`Self::shard_of`] or not: a file of a set that
    /// would otherwise be passed over without a word.
    fn looks_like(&self, name: &str) -> bool {
        name.starts_with(&format!("{}-", self.prefix))
            && name.ends_with(&format!(".{}", self.ext))
            && name.contains("-of-")
    }

    /// `PREFIX-IIIII-of-NNNNN.EXT`, for the errors.
    fn pattern(&self) -> String {
        format!("{}-IIIII-of-NNNNN.{}", self.prefix, self.ext)
    }

    /// The shard files of the set in `dir`, in shard order: every file named like a shard, all of one
    /// count, none missing. Other files in `dir` are left alone.
    /// `problem` makes the error of a set that is not one (the caller's kind of error).
    pub fn set_files(
        &self,
        dir: &Path,
        problem: impl Fn(String) -> crate::Error,
    ) -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(dir).map_err(|e| crate::Error::io(dir, e))?;
        let mut shards: BTreeMap<usize, (usize, PathBuf)> = BTreeMap::new();
        let mut count: Option<(usize, PathBuf)> = None;
        for entry in entries {
            let entry = entry.map_err(|e| crate::Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let Some(shard) = self.shard_of(&name) else {
                if self.looks_like(&name) {
                    return Err(problem(format!(
                        "{} is named like a shard but is not one: shards are named {} with I \
                         below N, as `{}` names them (rename it, or move it out of the folder)",
                        path.display(),
                        self.pattern(),
                        self.made_by
                    )));
                }
                continue;
            };
            if let Some((n, first)) = &count {
                if *n != shard.count {
                    return Err(problem(format!(
                        "{} is one of {} shards, {} one of {n}",
                        path.display(),
                        shard.count,
                        first.display()
                    )));
                }
            } else {
                count = Some((shard.count, path.clone()));
            }
            shards.insert(shard.index, (shard.count, path));
        }
        let Some((count, _)) = count else {
            return Err(problem(format!(
                "holds no {} ({}, from `{}`)",
                self.what,
                self.pattern(),
                self.made_by
            )));
        };
        // Every index is below the count, so this many are missing; the first few lie within the
        // first `shards.len() + 10` indices, whatever the count a file name claims.
        let missing = count - shards.len();
        if missing > 0 {
            let first: Vec<usize> = (0..count)
                .filter(|i| !shards.contains_key(i))
                .take(LISTED)
                .collect();
            return Err(problem(format!(
                "{missing} of its {count} shards are missing: {}",
                list_some(&first, missing)
            )));
        }
        Ok(shards.into_values().map(|(_, path)| path).collect())
    }
}

/// Missing shards named in an error.
const LISTED: usize = 10;

/// The `first` few of `total` items, and how many more.
fn list_some(first: &[usize], total: usize) -> String {
    let shown: Vec<String> = first.iter().map(usize::to_string).collect();
    match total - first.len() {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEACHER: SetNaming = SetNaming {
        prefix: "teacher",
        ext: "safetensors",
        what: "teacher shard",
        made_by: "tagfix teacher --shard I/N",
    };

    #[test]
    fn a_launchers_process_takes_its_local_gpu() {
        assert_eq!(local_gpu(env(&[])), Ok(None));
        let (gpu, from) = local_gpu(env(&[("LOCAL_RANK", "3"), ("RANK", "11")]))
            .unwrap()
            .unwrap();
        assert_eq!((gpu, from.as_str()), (3, "LOCAL_RANK=3"));
        // srun binding one GPU to each task: it is device 0 of the task's own list.
        let one = env(&[("SLURM_LOCALID", "5"), ("CUDA_VISIBLE_DEVICES", "5")]);
        assert_eq!(local_gpu(one).unwrap().unwrap().0, 0);
        let all = env(&[
            ("SLURM_LOCALID", "5"),
            ("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7"),
        ]);
        assert_eq!(local_gpu(all).unwrap().unwrap().0, 5);
        // torchrun's variable wins over Slurm's (torchrun started by srun).
        let both = env(&[("SLURM_LOCALID", "0"), ("LOCAL_RANK", "2")]);
        assert_eq!(local_gpu(both).unwrap().unwrap().0, 2);
        let bad = local_gpu(env(&[("LOCAL_RANK", "-1")])).unwrap_err();
        assert!(
            bad.contains("LOCAL_RANK=\"-1\"") && bad.contains("cuda:N"),
            "{bad}"
        );
    }

    #[test]
    fn shards_split_the_records_into_contiguous_blocks() {
        let of = |count| {
            (0..count)
                .map(|index| Shard { index, count }.range(10))
                .collect::<Vec<_>>()
        };
        assert_eq!(of(1), vec![0..10]);
        assert_eq!(of(3), vec![0..3, 3..6, 6..10]);
        assert_eq!(of(4), vec![0..2, 2..5, 5..7, 7..10]);
        // More shards than records: some are empty, none is lost.
        let many = of(12);
        assert_eq!(many.iter().map(|r| r.len()).sum::<usize>(), 10);
        assert!(many.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn shards_parse_print_and_name_their_files() {
        let s: Shard = "3/8".parse().unwrap();
        assert_eq!((s.index, s.count), (3, 8));
        assert_eq!(s.to_string(), "3/8");
        assert_eq!(TEACHER.file_name(s), "teacher-00003-of-00008.safetensors");
        assert_eq!(TEACHER.shard_of(&TEACHER.file_name(s)), Some(s));
        let scores = SetNaming {
            prefix: "scores",
            ext: "safetensors",
            what: "score shard",
            made_by: "tagfix tag --shard I/N --scores DIR",
        };
        assert_eq!(scores.file_name(s), "scores-00003-of-00008.safetensors");
        assert_eq!(
            scores.shard_of("scores-00003-of-00008.safetensors"),
            Some(s)
        );
        // Each naming reads only its own files.
        assert_eq!(TEACHER.shard_of("scores-00003-of-00008.safetensors"), None);
        assert_eq!(scores.shard_of(&TEACHER.file_name(s)), None);
        assert_eq!(scores.shard_of("scores-00003-of-00008.jsonl"), None);
        for bad in ["8/8", "1/0", "x/2", "2", "-1/4", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        for name in [
            "teacher-00008-of-00008.safetensors",
            "teacher-3-of-8.safetensors",
            "teacher-000003-of-00008.safetensors",
            "teacher-00003-of-8.safetensors",
            "teacher-1-of-.safetensors",
            ".teacher-00000-of-00002.safetensors.tagfix-abc.tmp",
            "teacher.safetensors",
        ] {
            assert_eq!(TEACHER.shard_of(name), None, "{name}");
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn auto_takes_the_launchers_place_for_the_shard() {
        let auto = |vars: &[(&str, &str)]| Shard::from_env(env(vars)).map(|(s, _)| s.to_string());
        assert_eq!(auto(&[("RANK", "3"), ("WORLD_SIZE", "8")]).unwrap(), "3/8");
        // torchrun's variables win over Slurm's (`srun torchrun ...`).
        let both = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
        ];
        assert_eq!(auto(&both).unwrap(), "1/2");
        // An array 1-64 (`--array=1-64`): task 1 is shard 0.
        let array = |id: &str, min: &str, max: &str, count: &str| {
            auto(&[
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_MIN", min),
                ("SLURM_ARRAY_TASK_MAX", max),
                ("SLURM_ARRAY_TASK_COUNT", count),
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "1"),
            ])
        };
        assert_eq!(array("1", "1", "64", "64").unwrap(), "0/64");
        assert_eq!(array("64", "1", "64", "64").unwrap(), "63/64");
        assert_eq!(array("7", "0", "63", "64").unwrap(), "7/64");
        // `--array=0-63:2` or a list: not every shard would have a task.
        let err = array("2", "0", "62", "32").unwrap_err();
        assert!(err.contains("not one contiguous range"), "{err}");
        // Counts no array has: refused, not overflowed.
        let err = array("0", "0", "0", "0").unwrap_err();
        assert!(err.contains("not one contiguous range"), "{err}");
        let max = usize::MAX.to_string();
        let err = array("5", "0", &max, &max).unwrap_err();
        assert!(err.contains("not one contiguous range"), "{err}");
        assert_eq!(
            auto(&[("SLURM_PROCID", "2"), ("SLURM_NTASKS", "4")]).unwrap(),
            "2/4"
        );
        for (vars, says) in [
            (&[][..], "no launcher's variables"),
            (
                &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")][..],
                "no launcher's variables",
            ),
            (
                &[("RANK", "x"), ("WORLD_SIZE", "2")][..],
                "RANK=\"x\" is not",
            ),
            (
                &[("RANK", "2"), ("WORLD_SIZE", "2")][..],
                "must be below the count",
            ),
        ] {
            let err = auto(vars).unwrap_err();
            assert!(err.contains(says), "{vars:?}: {err}");
        }
        let (given, from) = ShardSpec::Given(Shard { index: 0, count: 2 })
            .resolve(env(&both))
            .unwrap();
        assert_eq!((given.to_string(), from), ("0/2".into(), None));
        assert_eq!("auto".parse::<ShardSpec>(), Ok(ShardSpec::Auto));
        assert!("2/2".parse::<ShardSpec>().unwrap_err().contains("or auto"));
    }
}
