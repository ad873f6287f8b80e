//! `tagfix doctor`: prints the environment report as a table or JSON; exit 1 when an item is broken
//! or a `--require`d one is not present.

use super::args::DoctorArgs;
use super::ExitStatus;
use tagfix::doctor::{diagnose, Status};

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitStatus> {
    let report = diagnose();
    let failing: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| {
            c.status == Status::Error
                || (c.status != Status::Ok && args.require.iter().any(|r| r == c.name))
        })
        .map(|c| c.name)
        .collect();
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["failing"] = serde_json::json!(failing);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("tagfix {}", report.version);
        for c in &report.checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Absent => "--  ",
                Status::Error => "FAIL",
            };
            println!("{mark} {:<17} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("     {:<17} fix: {fix}", "");
            }
        }
        if !failing.is_empty() {
            println!("failing: {}", failing.join(", "));
        }
    }
    Ok(if failing.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
