//! Test fixture (not shipped in guest images): the real guest agent with
//! injectable behaviour, so tests can prove what ukload reports and cleans up.
//!
//! Accepts ukload-guest's flags (`--listen`, `--port`, `--cid`, `--framing`,
//! `--boot-delay-ms`) plus:
//! - `--alloc-mb N`: allocate and touch N MiB before listening;
//! - `--alloc-mb-per-instance N`: N × `$UKLOAD_INSTANCE` MiB;
//! - `--ignore-sigterm`: survive SIGTERM (needs SIGKILL);
//! - `--never-listen`: never become ready (sleeps, bounded);
//! - `--exit-code N`: exit with N at once.
//!
//! Without `--listen` it listens on a hybrid socket in `$TMPDIR`.

use std::time::Duration;
use ukload::framing::Framing;
use ukload::guest::{self, AgentConfig};

/// Upper bound on how long `--never-listen` waits (it is killed long before).
const NEVER_LISTEN_MAX: Duration = Duration::from_secs(600);
const MIB: usize = 1024 * 1024;
const PAGE: usize = 4096;

fn die(msg: &str) -> ! {
    eprintln!("fixture_guest: {msg}");
    std::process::exit(64)
}

fn main() {
    guest::mark_process_start();
    let mut args = std::env::args().skip(1).peekable();
    let mut listen: Option<String> = None;
    let mut port: Option<u32> = None;
    let mut cfg = AgentConfig::default();
    let mut alloc_mb = 0f64;
    let mut never_listen = false;
    while let Some(a) = args.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = |what: &str| -> String {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| die(&format!("{what} needs a value")))
        };
        let num = |s: String, what: &str| -> f64 {
            s.parse()
                .unwrap_or_else(|_| die(&format!("{what}: bad number {s}")))
        };
        match name.as_str() {
            "--listen" => listen = Some(value("--listen")),
            "--port" => port = Some(num(value("--port"), "--port") as u32),
            "--cid" => cfg.cid = Some(num(value("--cid"), "--cid") as u32),
            "--framing" => {
                cfg.framing = value("--framing")
                    .parse::<Framing>()
                    .unwrap_or_else(|e| die(&format!("{e:?}")))
            }
            "--boot-delay-ms" => {
                cfg.boot_delay =
                    Duration::from_millis(num(value("--boot-delay-ms"), "--boot-delay-ms") as u64)
            }
            "--alloc-mb" => alloc_mb = num(value("--alloc-mb"), "--alloc-mb"),
            "--alloc-mb-per-instance" => {
                let per = num(value("--alloc-mb-per-instance"), "--alloc-mb-per-instance");
                let inst: f64 = std::env::var("UKLOAD_INSTANCE")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0.0);
                alloc_mb = per * inst;
            }
            "--ignore-sigterm" => {
                // SAFETY: setting a signal disposition to SIG_IGN has no memory effects.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            }
            "--never-listen" => never_listen = true,
            "--exit-code" => {
                let code = num(value("--exit-code"), "--exit-code") as i32;
                eprintln!("fixture_guest: exiting with {code} as asked");
                std::process::exit(code);
            }
            other => die(&format!("unknown flag {other}")),
        }
    }
    // Memory held for the life of the process, every page touched.
    let mut hold = vec![0u8; (alloc_mb * MIB as f64) as usize];
    for i in (0..hold.len()).step_by(PAGE) {
        hold[i] = 1;
    }
    std::hint::black_box(&hold);
    if never_listen {
        println!("fixture_guest: never listening, as asked");
        std::thread::sleep(NEVER_LISTEN_MAX);
        std::process::exit(1);
    }
    let listen = listen.unwrap_or_else(|| {
        let dir = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
        format!("uds:{dir}/fixture-{}.sock", std::process::id())
    });
    cfg.listen =
        guest::parse_listen(&listen, port).unwrap_or_else(|e| die(&format!("--listen: {e:?}")));
    if let Err(e) = guest::run_agent(cfg) {
        eprintln!("fixture_guest: {e}");
        std::process::exit(1);
    }
    drop(hold);
}
