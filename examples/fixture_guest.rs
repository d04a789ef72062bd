//! Test fixture (not shipped in guest images): the real guest agent with
//! injectable behaviour, so tests can prove what ukload reports and cleans up.
//!
//! Accepts ukload-guest's flags (`--listen`, `--port`, `--cid`, `--framing`,
//! `--boot-delay-ms`) plus:
//! - `--alloc-mb N`: allocate and touch N MiB before listening;
//! - `--alloc-mb-per-instance N`: N × `$UKLOAD_INSTANCE` MiB;
//! - `--boot-delay-ms-per-instance N`: N × `$UKLOAD_INSTANCE` ms more boot
//!   delay (after `--boot-delay-ms`), so guests become ready one by one;
//! - `--ignore-sigterm`: survive SIGTERM (needs SIGKILL);
//! - `--never-listen`: never become ready (sleeps, bounded);
//! - `--exit-code N`: exit with N at once;
//! - `--fault FAULT`: misbehave as FAULT (every instance);
//! - `--fault-map 'I=FAULT,J=FAULT,...'`: per instance, keyed by
//!   `$UKLOAD_INSTANCE` (wins over `--fault`); instances not named are healthy.
//!
//! FAULT is one of (arguments after `:`):
//! - boot: `never-listen`, `crash-boot` (abort → SIGABRT), `exit:N`,
//!   `ignore-term` (healthy but survives SIGTERM), `daemon` (double-forks a
//!   `setsid` daemon that serves the agent, the launcher exits 0),
//!   `daemon-sleep` (double-forks a `setsid` daemon that just sleeps, the
//!   launcher serves), `tree:N:MB` (forks N children that each touch MB MiB,
//!   then serves), `crash-after:MS` (serves, then aborts MS ms after
//!   starting to listen: a crash after boot), `stop-after:MS` (serves, then
//!   stops itself with SIGSTOP after MS ms), `escape` (double-forks a child
//!   that clears its environment and calls `setsid`, so it carries no
//!   marker and is in no group of ukload's, then serves), `fork-chain`
//!   (a child that forks, `setsid`s and exits every millisecond, with an
//!   empty environment, then serves);
//! - protocol (a custom accept loop on the real hybrid-vsock listener, each
//!   applied to every connection): `accept-silent` (accepts, never answers),
//!   `garbage` (a frame of non-JSON bytes), `huge-length` (a length prefix of
//!   4 GiB − 1), `huge-line` (a 20 MiB line), `bad-utf8` (a frame that is not
//!   UTF-8), `close-mid-frame` (half a reply, then close), `slow:MS` (the
//!   right reply, one byte every MS ms: slow-loris), `wrong-id` (a valid
//!   reply to another request id).
//!
//! Without `--listen` it listens on a hybrid socket in `$TMPDIR`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use ukload::framing::{FrameReader, Framing, LENGTH_PREFIX_LEN};
use ukload::guest::{self, AgentConfig, ListenAddr};
use ukload::jsonrpc::{self, PingInfo};
use ukload::vsock::HybridListener;

/// Upper bound on how long any fixture process waits or sleeps (it is
/// killed long before: this only keeps a leaked fixture from living forever).
const LIFETIME_MAX: Duration = Duration::from_secs(600);
const MIB: usize = 1024 * 1024;
const PAGE: usize = 4096;
/// Size of the `huge-line` fault's line (twice ukload's 10 MiB frame limit).
const HUGE_LINE_LEN: usize = 20 * MIB;
/// The `huge-length` fault's prefix: the largest a 4-byte length can say.
const HUGE_LENGTH: u32 = u32::MAX;
/// How long a fault connection waits for the host's request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Accept poll interval of the fault server.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// Added to the request id by `wrong-id`.
const WRONG_ID_OFFSET: u64 = 1000;
/// Bytes sent by `close-mid-frame` before closing (of a longer frame).
const MID_FRAME_BYTES: usize = 10;

fn die(msg: &str) -> ! {
    eprintln!("fixture_guest: {msg}");
    std::process::exit(64)
}

/// One injectable misbehaviour.
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    NeverListen,
    CrashBoot,
    Exit(i32),
    IgnoreTerm,
    Daemon,
    DaemonSleep,
    Tree { children: u32, mb: f64 },
    AcceptSilent,
    Garbage,
    HugeLength,
    HugeLine,
    BadUtf8,
    CloseMidFrame,
    Slow(Duration),
    WrongId,
    CrashAfter(Duration),
    StopAfter(Duration),
    Escape,
    ForkChain,
}

impl Fault {
    fn parse(s: &str) -> Fault {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or("");
        let mut arg = |what: &str| -> f64 {
            let v = parts
                .next()
                .unwrap_or_else(|| die(&format!("fault {name}: needs {what}")));
            v.parse()
                .unwrap_or_else(|_| die(&format!("fault {name}: bad {what} {v:?}")))
        };
        match name {
            "never-listen" => Fault::NeverListen,
            "crash-boot" => Fault::CrashBoot,
            "exit" => Fault::Exit(arg("exit code") as i32),
            "ignore-term" => Fault::IgnoreTerm,
            "daemon" => Fault::Daemon,
            "daemon-sleep" => Fault::DaemonSleep,
            "tree" => Fault::Tree {
                children: arg("child count") as u32,
                mb: arg("MiB per child"),
            },
            "accept-silent" => Fault::AcceptSilent,
            "garbage" => Fault::Garbage,
            "huge-length" => Fault::HugeLength,
            "huge-line" => Fault::HugeLine,
            "bad-utf8" => Fault::BadUtf8,
            "close-mid-frame" => Fault::CloseMidFrame,
            "slow" => Fault::Slow(Duration::from_millis(arg("ms per byte") as u64)),
            "wrong-id" => Fault::WrongId,
            "crash-after" => Fault::CrashAfter(Duration::from_millis(arg("ms") as u64)),
            "stop-after" => Fault::StopAfter(Duration::from_millis(arg("ms") as u64)),
            "escape" => Fault::Escape,
            "fork-chain" => Fault::ForkChain,
            other => die(&format!("unknown fault {other:?}")),
        }
    }

    /// Faults served by the fixture's own accept loop instead of the agent.
    fn is_protocol(&self) -> bool {
        matches!(
            self,
            Fault::AcceptSilent
                | Fault::Garbage
                | Fault::HugeLength
                | Fault::HugeLine
                | Fault::BadUtf8
                | Fault::CloseMidFrame
                | Fault::Slow(_)
                | Fault::WrongId
        )
    }
}

/// This instance's fault from `--fault-map` (keyed by `$UKLOAD_INSTANCE`).
fn fault_from_map(map: &str) -> Option<Fault> {
    let me: u32 = std::env::var(ukload::ENV_INSTANCE).ok()?.parse().ok()?;
    for entry in map.split(',').filter(|e| !e.trim().is_empty()) {
        let (idx, fault) = entry
            .split_once('=')
            .unwrap_or_else(|| die(&format!("--fault-map entry {entry:?}: expected I=FAULT")));
        let idx: u32 = idx
            .trim()
            .parse()
            .unwrap_or_else(|_| die(&format!("--fault-map entry {entry:?}: bad index")));
        if idx == me {
            return Some(Fault::parse(fault.trim()));
        }
    }
    None
}

fn ignore_sigterm() {
    // SAFETY: setting a signal disposition to SIG_IGN has no memory effects.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
}

/// Allocates `mb` MiB and touches every page, so it counts in RSS and PSS.
fn hold_memory(mb: f64) -> Vec<u8> {
    let mut hold = vec![0u8; (mb * MIB as f64) as usize];
    for i in (0..hold.len()).step_by(PAGE) {
        hold[i] = 1;
    }
    std::hint::black_box(&hold);
    hold
}

/// Forks; in the child runs `f` and exits 0. Returns the child's pid.
///
/// Only called while the fixture is single-threaded (before the agent or
/// fault server starts any thread), so the child may run ordinary code.
fn fork_then(f: impl FnOnce()) -> i32 {
    // SAFETY: the process is single-threaded here (see above).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        die(&format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        f();
        // SAFETY: leaving the child without running the parent's atexit work.
        unsafe { libc::_exit(0) }
    }
    pid
}

/// fork, setsid, fork: `f` runs in a grandchild in its own session (so in
/// no process group of ukload's), re-parented to the nearest subreaper.
/// Waits for the intermediate child so it leaves no zombie.
fn daemonize_then(f: impl FnOnce()) {
    let mid = fork_then(|| {
        // SAFETY: setsid takes no arguments; failing only means we already lead a group.
        unsafe { libc::setsid() };
        fork_then(f);
    });
    let mut st = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    unsafe { libc::waitpid(mid, &mut st, 0) };
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--fork-chain-link") {
        fork_chain_link();
    }
    guest::mark_process_start();
    let mut args = std::env::args().skip(1).peekable();
    let mut listen: Option<String> = None;
    let mut port: Option<u32> = None;
    let mut cfg = AgentConfig::default();
    let mut alloc_mb = 0f64;
    let mut global_fault: Option<Fault> = None;
    let mut map_fault: Option<Fault> = None;
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
                let inst: f64 = std::env::var(ukload::ENV_INSTANCE)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0.0);
                alloc_mb = per * inst;
            }
            "--boot-delay-ms-per-instance" => {
                let per = num(
                    value("--boot-delay-ms-per-instance"),
                    "--boot-delay-ms-per-instance",
                );
                let inst: f64 = std::env::var(ukload::ENV_INSTANCE)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0.0);
                cfg.boot_delay += Duration::from_secs_f64(per * inst / 1000.0);
            }
            "--ignore-sigterm" => ignore_sigterm(),
            "--never-listen" => global_fault = Some(Fault::NeverListen),
            "--exit-code" => {
                global_fault = Some(Fault::Exit(num(value("--exit-code"), "--exit-code") as i32))
            }
            "--fault" => global_fault = Some(Fault::parse(&value("--fault"))),
            "--fault-map" => map_fault = fault_from_map(&value("--fault-map")),
            other => die(&format!("unknown flag {other}")),
        }
    }
    let fault = map_fault.or(global_fault);
    if let Some(f) = &fault {
        eprintln!("fixture_guest: fault {f:?}");
    }
    match fault {
        Some(Fault::Exit(code)) => {
            eprintln!("fixture_guest: exiting with {code} as asked");
            std::process::exit(code);
        }
        Some(Fault::IgnoreTerm) => ignore_sigterm(),
        _ => {}
    }
    // Memory held for the life of the process, every page touched.
    let hold = hold_memory(alloc_mb);
    match fault {
        Some(Fault::NeverListen) => {
            println!("fixture_guest: never listening, as asked");
            std::thread::sleep(LIFETIME_MAX);
            std::process::exit(1);
        }
        Some(Fault::CrashBoot) => {
            std::thread::sleep(cfg.boot_delay);
            eprintln!("fixture_guest: crashing during boot, as asked");
            std::process::abort();
        }
        Some(Fault::Tree { children, mb }) => {
            for _ in 0..children {
                fork_then(|| {
                    let h = hold_memory(mb);
                    std::thread::sleep(LIFETIME_MAX);
                    drop(h);
                });
            }
        }
        Some(Fault::DaemonSleep) => daemonize_then(|| std::thread::sleep(LIFETIME_MAX)),
        Some(Fault::Escape) => escape_and_wait_for_exec(),
        Some(Fault::ForkChain) => daemonize_then(fork_chain),
        Some(Fault::StopAfter(d)) => {
            std::thread::spawn(move || {
                std::thread::sleep(d);
                eprintln!("fixture_guest: stopping myself, as asked");
                // SAFETY: raise takes a signal number; SIGSTOP stops this process.
                unsafe { libc::raise(libc::SIGSTOP) };
            });
        }
        Some(Fault::CrashAfter(d)) => {
            std::thread::spawn(move || {
                std::thread::sleep(d);
                eprintln!("fixture_guest: crashing after boot, as asked");
                std::process::abort();
            });
        }
        _ => {}
    }
    let listen = listen.unwrap_or_else(|| {
        let dir = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
        format!("uds:{dir}/fixture-{}.sock", std::process::id())
    });
    cfg.listen =
        guest::parse_listen(&listen, port).unwrap_or_else(|e| die(&format!("--listen: {e:?}")));
    if fault == Some(Fault::Daemon) {
        // The launcher exits 0 at once, like `qemu -daemonize`'s parent;
        // the escaped daemon serves.
        daemonize_then(|| serve_agent(cfg.clone()));
        eprintln!("fixture_guest: daemonized, launcher exiting 0");
        return;
    }
    match fault {
        Some(f) if f.is_protocol() => serve_fault(&cfg, f),
        _ => serve_agent(cfg),
    }
    drop(hold);
}

/// Replaces this (daemonized) process by `sleep` with an empty environment:
/// it carries no `UKLOAD_*` marker at all.
/// Starts the unmarked escapee and returns once it has exec'd (so it carries
/// no marker by the time this guest is ready): a close-on-exec pipe's write
/// end is held by the intermediate child and the escapee until its `exec`;
/// end-of-file on the read end means both are done.
fn escape_and_wait_for_exec() {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        die("pipe2 failed");
    }
    daemonize_then(exec_unmarked_sleep);
    // SAFETY: closing our copy of the write end; reading our read end into a
    // stack buffer until end-of-file, then closing it.
    unsafe {
        libc::close(fds[1]);
        let mut b = [0u8; 1];
        while libc::read(fds[0], b.as_mut_ptr().cast(), 1) > 0 {}
        libc::close(fds[0]);
    }
}

/// Its `argv[0]` is `fixture-escapee-cid<CID>` so tests can find it.
fn exec_unmarked_sleep() {
    let prog = c"/bin/sleep";
    let name =
        std::ffi::CString::new(format!("fixture-escapee-cid{}", cid_env())).unwrap_or_default();
    let secs = std::ffi::CString::new(LIFETIME_MAX.as_secs().to_string()).unwrap_or_default();
    let argv = [name.as_ptr(), secs.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings
    // that outlive the call; execve only returns on failure.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    die("execve /bin/sleep failed");
}

/// `$UKLOAD_CID`, or 0.
fn cid_env() -> u32 {
    std::env::var("UKLOAD_CID")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Re-executes this fixture (as `fixture-forkchain-cid<CID>`, so tests can
/// find every link) with an empty environment as the first link of a fork
/// chain (`/proc/PID/environ` shows the environment a process was
/// exec'd with, so only a fresh exec drops the marker).
fn fork_chain() {
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|e| die(&format!("{e}")));
    let exe = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes()).unwrap_or_default();
    let flag = c"--fork-chain-link";
    let name =
        std::ffi::CString::new(format!("fixture-forkchain-cid{}", cid_env())).unwrap_or_default();
    let argv = [name.as_ptr(), flag.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings
    // that outlive the call; execve only returns on failure.
    unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    die("execve of the fork chain failed");
}

/// Forks, `setsid`s and exits, over and over (every millisecond): a pid that
/// never stays put. Bounded by [`LIFETIME_MAX`].
fn fork_chain_link() -> ! {
    let end = Instant::now() + LIFETIME_MAX;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
        // SAFETY: single-threaded process (the daemonized child).
        let pid = unsafe { libc::fork() };
        if pid != 0 {
            // Parent (or fork failure): leave; the child carries on.
            // SAFETY: _exit skips atexit handlers.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: setsid takes no arguments.
        unsafe { libc::setsid() };
    }
    std::process::exit(0)
}

fn serve_agent(cfg: AgentConfig) {
    if let Err(e) = guest::run_agent(cfg) {
        eprintln!("fixture_guest: {e}");
        std::process::exit(1);
    }
}

/// Accepts on the real hybrid-vsock listener and misbehaves on every connection.
fn serve_fault(cfg: &AgentConfig, fault: Fault) -> ! {
    let ListenAddr::Uds { path, port } = &cfg.listen else {
        die("protocol faults need --listen uds:PATH")
    };
    std::thread::sleep(cfg.boot_delay);
    let listener = HybridListener::bind(path, *port)
        .unwrap_or_else(|e| die(&format!("binding {}: {e}", path.display())));
    println!("fixture_guest: serving fault {fault:?}");
    let end = Instant::now() + LIFETIME_MAX;
    while Instant::now() < end {
        match listener.accept_timeout(ACCEPT_POLL) {
            Ok(Some(stream)) => {
                let (f, framing, cid) = (fault.clone(), cfg.framing, cfg.cid);
                std::thread::spawn(move || misbehave(stream, framing, cid, &f));
            }
            Ok(None) => {}
            Err(e) => die(&format!("accept: {e}")),
        }
    }
    std::process::exit(1)
}

/// `payload` with its frame delimiter (newline or length prefix).
fn framed(framing: Framing, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + LENGTH_PREFIX_LEN);
    match framing {
        Framing::Line => {
            out.extend_from_slice(payload);
            out.push(b'\n');
        }
        Framing::Length => {
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
        }
    }
    out
}

/// A correct `ping` reply to request `id`.
fn ping_reply(id: serde_json::Value, cid: Option<u32>) -> Vec<u8> {
    let info = PingInfo {
        pid: std::process::id(),
        cid,
        ..PingInfo::default()
    };
    jsonrpc::to_bytes(&jsonrpc::response(
        id,
        serde_json::to_value(info).expect("PingInfo serializes"),
    ))
}

fn misbehave(stream: UnixStream, framing: Framing, cid: Option<u32>, fault: &Fault) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let mut reader = FrameReader::new(stream, framing);
    let Ok(req) = reader.read_frame() else { return };
    let id = jsonrpc::parse(&req)
        .ok()
        .and_then(|m| m.id().cloned())
        .unwrap_or(serde_json::Value::Null);
    let mut s = reader.into_inner();
    let _ = match fault {
        Fault::AcceptSilent => {
            // Hold the connection until the host gives up (EOF) or the timeout.
            let mut buf = [0u8; 64];
            let _ = std::io::Read::read(&mut s, &mut buf);
            Ok(())
        }
        Fault::Garbage => s.write_all(&framed(framing, b"\x00\x01garbage }{ not json at all")),
        Fault::HugeLength => {
            let mut bytes = HUGE_LENGTH.to_le_bytes().to_vec();
            bytes.extend_from_slice(b"{\"jsonrpc\":\"2.0\"");
            s.write_all(&bytes)
        }
        Fault::HugeLine => {
            let mut line = vec![b'x'; HUGE_LINE_LEN];
            match framing {
                Framing::Line => line.push(b'\n'),
                Framing::Length => {
                    let mut p = (HUGE_LINE_LEN as u32).to_le_bytes().to_vec();
                    p.append(&mut line);
                    line = p;
                }
            }
            s.write_all(&line)
        }
        Fault::BadUtf8 => s.write_all(&framed(
            framing,
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"\xff\xfe\xc0\"}",
        )),
        Fault::CloseMidFrame => {
            let whole = framed(framing, &ping_reply(id, cid));
            s.write_all(&whole[..MID_FRAME_BYTES.min(whole.len() - 1)])
        }
        Fault::Slow(per_byte) => {
            let whole = framed(framing, &ping_reply(id, cid));
            let mut r = Ok(());
            for b in whole {
                std::thread::sleep(*per_byte);
                r = s.write_all(&[b]);
                if r.is_err() {
                    break;
                }
            }
            r
        }
        Fault::WrongId => {
            let wrong = id.as_u64().map_or(serde_json::json!("not-yours"), |n| {
                serde_json::json!(n + WRONG_ID_OFFSET)
            });
            s.write_all(&framed(framing, &ping_reply(wrong, cid)))
        }
        _ => Ok(()),
    };
    let _ = s.flush();
    if *fault != Fault::CloseMidFrame {
        // Keep the connection open until the host closes it (bounded).
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(&mut s, &mut buf);
    }
}
