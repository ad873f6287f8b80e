//! Who this process is in a distributed run, read from the launcher's environment: torchrun's
//! contract (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`)
//! or Slurm's (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, with `MASTER_ADDR` / `MASTER_PORT`
//! set by the batch script).

use super::DistError;
use std::str::FromStr;

/// Which launcher's variables described this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Contract {
    /// torchrun, or tagfix's own `--nproc-per-node` launcher (which sets the same variables).
    Torchrun,
    Slurm,
}

impl Contract {
    pub fn name(self) -> &'static str {
        match self {
            Contract::Torchrun => "torchrun",
            Contract::Slurm => "slurm",
        }
    }
}

/// This process's place in a distributed run and where the ranks meet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rendezvous {
    pub contract: Contract,
    /// Global rank, 0..world_size.
    pub rank: usize,
    pub world_size: usize,
    /// Rank on this node: a CUDA rank uses `cuda:LOCAL_RANK`.
    pub local_rank: usize,
    /// Ranks on this node (Slurm states it only for a uniform task layout).
    pub local_world_size: Option<usize>,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already serves the TCPStore at MASTER_ADDR:MASTER_PORT
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`): every rank connects as a client, none serves.
    pub agent_store: bool,
    /// How many times torchrun restarted the ranks (`TORCHELASTIC_RESTART_COUNT`, `--max-restarts`):
    /// the agent's store outlives them, so each attempt keeps its keys apart ([`Self::store_prefix`]).
    pub restart: u64,
}

const TORCHRUN_VARS: [&str; 6] = [
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
];

impl Rendezvous {
    /// Reads the process environment. `Ok(None)`: no launcher contract is present (a plain
    /// single-process run; a one-task Slurm job without MASTER_ADDR also counts as one).
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Rendezvous::from_env`], with the variables from `var` (for tests and `tagfix doctor`).
    /// torchrun's `RANK` wins over Slurm's variables (`srun torchrun ...` sets both).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if TORCHRUN_VARS[..4].iter().any(|v| var(v).is_some()) {
            return Self::torchrun(&var).map(Some);
        }
        if var("SLURM_PROCID").is_some() {
            return Self::slurm(&var);
        }
        Ok(None)
    }

    fn torchrun(var: &impl Fn(&str) -> Option<String>) -> Result<Self, DistError> {
        let err = |message: String| DistError::Env {
            contract: "torchrun",
            message,
        };
        let missing: Vec<&str> = TORCHRUN_VARS
            .iter()
            .copied()
            .filter(|v| var(v).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(err(format!(
                "{} set but {} missing (torchrun sets all six)",
                TORCHRUN_VARS
                    .iter()
                    .filter(|v| !missing.contains(v))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
                missing.join(", ")
            )));
        }
        let num = |name: &str| parse::<usize>(name, var(name).unwrap_or_default()).map_err(err);
        let (rank, world_size) = (num("RANK")?, num("WORLD_SIZE")?);
        let (local_rank, local_world_size) = (num("LOCAL_RANK")?, num("LOCAL_WORLD_SIZE")?);
        check_rank("RANK", rank, "WORLD_SIZE", world_size).map_err(err)?;
        check_rank(
            "LOCAL_RANK",
            local_rank,
            "LOCAL_WORLD_SIZE",
            local_world_size,
        )
        .map_err(err)?;
        if local_world_size > world_size {
            return Err(err(format!(
                "LOCAL_WORLD_SIZE={local_world_size} exceeds WORLD_SIZE={world_size}"
            )));
        }
        let (master_addr, master_port) = master(var).map_err(err)?;
        Ok(Rendezvous {
            contract: Contract::Torchrun,
            rank,
            world_size,
            local_rank,
            local_world_size: Some(local_world_size),
            master_addr,
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
            restart: match var("TORCHELASTIC_RESTART_COUNT") {
                Some(v) => parse::<u64>("TORCHELASTIC_RESTART_COUNT", v).map_err(err)?,
                None => 0,
            },
        })
    }

    fn slurm(var: &impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let err = |message: String| DistError::Env {
            contract: "slurm",
            message,
        };
        let num = |name: &str| match var(name) {
            Some(v) => parse::<usize>(name, v).map_err(err),
            None => Err(err(format!("SLURM_PROCID is set but {name} is not"))),
        };
        let (rank, world_size, local_rank) = (
            num("SLURM_PROCID")?,
            num("SLURM_NTASKS")?,
            num("SLURM_LOCALID")?,
        );
        check_rank("SLURM_PROCID", rank, "SLURM_NTASKS", world_size).map_err(err)?;
        if world_size == 1 && var("MASTER_ADDR").is_none() {
            // A job step of one task (an sbatch script's own shell): not a distributed run.
            return Ok(None);
        }
        // SLURM_NTASKS_PER_NODE is a plain number only for a uniform layout ("4(x2)" otherwise).
        let local_world_size = var("SLURM_NTASKS_PER_NODE").and_then(|v| v.parse().ok());
        if let Some(n) = local_world_size {
            check_rank("SLURM_LOCALID", local_rank, "SLURM_NTASKS_PER_NODE", n).map_err(err)?;
        }
        let (master_addr, master_port) = master(var).map_err(|m| {
            err(format!(
                "{m} (set them in the batch script, e.g. \
                 MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1) MASTER_PORT=29500)"
            ))
        })?;
        Ok(Some(Rendezvous {
            contract: Contract::Slurm,
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            agent_store: false,
            restart: 0,
        }))
    }

    /// The prefix of this run's keys in the rendezvous store. torchrun's agent store lives as long
    /// as the agent, across the restarts of its ranks: a restarted attempt's ranks would find the
    /// last attempt's keys (its rank claims: "rank 0 was claimed by 2 processes"; its heartbeats and
    /// failure notes; Gloo's addresses), so each attempt has its own, as PyTorch's
    /// `/worker/attempt_N` prefix does.
    pub fn store_prefix(&self) -> String {
        match self.agent_store {
            true => format!("tagfix/attempt_{}/", self.restart),
            false => "tagfix/".into(),
        }
    }

    /// Whether this process is one of several ranks (a launcher started it).
    pub fn is_multi_rank(&self) -> bool {
        self.world_size > 1
    }
}

fn parse<T: FromStr>(name: &str, value: String) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{name}={value:?} is not a non-negative integer"))
}

fn check_rank(rank_name: &str, rank: usize, size_name: &str, size: usize) -> Result<(), String> {
    if size == 0 {
        return Err(format!("{size_name}=0: there must be at least one rank"));
    }
    if rank >= size {
        return Err(format!(
            "{rank_name}={rank} is out of range for {size_name}={size}"
        ));
    }
    Ok(())
}

fn master(var: &impl Fn(&str) -> Option<String>) -> Result<(String, u16), String> {
    let missing: Vec<&str> = ["MASTER_ADDR", "MASTER_PORT"]
        .into_iter()
        .filter(|v| var(v).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!("{} not set", missing.join(" and ")));
    }
    let addr = var("MASTER_ADDR").unwrap_or_default().trim().to_string();
    let port_text = var("MASTER_PORT").unwrap_or_default();
    match port_text.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok((addr, p)),
        _ => Err(format!(
            "MASTER_PORT={port_text:?} is not a TCP port (1-65535)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rdzv(vars: &[(&str, &str)]) -> Result<Option<Rendezvous>, DistError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Rendezvous::from_vars(|k| map.get(k).cloned())
    }

    const TORCHRUN: [(&str, &str); 6] = [
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "node7"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn no_contract_is_a_single_process() {
        assert_eq!(rdzv(&[]).unwrap(), None);
        assert_eq!(rdzv(&[("MASTER_PORT", "29500")]).unwrap(), None);
    }

    #[test]
    fn torchrun_contract() {
        let r = rdzv(&TORCHRUN).unwrap().unwrap();
        assert_eq!(r.contract, Contract::Torchrun);
        assert_eq!((r.rank, r.world_size, r.local_rank), (3, 4, 1));
        assert_eq!(r.local_world_size, Some(2));
        assert_eq!((r.master_addr.as_str(), r.master_port), ("node7", 29500));
        assert!(!r.agent_store);
        let mut with_agent = TORCHRUN.to_vec();
        with_agent.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        let agent = rdzv(&with_agent).unwrap().unwrap();
        assert!(agent.agent_store);
        // Each attempt of torchrun's restarts keeps its keys apart in the agent's store.
        assert_eq!(agent.store_prefix(), "tagfix/attempt_0/");
        with_agent.push(("TORCHELASTIC_RESTART_COUNT", "2"));
        assert_eq!(
            rdzv(&with_agent).unwrap().unwrap().store_prefix(),
            "tagfix/attempt_2/"
        );
        assert_eq!(r.store_prefix(), "tagfix/");
        with_agent.pop();
        with_agent.push(("TORCHELASTIC_RESTART_COUNT", "two"));
        let e = rdzv(&with_agent).unwrap_err().to_string();
        assert!(e.contains("TORCHELASTIC_RESTART_COUNT"), "{e}");
    }

    #[test]
    fn torchrun_partial_names_the_missing_variables() {
        let e = rdzv(&TORCHRUN[..3]).unwrap_err().to_string();
        assert!(
            e.contains("LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT missing"),
            "{e}"
        );
        assert!(e.contains("torchrun"), "{e}");
    }

    #[test]
    fn torchrun_invalid_values() {
        for (var, value, needle) in [
            ("RANK", "4", "RANK=4 is out of range for WORLD_SIZE=4"),
            ("RANK", "-1", "RANK=\"-1\" is not a non-negative integer"),
            ("WORLD_SIZE", "0", "WORLD_SIZE=0"),
            ("LOCAL_RANK", "2", "LOCAL_RANK=2 is out of range"),
            (
                "MASTER_PORT",
                "70000",
                "MASTER_PORT=\"70000\" is not a TCP port",
            ),
            ("MASTER_PORT", "0", "is not a TCP port"),
        ] {
            let vars: Vec<_> = TORCHRUN
                .iter()
                .map(|&(k, v)| (k, if k == var { value } else { v }))
                .collect();
            let e = rdzv(&vars).unwrap_err().to_string();
            assert!(e.contains(needle), "{var}={value}: {e}");
        }
    }

    #[test]
    fn slurm_contract() {
        let vars = [
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "4"),
            ("MASTER_ADDR", "gpu01"),
            ("MASTER_PORT", "29400"),
        ];
        let r = rdzv(&vars).unwrap().unwrap();
        assert_eq!(r.contract, Contract::Slurm);
        assert_eq!((r.rank, r.world_size, r.local_rank), (5, 8, 1));
        assert_eq!(r.local_world_size, Some(4));
        assert_eq!((r.master_addr.as_str(), r.master_port), ("gpu01", 29400));
        // A non-uniform layout states no local world size.
        let mut odd = vars.to_vec();
        odd[3] = ("SLURM_NTASKS_PER_NODE", "4(x2)");
        assert_eq!(rdzv(&odd).unwrap().unwrap().local_world_size, None);
    }

    #[test]
    fn slurm_needs_master_for_several_tasks() {
        let e = rdzv(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("MASTER_ADDR and MASTER_PORT not set"), "{e}");
        assert!(e.contains("scontrol show hostnames"), "{e}");
        // One task without a master is an ordinary single-process run.
        let one = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("SLURM_LOCALID", "0"),
        ];
        assert_eq!(rdzv(&one).unwrap(), None);
        let partial = rdzv(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]).unwrap_err();
        assert!(partial.to_string().contains("SLURM_LOCALID"), "{partial}");
    }

    #[test]
    fn torchrun_wins_over_slurm() {
        let mut vars = TORCHRUN.to_vec();
        vars.extend([
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("SLURM_LOCALID", "0"),
        ]);
        assert_eq!(rdzv(&vars).unwrap().unwrap().contract, Contract::Torchrun);
    }
}
