//! Reads the process table N times with ukload's `/proc` readers and with
//! the procfs crate, and prints the time per pass of each. Teardown and the
//! memory phase scan the table (stat of every process, then the environment
//! and owner of every process, then smaps_rollup of the run's processes), so
//! this is the hot path at 1000 guests; src/proc.rs chose, reader by reader,
//! from these figures.
//!
//! "hand parser" rows run the parsers ukload had before it read `stat` and
//! `smaps_rollup` with procfs (copied here so the comparison can be rerun);
//! "ukload" rows run what src/proc.rs does now.
//!
//! `cargo run --release --example proc_table_bench -- [PASSES] [EXTRA_PROCS]`:
//! EXTRA_PROCS sleeping children (default 500) stand in for a large run's
//! VMMs; they carry a run marker so the marker scan finds them. They are
//! killed and reaped before the bench exits.

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use procfs::process::Process;
use ukload::proc;

const DEFAULT_PASSES: usize = 50;
const DEFAULT_EXTRA: usize = 500;
const RUN: &str = "procbench";

fn time<T>(passes: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut last = None;
    let start = Instant::now();
    for _ in 0..passes {
        last = Some(std::hint::black_box(f()));
    }
    (start.elapsed() / passes as u32, last.unwrap())
}

/// The hand `stat` parser replaced by procfs: pid, state, ppid, pgrp,
/// session, tty_nr and starttime, the command name up to the last `)`.
fn hand_stat(pid: i32) -> Option<(i32, char, i32, i32, i32, i32, u64)> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let int = |i: usize| rest.get(i)?.parse::<i32>().ok();
    Some((
        pid,
        rest.first()?.chars().next()?,
        int(1)?,
        int(2)?,
        int(3)?,
        int(4)?,
        rest.get(19)?.parse().ok()?,
    ))
}

/// The hand `smaps_rollup` parser replaced by procfs: `Rss:` and `Pss:` in kB.
fn hand_smaps(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let (mut rss, mut pss) = (0, 0);
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let slot = match w.next() {
            Some("Rss:") => &mut rss,
            Some("Pss:") => &mut pss,
            _ => continue,
        };
        *slot = w.next()?.parse().ok()?;
    }
    Some((rss, pss))
}

/// The marker scan done with procfs only (environ map, full status, stat).
fn procfs_marked() -> usize {
    let key = OsString::from(ukload::ENV_RUN);
    let uid = proc::euid();
    procfs::process::all_processes()
        .map(|it| {
            it.filter_map(|p| p.ok())
                .filter(|p| {
                    let env: HashMap<OsString, OsString> = match p.environ() {
                        Ok(e) => e,
                        Err(_) => return false,
                    };
                    env.get(&key).is_some_and(|v| v == RUN)
                        && p.status().is_ok_and(|s| s.ruid == uid && s.euid == uid)
                        && p.stat().is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

fn row(what: &str, who: &str, t: Duration, n: impl std::fmt::Display) {
    println!("{what:<13}{who:<14}{t:>10.2?}  ({n})");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let passes: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_PASSES);
    let extra: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_EXTRA);
    let mut children: Vec<Child> = (0..extra)
        .map(|_| {
            Command::new("sleep")
                .arg("600")
                .env(ukload::ENV_RUN, RUN)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawning sleep")
        })
        .collect();
    let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
    let key = OsString::from(ukload::ENV_RUN);

    println!(
        "{} processes, {passes} passes each (time per pass)",
        proc::list_pids().len()
    );
    let (t, v) = time(passes, || {
        proc::list_pids().into_iter().filter_map(hand_stat).count()
    });
    row("stat table", "hand parser", t, v);
    let (t, v) = time(passes, proc::table);
    row("stat table", "ukload", t, v.len());
    let (t, v) = time(passes, || {
        procfs::process::all_processes()
            .map(|it| it.filter_map(|p| p.ok()?.stat().ok()).count())
            .unwrap_or(0)
    });
    row("stat table", "procfs iter", t, v);

    let table = proc::table();
    let (t, v) = time(passes, || proc::scan_marked_in(&table, Some(RUN)).len());
    row("marker scan", "ukload", t, v);
    let (t, v) = time(passes, procfs_marked);
    row("marker scan", "procfs", t, v);

    let (t, v) = time(passes, || {
        pids.iter()
            .filter_map(|&p| proc::environ_var(p, ukload::ENV_RUN).ok().flatten())
            .count()
    });
    row("environ", "ukload", t, v);
    let (t, v) = time(passes, || {
        pids.iter()
            .filter_map(|&p| Process::new(p).ok()?.environ().ok()?.get(&key).cloned())
            .count()
    });
    row("environ", "procfs", t, v);

    let (t, v) = time(passes, || {
        pids.iter().filter_map(|&p| proc::uids(p).ok()).count()
    });
    row("status uids", "ukload", t, v);
    let (t, v) = time(passes, || {
        pids.iter()
            .filter_map(|&p| {
                let s = Process::new(p).ok()?.status().ok()?;
                Some((s.ruid, s.euid))
            })
            .count()
    });
    row("status uids", "procfs", t, v);

    let (t, v) = time(passes, || {
        pids.iter().filter_map(|&p| hand_smaps(p)).count()
    });
    row("smaps_rollup", "hand parser", t, v);
    let (t, v) = time(passes, || {
        pids.iter()
            .filter_map(|&p| proc::smaps_rollup(p).ok())
            .count()
    });
    row("smaps_rollup", "ukload", t, v);

    for c in &mut children {
        let _ = c.kill();
    }
    for c in &mut children {
        let _ = c.wait();
    }
}
