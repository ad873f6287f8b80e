//! Distributed engine on CPU (Gloo over loopback), two real processes per case. `harness = false`:
//! this binary is also the rank process it starts (`dist ROLE` with torchrun's variables set), so
//! each case runs the actual c10d code in separate processes, as `tagfix train` ranks do.
//!
//! Cases: the collectives give the right values on both ranks (launched with torchrun's variables,
//! and with Slurm's); a sharded optimizer state on three ranks updates, reports and checkpoints
//! exactly as the whole state; the agreement check names the
//! disagreeing rank and field; a rank that dies, hangs or (rank 0) takes the store with it makes the
//! other fail with that rank named instead of hanging; the launcher prefixes each rank's lines and
//! stops the other ranks when one fails; ranks restarted by torchrun meet again in its agent's store.

use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tagfix::train::dist::launch::{self, LaunchRequest, Sink};
use tagfix::train::dist::{
    AgentStore, DistBackend, DistError, Fingerprint, GroupOptions, ProcessGroup, Rendezvous,
    Suspect,
};
use tch::{Device, Kind, Tensor};

/// The collective timeout of the rank processes: long enough for a loaded machine, short enough
/// that the hang case ends soon.
const TIMEOUT: Duration = Duration::from_secs(20);
const HANG_TIMEOUT: Duration = Duration::from_secs(4);

/// The body of one test case run in the parent process.
type Case = fn() -> Result<(), String>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os("RANK").is_some() || std::env::var_os("SLURM_PROCID").is_some() {
        if let Some(role) = args.get(1) {
            std::process::exit(rank_main(role));
        }
    }
    let cases: [(&str, Case); 11] = [
        ("collectives_agree_on_both_ranks", collectives),
        (
            "gradients_summed_during_the_backward_pass_equal_the_sums_after_it",
            overlap,
        ),
        ("slurm_contract_ranks_meet", slurm_ranks),
        (
            "a_sharded_optimizer_state_on_three_ranks_equals_the_whole_state",
            sharded_optimizer,
        ),
        (
            "cli_nproc_per_node_prefixes_and_fails_with_the_rank",
            cli_launcher,
        ),
        ("agreement_check_names_the_disagreeing_rank", disagreement),
        ("a_rank_that_dies_is_named", || peer_fails("die", 1)),
        ("a_rank_that_hangs_is_named", || peer_fails("hang", 1)),
        ("rank_0_taking_the_store_along_is_named", || {
            peer_fails("die", 0)
        }),
        (
            "launcher_prefixes_output_and_stops_the_others",
            launcher_stops_the_others,
        ),
        (
            "ranks_restarted_by_torchrun_meet_again_in_its_agents_store",
            agent_store_restarts,
        ),
    ];
    let mut failed = 0;
    for (name, case) in cases {
        match case() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("---- {name} ----\n{e}");
                println!("test {name} ... FAILED");
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        cases.len() - failed
    );
    std::process::exit(i32::from(failed > 0));
}

// ---------------------------------------------------------------- rank side

fn group(timeout: Duration) -> Result<ProcessGroup, DistError> {
    let rdzv = Rendezvous::from_env()?.expect("torchrun variables set by the test");
    let mut opts = GroupOptions::new(DistBackend::Gloo, timeout);
    opts.bucket_bytes = 16; // several buckets even for these small tensors
    ProcessGroup::new(&rdzv, &opts)
}

/// A rank process: returns its exit status (0: behaved as the case expects). SIGPIPE is first
/// given back its default action, as tagfix's `main` does (Rust's runtime ignores it).
fn rank_main(role: &str) -> i32 {
    // SAFETY: before any thread starts; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let result = match role {
        "collectives" => rank_collectives(),
        "overlap" => rank_overlap(),
        "zero" => rank_zero(),
        "disagree" => rank_disagree(),
        "die" | "hang" | "survive" => rank_peer(role),
        "launcher" => rank_launcher(),
        other => Err(format!("unknown role {other}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rank error: {e}");
            1
        }
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape(-1)).expect("values")
}

fn expect(what: &str, got: Vec<f64>, want: Vec<f64>) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

/// Writing to a pipe (or a socket, as Gloo writes) whose reader is gone fails with EPIPE: a rank
/// that has joined its group is not ended by SIGPIPE when a peer dies (it names the peer instead).
fn write_to_a_closed_pipe() -> Result<(), String> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors; each is owned once (closed, or by the File).
    let mut writer = unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        libc::close(fds[0]);
        std::fs::File::from_raw_fd(fds[1])
    };
    match writer.write_all(b"x") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Err(format!(
            "writing to a closed pipe: {other:?}, expected a broken pipe"
        )),
    }
}

fn rank_collectives() -> Result<(), String> {
    let mut pg = group(TIMEOUT).map_err(|e| e.to_string())?;
    write_to_a_closed_pipe()?;
    let (r, w) = (pg.rank() as f64, pg.world_size() as f64);
    let e = |e: DistError| e.to_string();
    // Sum and mean over buckets of mixed kinds; a non-contiguous tensor is written back in place.
    let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (r + 1.0);
    let b = Tensor::from_slice(&[10.0f64, 20.0, 30.0, 40.0])
        .reshape([2, 2])
        .tr()
        + r;
    pg.all_reduce_sum_(&[a.shallow_clone(), b.shallow_clone()])
        .map_err(e)?;
    expect("sum a", values(&a), vec![3.0, 6.0, 9.0])?;
    expect(
        "sum b (transposed)",
        values(&b),
        vec![21.0, 61.0, 41.0, 81.0],
    )?;
    // Sent as bf16 (8-bit mantissa): each rank's 1 + 2^-9 rounds to 1, so the sum is 2 where f32
    // gives 2 + 2^-8; the tensor stays f32, and integers travel as they are.
    let fine = Tensor::from_slice(&[1.0f32 + 2f32.powi(-9), 3.0]);
    let count = Tensor::from_slice(&[1_000_001i64 + pg.rank() as i64]);
    pg.all_reduce_sum_as_(
        &[fine.shallow_clone(), count.shallow_clone()],
        Kind::BFloat16,
    )
    .map_err(e)?;
    expect("sum as bf16", values(&fine), vec![2.0, 6.0])?;
    expect("integers beside bf16", values(&count), vec![2_000_003.0])?;
    if fine.kind() != Kind::Float {
        return Err(format!("the bf16 sum came back as {:?}", fine.kind()));
    }
    let m = Tensor::from_slice(&[r * 4.0, 1.0]);
    pg.all_reduce_mean_(&[m.shallow_clone()]).map_err(e)?;
    expect("mean", values(&m), vec![2.0, 1.0])?;
    // Parameters (leaves that require grad) take rank 1's values.
    let p = (Tensor::ones([5], (Kind::Float, Device::Cpu)) * (r + 7.0)).set_requires_grad(true);
    pg.broadcast_(&[p.shallow_clone()], 1).map_err(e)?;
    expect("broadcast", values(&p), vec![8.0; 5])?;
    expect(
        "scalars",
        pg.all_reduce_scalars(&[r, 0.5]).map_err(e)?,
        vec![1.0, 2.0 * 0.5],
    )?;
    // Rank r contributes r + 1 rows of width 2.
    let rows = Tensor::full([pg.rank() as i64 + 1, 2], r, (Kind::Float, Device::Cpu));
    let gathered = pg.all_gather(&rows).map_err(e)?;
    if gathered.len() != 2 {
        return Err(format!("gathered {} tensors", gathered.len()));
    }
    for (k, g) in gathered.iter().enumerate() {
        expect(
            &format!("gathered {k}"),
            values(g),
            vec![k as f64; 2 * (k + 1)],
        )?;
    }
    let bytes = pg
        .all_gather_bytes(format!("hello from {}", pg.rank()).as_bytes())
        .map_err(e)?;
    if bytes != [b"hello from 0".to_vec(), b"hello from 1".to_vec()] {
        return Err(format!("gathered bytes {bytes:?}"));
    }
    // Ranks failing together agree without a collective which one acts: exactly one is first,
    // and the other hears what it tells.
    let first = pg.first_to("save").ok_or("the store cannot be reached")?;
    let firsts = pg
        .all_reduce_scalars(&[f64::from(u8::from(first))])
        .map_err(e)?;
    expect("ranks first to save", firsts, vec![1.0])?;
    if first {
        pg.tell("save", &format!("saved by rank {}", pg.rank()));
    } else {
        let heard = pg.hear("save", TIMEOUT);
        if !heard
            .as_deref()
            .is_some_and(|h| h.starts_with("saved by rank "))
        {
            return Err(format!("heard {heard:?} from the first rank"));
        }
    }
    if let Some(heard) = pg.hear("nothing told", Duration::from_millis(200)) {
        return Err(format!("heard {heard:?} where nothing was told"));
    }
    pg.barrier().map_err(e)?;
    pg.check_agreement(&fingerprint("cfg")).map_err(e)?;
    println!("collectives ok on rank {} of {w}", pg.rank());
    Ok(())
}

/// A small chain of parameters (`w1`, `w2`, `w3`) and one the loss never uses (`unused`), valued per
/// rank; `leaves` makes fresh copies (leaves without hooks) for the reference gradients.
struct Chain {
    params: Vec<Tensor>,
}

impl Chain {
    fn new(rank: f64) -> Chain {
        let leaf = |n: i64, shape: &[i64], scale: f64| {
            (Tensor::arange(n, (Kind::Float, Device::Cpu)).reshape(shape) * scale + rank * 0.25)
                .set_requires_grad(true)
        };
        Chain {
            params: vec![
                leaf(16, &[4, 4], 0.1),
                leaf(16, &[4, 4], -0.05),
                leaf(4, &[4], 0.3),
                leaf(3, &[3], 1.0),
            ],
        }
    }

    fn leaves(&self) -> Chain {
        Chain {
            params: self
                .params
                .iter()
                .map(|p| p.detach().copy().set_requires_grad(true))
                .collect(),
        }
    }

    /// One micro-batch's backward pass (input `x`, [2, 4]).
    fn backward(&self, x: &Tensor) {
        let [w1, w2, w3, _] = &self.params[..] else {
            unreachable!()
        };
        let h = x.matmul(w1).tanh().matmul(w2) + w3;
        (&h * &h).sum(Kind::Float).backward();
    }

    fn grads(&self) -> Vec<Tensor> {
        self.params[..3].iter().map(Tensor::grad).collect()
    }

    fn zero_grad(&self) {
        for p in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }
}

/// The overlapped exchange (hooks in the backward pass) gives exactly the gradients of the
/// exchange after it, f32 and bf16, with only the armed (last) micro-batch overlapped; after the
/// first exchange's bucket rebuild every bucket with a gradient starts during the backward pass;
/// a parameter the loss never uses keeps no gradient.
/// The same small model on every rank (no random draw): four parameters of 300, 1000, 77 and 5
/// values, so that the three shares cut two of them.
fn zero_model() -> tch::nn::VarStore {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    for (k, (module, name, shape)) in [
        ("", "embed", &[100i64, 10][..]),
        ("layer", "bias", &[77]),
        ("layer", "weight", &[10, 30]),
        ("norm", "weight", &[5]),
    ]
    .into_iter()
    .enumerate()
    {
        let n: i64 = shape.iter().product();
        let init = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * (0.37 + k as f64)).sin();
        let path = if module.is_empty() {
            root.clone()
        } else {
            &root / module
        };
        let _ = path.var_copy(name, &init.reshape(shape));
    }
    vs
}

/// A sharded optimizer state over the ranks (each updates its slices, the update norms summed over
/// the ranks, the slices broadcast; the per-parameter loop of `Trainer`'s per-micro-batch path)
/// against the whole state on this rank: the same parameters bit for bit after each of three steps,
/// update norms to rounding; rank 0's gathered checkpoint state equals the whole state.
fn rank_zero() -> Result<(), String> {
    use tagfix::train::config::TrainConfig;
    use tagfix::train::dist::zero;
    use tagfix::train::optim::AdamW;
    let mut pg = group(TIMEOUT).map_err(|e| e.to_string())?;
    let e = |e: tagfix::Error| e.to_string();
    let cfg = TrainConfig {
        weight_decay: 0.05,
        ..Default::default()
    };
    let (whole_vs, sharded_vs) = (zero_model(), zero_model());
    let mut whole = AdamW::new(&whole_vs, &[], &cfg).map_err(e)?;
    let mut sharded = AdamW::new(&sharded_vs, &[], &cfg).map_err(e)?;
    let summary = sharded.shard(pg.rank(), pg.world_size()).map_err(e)?;
    println!("{summary}");
    for step in 0..3 {
        for (vs, opt) in [(&whole_vs, &mut whole), (&sharded_vs, &mut sharded)] {
            opt.zero_grad();
            let loss = vs
                .variables()
                .values()
                .map(|v| (v * (v * (1.0 + step as f64)).cos()).sum(Kind::Float))
                .reduce(|a, b| a + b)
                .expect("parameters");
            loss.backward();
        }
        let want = whole.step(1e-2, true).map_err(e)?.expect("measured");
        let got = sharded
            .step_with(1e-2, true, |n| {
                Ok(pg.all_reduce_sum_(std::slice::from_ref(n))?)
            })
            .map_err(e)?
            .expect("measured");
        zero::broadcast_params(&mut pg, &sharded).map_err(|e| e.to_string())?;
        for ((g, a), (h, b)) in got.iter().zip(want.iter()) {
            if g != h || (a - b).abs() > 1e-12 * b.abs() {
                return Err(format!("step {step}: update norm {g:?} {a} vs {h:?} {b}"));
            }
        }
        let (w, s) = (whole_vs.variables(), sharded_vs.variables());
        for (name, t) in &w {
            expect(&format!("step {step}: {name}"), values(&s[name]), values(t))?;
        }
    }
    let gathered = zero::gather_state(&mut pg, &sharded).map_err(|e| e.to_string())?;
    match (pg.rank(), gathered) {
        (0, Some(state)) => {
            let want = whole.state_tensors();
            if state.len() != want.len() {
                return Err(format!(
                    "{} state tensors, want {}",
                    state.len(),
                    want.len()
                ));
            }
            for ((n, t), (m, u)) in state.iter().zip(&want) {
                if n != m {
                    return Err(format!("state tensor {n}, want {m}"));
                }
                expect(n, values(t), values(u))?;
            }
        }
        (0, None) => return Err("rank 0 gathered nothing".into()),
        (_, Some(_)) => return Err("a rank other than 0 gathered the state".into()),
        (_, None) => {}
    }
    println!("zero ok on rank {} of {}", pg.rank(), pg.world_size());
    Ok(())
}

fn rank_overlap() -> Result<(), String> {
    let mut pg = group(TIMEOUT).map_err(|e| e.to_string())?;
    let e = |e: DistError| e.to_string();
    let r = pg.rank() as f64;
    let input = |k: f64| {
        Tensor::arange(8, (Kind::Float, Device::Cpu)).reshape([2, 4]) * (0.1 * k) - r * 0.3
    };
    let model = Chain::new(r);
    let rounds = [
        (0, false),
        (1, false),
        (2, false),
        (3, true),
        (4, true),
        (5, true),
    ];
    for (round, bf16) in rounds {
        if round == 0 || round == 3 {
            // Fresh hooks (the f32 ones replaced by the bf16 ones) in registration order.
            pg.overlap_grads(&model.params, bf16).map_err(e)?;
        }
        let reference = model.leaves();
        model.zero_grad();
        // Micro-batch 1 accumulates locally, micro-batch 2's backward pass is armed.
        model.backward(&input(1.0 + round as f64));
        pg.arm_grad_overlap();
        model.backward(&input(2.0));
        let stats = pg.finish_grad_overlap().map_err(e)?;
        reference.backward(&input(1.0 + round as f64));
        reference.backward(&input(2.0));
        let want = reference.grads();
        if bf16 {
            pg.all_reduce_sum_as_(&want, Kind::BFloat16).map_err(e)?;
        } else {
            pg.all_reduce_sum_(&want).map_err(e)?;
        }
        for (k, (got, want)) in model.grads().iter().zip(&want).enumerate() {
            expect(
                &format!("round {round}: gradient {k}"),
                values(got),
                values(want),
            )?;
        }
        if model.params[3].grad().defined() {
            return Err(format!(
                "round {round}: the unused parameter got a gradient"
            ));
        }
        // 16-byte buckets: one per parameter. Before the rebuild the unused parameter is first
        // (reverse registration order) and holds every bucket back until the backward pass ends;
        // after it, it is last, and the buckets of w3 and w2 start while w1's gradient is computed.
        let want = if round % 3 == 0 { 0 } else { 2 };
        if stats.buckets != 4 || stats.overlapped != want {
            return Err(format!(
                "round {round}: {stats:?}, want 4 buckets, {want} overlapping the backward pass"
            ));
        }
        // The 3 used gradients are copied into the buckets at the first exchange and at the one
        // after the rebuild; then they are views of the buckets (the unused one stays without).
        let copied = if round % 3 == 2 { 0 } else { 3 };
        if stats.copied != copied {
            return Err(format!(
                "round {round}: {stats:?}, want {copied} gradients copied into the buckets"
            ));
        }
    }
    println!("overlap ok on rank {}", pg.rank());
    Ok(())
}

fn fingerprint(label_embed: &str) -> Fingerprint {
    Fingerprint {
        config_sha256: "c0ffee".into(),
        vocab_sha256: "v0cab".into(),
        label_embed_sha256: label_embed.into(),
        step: 40,
    }
}

fn rank_disagree() -> Result<(), String> {
    let mut pg = group(TIMEOUT).map_err(|e| e.to_string())?;
    let mine = fingerprint(if pg.rank() == 1 { "other" } else { "cfg" });
    match pg.check_agreement(&mine) {
        Ok(()) => Err("the agreement check passed".into()),
        Err(e @ DistError::Disagreement { .. }) => {
            println!("refused: {e}");
            Ok(())
        }
        Err(e) => Err(format!("unexpected error: {e}")),
    }
}

/// `die` / `hang`: take part in one all-reduce, then exit without a word or stop responding;
/// `survive`: the other rank, which must fail its second all-reduce and name the culprit.
fn rank_peer(role: &str) -> Result<(), String> {
    let timeout = if role == "survive" && std::env::var_os("EXPECT_HANG").is_some() {
        HANG_TIMEOUT
    } else {
        TIMEOUT
    };
    let mut pg = group(timeout).map_err(|e| e.to_string())?;
    pg.set_step(7);
    let t = Tensor::ones([4], (Kind::Float, Device::Cpu));
    pg.all_reduce_sum_(&[t.shallow_clone()])
        .map_err(|e| e.to_string())?;
    match role {
        "die" => {
            // As a crash: no destructors, no note in the store.
            unsafe { libc::_exit(0) }
        }
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(60));
        },
        _ => {}
    }
    pg.set_step(8);
    match pg.all_reduce_sum_(&[t.shallow_clone()]) {
        Ok(()) => Err("the second all-reduce succeeded without the other rank".into()),
        Err(e) => {
            let suspect = match &e {
                DistError::Collective {
                    suspect: Some(s), ..
                } => s.clone(),
                _ => return Err(format!("no rank blamed: {e}")),
            };
            println!("failed as expected: {e}");
            println!("suspect: {suspect:?}");
            Ok(())
        }
    }
}

fn rank_launcher() -> Result<(), String> {
    let rank = std::env::var("RANK").unwrap_or_default();
    println!("hello from {rank}");
    eprintln!("to stderr from {rank}");
    if rank == "1" {
        std::process::exit(3);
    }
    std::thread::sleep(Duration::from_secs(600));
    Err("rank 0 was not stopped".into())
}

// ---------------------------------------------------------------- test side

/// What a sink writes into, read back by [`text`].
type Captured = Arc<Mutex<Vec<u8>>>;

fn sinks() -> (Sink, Sink, Captured, Captured) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    (out.clone(), err.clone(), out, err)
}

fn text(buf: &Captured) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// Runs `role` on two ranks through the launcher; returns (stdout, stderr) on success.
fn launch_two(role: &str) -> Result<(String, String), String> {
    launch_ranks(role, 2)
}

/// Runs `role` on `n` ranks through the launcher; returns (stdout, stderr) on success.
fn launch_ranks(role: &str, n: usize) -> Result<(String, String), String> {
    let (out, err, out_buf, err_buf) = sinks();
    let req = LaunchRequest::new(
        std::env::current_exe().map_err(|e| e.to_string())?,
        vec![OsString::from(role)],
        n,
    );
    let result = launch::launch(&req, out, err);
    let (o, e) = (text(&out_buf), text(&err_buf));
    result.map_err(|x| format!("{x}\nstdout:\n{o}\nstderr:\n{e}"))?;
    Ok((o, e))
}

fn collectives() -> Result<(), String> {
    let (out, _) = launch_two("collectives")?;
    for r in 0..2 {
        let line = format!("[rank {r}] collectives ok on rank {r} of 2");
        if !out.contains(&line) {
            return Err(format!("missing {line:?} in:\n{out}"));
        }
    }
    Ok(())
}

fn sharded_optimizer() -> Result<(), String> {
    let (out, _) = launch_ranks("zero", 3)?;
    for r in 0..3 {
        let line = format!("[rank {r}] zero ok on rank {r} of 3");
        if !out.contains(&line) {
            return Err(format!("missing {line:?} in:\n{out}"));
        }
    }
    Ok(())
}

fn overlap() -> Result<(), String> {
    let (out, _) = launch_two("overlap")?;
    for r in 0..2 {
        let line = format!("[rank {r}] overlap ok on rank {r}");
        if !out.contains(&line) {
            return Err(format!("missing {line:?} in:\n{out}"));
        }
    }
    Ok(())
}

fn disagreement() -> Result<(), String> {
    let (out, _) = launch_two("disagree")?;
    for r in 0..2 {
        let line = format!(
            "[rank {r}] refused: rank 1 disagrees with rank 0 on label_embed_sha256: other (rank 0: cfg)"
        );
        if !out.contains(&line) {
            return Err(format!("missing {line:?} in:\n{out}"));
        }
    }
    Ok(())
}

fn spawn_rank(role: &str, rank: usize, port: u16, hang: bool) -> Result<Child, String> {
    let rank = rank.to_string();
    let vars = [
        ("RANK", rank.as_str()),
        ("LOCAL_RANK", &rank),
        ("WORLD_SIZE", "2"),
        ("LOCAL_WORLD_SIZE", "2"),
    ];
    spawn_with(role, &vars, port, hang)
}

/// This binary as rank process `role`, with `vars` and the master at 127.0.0.1:`port`.
fn spawn_with(role: &str, vars: &[(&str, &str)], port: u16, hang: bool) -> Result<Child, String> {
    let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    cmd.arg(role)
        .envs(vars.iter().copied())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if hang {
        cmd.env("EXPECT_HANG", "1");
    }
    cmd.spawn().map_err(|e| e.to_string())
}

/// Rank `culprit` dies or hangs after one collective; the other rank must fail its next one
/// with `culprit` named, and exit by itself.
fn peer_fails(how: &str, culprit: usize) -> Result<(), String> {
    let port = launch::free_port("127.0.0.1").map_err(|e| e.to_string())?;
    let hang = how == "hang";
    let survivor = 1 - culprit;
    let mut bad = spawn_rank(how, culprit, port, hang)?;
    let good = spawn_rank("survive", survivor, port, hang)?;
    let good_out = good.wait_with_output().map_err(|e| e.to_string())?;
    let _ = bad.kill();
    let _ = bad.wait();
    let stdout = String::from_utf8_lossy(&good_out.stdout);
    let report = format!(
        "survivor (rank {survivor}) {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        good_out.status,
        String::from_utf8_lossy(&good_out.stderr)
    );
    if !good_out.status.success() {
        return Err(report);
    }
    let expected = match (how, culprit) {
        ("die", 0) => format!("{:?}", Suspect::StoreHostGone),
        ("die", r) => format!("Died {{ rank: {r}, last_step: Some(7) }}"),
        (_, r) => format!("Behind {{ rank: {r}, at: 1, last_step: Some(7) }}"),
    };
    if !stdout.contains(&format!("suspect: {expected}")) {
        return Err(format!("expected suspect {expected}\n{report}"));
    }
    if !stdout.contains("on rank") || !stdout.contains(&format!("rank {culprit}")) {
        return Err(format!("the error does not name rank {culprit}\n{report}"));
    }
    Ok(())
}

fn launcher_stops_the_others() -> Result<(), String> {
    let (out, err, out_buf, err_buf) = sinks();
    let req = LaunchRequest::new(
        std::env::current_exe().map_err(|e| e.to_string())?,
        vec![OsString::from("launcher")],
        2,
    );
    let result = launch::launch(&req, out, err);
    let (o, e) = (text(&out_buf), text(&err_buf));
    match &result {
        // Rank 1 stopped its run itself (exit 3): the launch exits 3 too, not 2.
        Err(
            err @ DistError::RankFailed {
                rank: 1,
                status,
                code: Some(3),
            },
        ) if status == "exited with status 3"
            && err.kind() == tagfix::error::ErrorKind::Stopped => {}
        other => return Err(format!("{other:?}\nstdout:\n{o}\nstderr:\n{e}")),
    }
    for (buf, line) in [
        (&o, "[rank 0] hello from 0\n"),
        (&o, "[rank 1] hello from 1\n"),
        (&e, "[rank 1] to stderr from 1\n"),
    ] {
        if !buf.contains(line) {
            return Err(format!("missing {line:?}\nstdout:\n{o}\nstderr:\n{e}"));
        }
    }
    // Rank 0 was stopped, not left to finish its sleep and report that.
    if e.contains("rank 0 was not stopped") {
        return Err(format!("rank 0 ran to its end\nstderr:\n{e}"));
    }
    Ok(())
}

/// Two ranks described by Slurm's variables (as `srun` sets them) meet and compute correctly.
fn slurm_ranks() -> Result<(), String> {
    let port = launch::free_port("127.0.0.1").map_err(|e| e.to_string())?;
    let children = (0..2)
        .map(|r: usize| {
            let r = r.to_string();
            let vars = [
                ("SLURM_PROCID", r.as_str()),
                ("SLURM_LOCALID", &r),
                ("SLURM_NTASKS", "2"),
            ];
            spawn_with("collectives", &vars, port, false)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (r, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains(&format!("collectives ok on rank {r} of 2")) {
            return Err(format!(
                "rank {r} {:?}\nstdout:\n{stdout}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// torchrun with `--max-restarts` serves the store from its agent and keeps it across the restarts
/// of its ranks (`TORCHELASTIC_RESTART_COUNT`): each restarted attempt's ranks meet again, their
/// keys apart from the last attempt's, while two processes claiming one rank within an attempt are
/// still refused. (With one prefix for every attempt, the first restart was refused: "rank 0 was
/// claimed by 2 processes".)
fn agent_store_restarts() -> Result<(), String> {
    let port = launch::free_port("127.0.0.1").map_err(|e| e.to_string())?;
    let _agent = AgentStore::serve(port, TIMEOUT).map_err(|e| e.to_string())?;
    let attempt = |restart: &str| -> Result<Vec<std::process::Output>, String> {
        let children = (0..2usize)
            .map(|r| {
                let r = r.to_string();
                let vars = [
                    ("RANK", r.as_str()),
                    ("LOCAL_RANK", &r),
                    ("WORLD_SIZE", "2"),
                    ("LOCAL_WORLD_SIZE", "2"),
                    ("TORCHELASTIC_USE_AGENT_STORE", "True"),
                    ("TORCHELASTIC_RESTART_COUNT", restart),
                ];
                spawn_with("collectives", &vars, port, false)
            })
            .collect::<Result<Vec<_>, _>>()?;
        children
            .into_iter()
            .map(|c| c.wait_with_output().map_err(|e| e.to_string()))
            .collect()
    };
    let report = |o: &std::process::Output| {
        format!(
            "{:?}\nstdout:\n{}\nstderr:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    for restart in ["0", "1"] {
        for (r, out) in attempt(restart)?.iter().enumerate() {
            let line = format!("collectives ok on rank {r} of 2");
            if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(&line) {
                return Err(format!("attempt {restart}, rank {r}: {}", report(out)));
            }
        }
    }
    for (r, out) in attempt("1")?.iter().enumerate() {
        let refused = format!("rank {r} was claimed by 2 processes");
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains(&refused) {
            return Err(format!("attempt 1 again, rank {r}: {}", report(out)));
        }
    }
    Ok(())
}

/// `tagfix train --nproc-per-node 2` with inputs missing: the ranks report their usage error with
/// their prefix, the launcher names a failed rank and exits 2.
fn cli_launcher() -> Result<(), String> {
    let run = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
        .args(["train", "--nproc-per-node", "2", "--out"])
        .arg(run.path())
        .env_remove("RANK")
        .env_remove("SLURM_PROCID")
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("{:?}\nstderr:\n{stderr}", out.status);
    if out.status.code() != Some(2) {
        return Err(format!("expected exit 2: {report}"));
    }
    let failed = (0..2).any(|r| {
        stderr.contains(&format!(
            "rank {r} exited with status 2; the other ranks were stopped"
        ))
    });
    let prefixed = (0..2).any(|r| stderr.contains(&format!("[rank {r}] error: ")));
    if !failed || !prefixed {
        return Err(format!(
            "no prefixed rank error or no failed rank named: {report}"
        ));
    }
    Ok(())
}
