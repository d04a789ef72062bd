//! `ukload`: parses the command line and dispatches. The work is in the library.

// Every unsafe block says why it is sound (as Firecracker does).
#![deny(clippy::undocumented_unsafe_blocks)]

/// A line on stderr from the binary itself (usage errors, fatal errors):
/// never panics, whatever stderr is. The library logs through `log`.
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

mod cli;

use argh::FromArgs;
use cli::{Format, MergeFormat, Sub};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use ukload::exit::{
    EXIT_FAIL, EXIT_IOERR, EXIT_SIGINT, EXIT_SIGNAL_BASE, EXIT_UNAVAILABLE, EXIT_USAGE,
};
use ukload::report;
use ukload::run::{self, RunError};
use ukload::supervisor::{watchdog, Supervisor};

fn main() {
    let (args, verbose) = take_verbosity(std::env::args().collect());
    let args = split_equals(args);
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let rest = strs.get(1..).unwrap_or(&[]);
    let top = match cli::Top::from_args(&["ukload"], rest) {
        Ok(t) => t,
        Err(early) => {
            // `--help` is not an error; a parse error is a usage error.
            if early.status.is_ok() {
                std::process::exit(emit("help", 0, |out| {
                    out.write_all(early.output.as_bytes())
                }));
            }
            match usage_message(&early.output, rest) {
                // A bad value: one line naming the flag, like every other
                // usage error.
                Some(line) => say!("ukload: {line}"),
                None => {
                    let _ = write!(std::io::stderr(), "ukload: {}", early.output);
                    if !early.output.ends_with('\n') {
                        say!();
                    }
                    say!("Run `ukload help` or `ukload <command> --help` for usage.");
                }
            }
            std::process::exit(EXIT_USAGE);
        }
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    ukload::logging::init(
        "ukload",
        ukload::logging::level(verbose, top.quiet(), rust_log.as_deref()),
    );
    if top.version {
        std::process::exit(emit("version", 0, |out| {
            writeln!(out, "ukload {}", env!("CARGO_PKG_VERSION"))
        }));
    }
    let Some(cmd) = top.cmd else {
        say!("ukload: no command given");
        say!("Run `ukload help` or `ukload <command> --help` for usage.");
        std::process::exit(EXIT_USAGE);
    };
    let code = match cmd {
        Sub::Run(a) => cmd_run(a),
        Sub::Ps(a) => cmd_ps(a),
        Sub::Cleanup(a) => cmd_cleanup(a),
        Sub::Cycles(a) => cmd_cycles(a),
        Sub::Mcp(a) => cli::mcp::run(a),
        Sub::Image(a) => cmd_image(a),
        Sub::Doctor(a) => cmd_doctor(a),
        Sub::Report(a) => cmd_report(a),
    };
    std::process::exit(code);
}

/// Takes `-v`, `-vv` (and more v's) and `--verbose` out of the arguments
/// (before any `--`), wherever they stand, and counts them: argh has no
/// counted flags, and verbosity applies to every command. One that stands
/// where an option expects its value (`--guest-arg -v`) is that value.
fn take_verbosity(args: Vec<String>) -> (Vec<String>, u8) {
    let mut verbose = 0u8;
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut rest = false;
    for (i, a) in args.into_iter().enumerate() {
        rest |= a == "--";
        let vs = a
            .strip_prefix('-')
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b == b'v'))
            .map(str::len)
            .or((a == "--verbose").then_some(1));
        let is_value = || match out.split_last() {
            Some((flag, before)) => takes_value(before.get(1..).unwrap_or(&[]), flag),
            None => false,
        };
        match vs {
            Some(n) if i > 0 && !rest && !is_value() => {
                verbose = verbose.saturating_add(n as u8);
            }
            _ => out.push(a),
        }
    }
    (out, verbose)
}

/// Whether `flag`, standing after `before` (the arguments kept so far, the
/// program's name left out), is an option that takes a value: argh is asked
/// by parsing up to it, since it does not list its options.
fn takes_value(before: &[String], flag: &str) -> bool {
    if !flag.starts_with("--") || flag.contains('=') {
        return false;
    }
    let mut probe = split_equals(before.to_vec());
    probe.push(flag.to_string());
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    match cli::Top::from_args(&["ukload"], &probe) {
        Err(e) => e.output.starts_with("No value provided for option"),
        Ok(_) => false,
    }
}

/// argh reports a bad flag value as `Error parsing option '--port' with value
/// 'http': <why>` (`positional argument 'count'` for COUNT); this makes it
/// ukload's usage line, `--port "http": <why>` (just `--flag: <why>` when
/// the reason already quotes the value, the reason alone when it already
/// names the flag). The value is recognised among the arguments given, so a
/// value or reason containing quotes cannot shift the split. `None` for
/// every other argh error (unknown flag, missing value, ...).
fn usage_message(argh: &str, args: &[&str]) -> Option<String> {
    let text = argh.trim_end();
    let (name, rest) = if let Some(r) = text.strip_prefix("Error parsing option '") {
        let (flag, rest) = r.split_once("' with value '")?;
        (flag.to_string(), rest)
    } else {
        let r = text.strip_prefix("Error parsing positional argument '")?;
        let (name, rest) = r.split_once("' with value '")?;
        (name.to_uppercase(), rest)
    };
    let (value, why) = args
        .iter()
        .filter_map(|v| Some((*v, rest.strip_prefix(*v)?.strip_prefix("': ")?)))
        .max_by_key(|(v, _)| v.len())?;
    let quoted = format!("{value:?}");
    Some(if why.starts_with(&name) {
        why.to_string()
    } else if why.starts_with(&quoted) {
        format!("{name} {why}")
    } else if why.contains(&quoted) {
        format!("{name}: {why}")
    } else {
        format!("{name} {value:?}: {why}")
    })
}

/// argh takes `--flag value` only; accept `--flag=value` too (needed to pass
/// values that start with a dash, e.g. `--guest-arg=--alloc-mb=8`).
fn split_equals(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for a in args {
        if rest || a == "--" {
            rest = true;
            out.push(a);
        } else if let (true, Some((k, v))) = (a.starts_with("--"), a.split_once('=')) {
            out.push(k.to_string());
            out.push(v.to_string());
        } else {
            out.push(a);
        }
    }
    out
}

/// Writes a command's output (a report, a listing, help) to stdout and
/// returns `code`, or [`EXIT_IOERR`] when stdout cannot take it (`>/dev/full`,
/// a closed pipe): the failure is said on stderr, if stderr can take it, so
/// that a script never reads a missing report as a clean result. Call it only
/// once the work is done (for `run`, after the teardown): a failed write
/// changes the exit code, never what was done.
fn emit(what: &str, code: i32, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> i32 {
    let out = std::io::stdout();
    let mut out = out.lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(e) => {
            say!("ukload: cannot write the {what} to stdout: {e}");
            EXIT_IOERR
        }
    }
}

fn usage(msg: &str) -> i32 {
    say!("ukload: {msg}");
    EXIT_USAGE
}

/// What every command that starts instances sets up first: the watchdog
/// (forked before any thread: if we die, it ends everything marked with the
/// run id), the supervisor (subreaper + reaper), and SIGINT/SIGTERM/SIGHUP
/// flags that make the run stop and tear down.
struct Harness {
    run_id: String,
    dog: watchdog::Watchdog,
    sup: &'static Supervisor,
    stop: Arc<AtomicBool>,
    /// Set by SIGTERM.
    term: Arc<AtomicBool>,
    /// Set by SIGHUP (the terminal went away).
    hup: Arc<AtomicBool>,
}

impl Harness {
    fn start() -> Result<Harness, i32> {
        let run_id = ukload::runs::new_run_id();
        // Runs whose harness and watchdog both died left their cgroups: end them.
        for id in ukload::supervisor::cgroup::reap_stale_runs() {
            log::info!("ended the leftover cgroup of dead run {id}");
        }
        let containment = ukload::supervisor::cgroup::Containment::setup(&run_id).map_err(|e| {
            say!("ukload: {e}");
            match e {
                // A misspelt UKLOAD_CONTAINMENT is the user's to fix.
                ukload::supervisor::cgroup::CgroupError::BadMode { .. } => EXIT_USAGE,
                _ => EXIT_UNAVAILABLE,
            }
        })?;
        let containment = ukload::supervisor::set_containment(containment);
        let dog =
            watchdog::start(&run_id, containment.run_cgroup().map(|c| c.path())).map_err(|e| {
                say!("ukload: cannot start the watchdog process: {e}");
                if let Some(c) = containment.run_cgroup() {
                    let _ = c.cgroup().remove();
                }
                EXIT_FAIL
            })?;
        ukload::supervisor::set_watchdog_pid(dog.pid());
        let sup = Supervisor::init().map_err(|e| {
            say!("ukload: cannot become a child subreaper / start the reaper: {e}");
            EXIT_FAIL
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let term = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        for (sig, which) in [
            (libc::SIGINT, None),
            (libc::SIGTERM, Some(&term)),
            (libc::SIGHUP, Some(&hup)),
        ] {
            let _ = signal_hook::flag::register(sig, stop.clone());
            if let Some(flag) = which {
                let _ = signal_hook::flag::register(sig, flag.clone());
            }
        }
        Ok(Harness {
            run_id,
            dog,
            sup,
            stop,
            term,
            hup,
        })
    }

    /// Normal end: the run's cgroup (empty after teardown) is removed, then
    /// the watchdog is let go.
    fn finish(self) {
        if let Some(c) = ukload::supervisor::run_cgroup() {
            let left = c.cgroup().procs_recursive();
            if !left.is_empty() {
                say!(
                    "ukload: {} process(es) still in the run's cgroup at exit: killing them",
                    left.len()
                );
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            c.kill_and_remove(deadline);
        }
        self.dog.finish();
    }

    /// The exit code: 128+signal when interrupted (SIGHUP 129, SIGINT 130,
    /// SIGTERM 143), else `verdict`.
    fn exit_code(&self, verdict: i32) -> i32 {
        if !self.stop.load(Ordering::Relaxed) {
            verdict
        } else if self.hup.load(Ordering::Relaxed) {
            EXIT_SIGNAL_BASE + libc::SIGHUP
        } else if self.term.load(Ordering::Relaxed) {
            EXIT_SIGNAL_BASE + libc::SIGTERM
        } else {
            EXIT_SIGINT
        }
    }
}

/// Exit code of an error that stopped a run before it started.
fn run_error_code(e: &RunError) -> i32 {
    match e {
        RunError::TooFewFiles { .. }
        | RunError::LogDir { .. }
        | RunError::Launch(ukload::launcher::LaunchError::Invalid(_)) => EXIT_USAGE,
        RunError::Launch(ukload::launcher::LaunchError::NotInstalled { .. }) => EXIT_UNAVAILABLE,
        RunError::Cid(e) => e.exit_code(),
        RunError::RunDir(_)
        | RunError::WakePair(_)
        | RunError::SpawnerThread(_)
        | RunError::Sampling { .. } => EXIT_FAIL,
    }
}

/// Builds (or finds in the cache) the root filesystem image of a VM's MCP
/// server, before the harness starts: mkfs.erofs is waited for with waitpid,
/// which the run's reaper would race; and no VM may start before the image
/// exists. `Err`: the exit code, the reason said.
fn prepare_server_image(launcher: &mut ukload::launcher::LauncherConfig) -> Result<(), i32> {
    launcher.qemu.prepare_rootfs().map_err(|e| {
        let e = run::RunError::Launch(e);
        say!("ukload: {e}");
        run_error_code(&e)
    })
}

fn cmd_run(a: cli::RunArgs) -> i32 {
    let (mut cfg, fmt) = match a.to_config() {
        Ok(c) => c,
        Err(cli::Usage(m)) => return usage(&m),
    };
    if let Err(code) = prepare_server_image(&mut cfg.launcher) {
        return code;
    }
    let h = match Harness::start() {
        Ok(h) => h,
        Err(code) => return code,
    };
    let code = match run::run(cfg.clone(), &h.run_id, h.sup, h.stop.clone()) {
        // The run is over and its instances are torn down: only the exit
        // code depends on whether the report reaches stdout.
        Ok(r) => {
            let s = report::summarize(&r, &cfg);
            let files_failed = !write_report_files(&a, &r, &cfg, &s);
            let code = emit(
                "report",
                h.exit_code(s.verdict.exit_code()),
                |out| match fmt {
                    Format::Json => report::write_json(out, &r, &cfg, &s),
                    Format::Human => report::write_human(out, &r, &cfg, &s, stdout_is_tty()),
                },
            );
            if files_failed {
                EXIT_IOERR
            } else {
                code
            }
        }
        Err(e) => {
            say!("ukload: {e}");
            run_error_code(&e)
        }
    };
    h.finish();
    code
}

/// `--junit`, `--prom` and `--html`, each written atomically; false when
/// one could not be written (said on stderr).
fn write_report_files(
    a: &cli::RunArgs,
    r: &run::RunResult,
    cfg: &run::RunConfig,
    s: &report::Summary,
) -> bool {
    let mut ok = true;
    for (path, what, text) in [
        (
            &a.junit,
            "JUnit report",
            ukload::export::junit as fn(&_, &_, &_) -> String,
        ),
        (&a.prom, "Prometheus file", ukload::export::prometheus),
        (&a.html, "HTML report", ukload::html::page),
    ] {
        if let Some(p) = path {
            let t = text(r, cfg, s);
            if let Err(e) = ukload::export::write_atomically(p, t.as_bytes()) {
                say!("ukload: cannot write the {what} {}: {e}", p.display());
                ok = false;
            }
        }
    }
    ok
}

fn stdout_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

fn cmd_report(a: cli::ReportArgs) -> i32 {
    let cli::ReportCmd::Merge(m) = a.cmd;
    let format = m.format.unwrap_or(MergeFormat::Human);
    if m.files.is_empty() {
        return usage("report merge: name at least one JSON report (ukload run --format json)");
    }
    let merged = match ukload::merge::merge(&m.files) {
        Ok(x) => x,
        Err(e) => return usage(&e.to_string()),
    };
    emit("merged report", merged.exit_code, |out| match format {
        MergeFormat::Json => serde_json::to_writer_pretty(&mut *out, &merged)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        MergeFormat::Junit => write!(out, "{}", merged.junit()),
        MergeFormat::Html => write!(out, "{}", merged.html()),
        MergeFormat::Human => write!(out, "{}", merged.human()),
    })
}

fn cmd_doctor(a: cli::DoctorArgs) -> i32 {
    let kind = a.launcher.unwrap_or(ukload::launcher::Kind::Process);
    let count = a.count.map_or(cli::DEFAULT_COUNT, cli::Count::get);
    let report = ukload::doctor::examine(kind, count);
    emit("doctor report", report.exit_code(), |out| {
        write!(out, "{report}")
    })
}

fn cmd_ps(a: cli::PsArgs) -> i32 {
    let fmt = a.format.unwrap_or(Format::Human);
    let rows = ukload::instances::ps();
    emit("listing", 0, |out| {
        ukload::instances::print_ps(&rows, fmt == Format::Json, out)
    })
}

fn cmd_cleanup(a: cli::CleanupArgs) -> i32 {
    let grace = a
        .grace_ms
        .map_or(ukload::supervisor::teardown::DEFAULT_GRACE, |m| m.0);
    let report = ukload::instances::cleanup(ukload::instances::CleanupOptions {
        run: a.run,
        include_live: a.all,
        grace,
    });
    let code = if report.survivors.is_empty() {
        0
    } else {
        EXIT_FAIL
    };
    emit("cleanup report", code, |out| write!(out, "{report}"))
}

/// `ukload cycles`: like `cmd_run` (watchdog first, then the supervisor), but
/// the whole sequence of runs shares one run id, so the watchdog covers all.
fn cmd_cycles(a: cli::CyclesArgs) -> i32 {
    let (mut cfg, fmt) = match a.to_config() {
        Ok(c) => c,
        Err(cli::Usage(m)) => return usage(&m),
    };
    if let Err(code) = prepare_server_image(&mut cfg.run.launcher) {
        return code;
    }
    let h = match Harness::start() {
        Ok(h) => h,
        Err(code) => return code,
    };
    let run_id = &h.run_id;
    ukload::progress::emit(
        cfg.progress,
        ukload::progress::Event::Cycles {
            run_id: run_id.to_string(),
            cycles: cfg.cycles,
            count: cfg.run.count,
        },
    );
    let code = match ukload::cycles::run_cycles(&cfg, run_id, h.sup, h.stop.clone()) {
        Ok(r) => {
            let code = emit("report", h.exit_code(r.exit_code()), |out| match fmt {
                Format::Json => serde_json::to_writer_pretty(&mut *out, &r)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out)),
                Format::Human => r.write_human(out),
            });
            for l in &r.leaks {
                say!("ukload: cycles: leak: {l}");
            }
            code
        }
        Err(e) => {
            say!("ukload: {e}");
            run_error_code(&e)
        }
    };
    h.finish();
    code
}

/// `ukload image rootfs`: build (or find in the cache) a root filesystem.
fn cmd_image_rootfs(a: cli::ImageRootfsArgs) -> i32 {
    use ukload::rootfs::{self, RootfsSpec};
    let fmt = a.format.unwrap_or(Format::Human);
    let failed = |e: rootfs::RootfsError| {
        say!("ukload: {e}");
        e.exit_code()
    };
    let spec = match RootfsSpec::parse(&a.command, &a.include) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let started = std::time::Instant::now();
    let img = match rootfs::build(&spec, &ukload::image::cache_dir()) {
        Ok(i) => i,
        Err(e) => return failed(e),
    };
    for w in &img.warnings {
        say!("ukload: note: {w}");
    }
    let mut path = img.path.clone();
    if let Some(out) = &a.out {
        if let Err(e) = rootfs::copy_image(&img.path, out) {
            return failed(e);
        }
        path = out.clone();
    }
    say!(
        "rootfs: {} files, {:.1} MB of files, image {:.1} MB, {} in {:.2} s",
        img.manifest.files,
        img.manifest.bytes as f64 / 1e6,
        img.size as f64 / 1e6,
        if img.cached { "cached" } else { "built" },
        started.elapsed().as_secs_f64()
    );
    emit("image path", 0, |out| match fmt {
        Format::Human => writeln!(out, "{}", path.display()),
        Format::Json => {
            let doc = serde_json::json!({
                "path": path,
                "cache_path": img.path,
                "key": img.key,
                "cached": img.cached,
                "size_bytes": img.size,
                "manifest": img.manifest,
                "warnings": img.warnings,
            });
            writeln!(out, "{doc:#}")
        }
    })
}

fn cmd_image(a: cli::ImageArgs) -> i32 {
    use ukload::image::{self, ImagePaths};
    match a.cmd {
        cli::ImageCmd::Rootfs(r) => cmd_image_rootfs(r),
        cli::ImageCmd::Info(_) => {
            let info = image::info();
            let code = if info.is_complete() {
                0
            } else {
                EXIT_UNAVAILABLE
            };
            emit("image information", code, |out| write!(out, "{info}"))
        }
        cli::ImageCmd::SlimKernel(k) => {
            let out = k.output.unwrap_or_else(|| k.input.clone());
            match image::slim_kernel(&k.input, &out) {
                Ok(stats) => emit("summary", 0, |o| {
                    writeln!(o, "slim kernel {}: {stats}", out.display())
                }),
                Err(e) => {
                    say!("ukload: {e}");
                    EXIT_FAIL
                }
            }
        }
        cli::ImageCmd::Build(b) => {
            let paths = ImagePaths::cached();
            let guest = b.guest.unwrap_or_else(|| paths.guest_bin.clone());
            if !guest.is_file() {
                say!(
                    "ukload: guest binary {} not found: build it with `bash scripts/build-guest-image.sh` \
                     (or name a static ukload-guest with --guest PATH)",
                    guest.display()
                );
                return EXIT_UNAVAILABLE;
            }
            match image::build_initramfs(&guest, &paths.modules_dir, &paths.initramfs) {
                Ok(()) => emit("summary", 0, |out| {
                    writeln!(out, "wrote {}", paths.initramfs.display())
                }),
                Err(e) => {
                    say!("ukload: {e}");
                    EXIT_FAIL
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// argh's message for a bad value, as `ukload` gets it.
    fn parse_error(args: &[&str]) -> String {
        cli::Top::from_args(&["ukload"], args).unwrap_err().output
    }

    #[test]
    fn bad_values_become_one_line_naming_flag_and_value() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["run", "2", "--grace-ms", "2s"],
                "--grace-ms \"2s\": expected milliseconds (a whole number)",
            ),
            (
                &["run", "x"],
                "COUNT \"x\": expected a whole number from 1 to 4294967295",
            ),
            // The reason quotes the value: not twice.
            (
                &["run", "--launcher", "vmware"],
                "--launcher: unknown launcher \"vmware\": expected process, qemu, kraft or exec",
            ),
            // The reason names the flag: as it is.
            (
                &["cycles", "--cid-range", "9-3"],
                "--cid-range 9-3: start is greater than end",
            ),
            // A value that looks like argh's own separators.
            (
                &["run", "--port", "1': x"],
                "--port \"1': x\": expected a port number 1..4294967294",
            ),
        ];
        for (args, want) in cases {
            let got = usage_message(&parse_error(args), args);
            assert_eq!(got.as_deref(), Some(*want), "{args:?}");
        }
        let got = usage_message(
            &parse_error(&["mcp", "tools", "--protocol", "1999"]),
            &["mcp", "tools", "--protocol", "1999"],
        )
        .unwrap();
        assert!(
            got.starts_with("--protocol \"1999\": expected auto"),
            "{got}"
        );
    }

    #[test]
    fn other_argh_errors_are_left_to_argh() {
        for args in [
            &["run", "--no-such-flag"][..],
            &["run", "2", "--port"],
            &["frob"],
        ] {
            assert_eq!(usage_message(&parse_error(args), args), None, "{args:?}");
        }
    }

    #[test]
    fn verbosity_is_counted_anywhere_before_a_double_dash() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (rest, v) = take_verbosity(args(&["ukload", "-v", "run", "-vv", "2", "--", "-v"]));
        assert_eq!((rest, v), (args(&["ukload", "run", "2", "--", "-v"]), 3));
        let (rest, v) = take_verbosity(args(&["ukload", "run", "--verbose"]));
        assert_eq!((rest, v), (args(&["ukload", "run"]), 1));
        // After a switch it is verbosity again.
        let (rest, v) = take_verbosity(args(&["ukload", "run", "--flatpak-host", "-v"]));
        assert_eq!((rest, v), (args(&["ukload", "run", "--flatpak-host"]), 1));
    }

    #[test]
    fn a_v_where_an_option_expects_its_value_is_the_value() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let given = args(&[
            "ukload",
            "run",
            "--guest-arg",
            "-v",
            "-v",
            "--port=7",
            "--exec",
            "--verbose",
        ]);
        let (rest, v) = take_verbosity(given);
        assert_eq!(
            rest,
            args(&[
                "ukload",
                "run",
                "--guest-arg",
                "-v",
                "--port=7",
                "--exec",
                "--verbose"
            ])
        );
        assert_eq!(v, 1);
        let (rest, v) = take_verbosity(args(&["ukload", "mcp", "call", "--arg", "-vv", "echo"]));
        assert_eq!(
            (rest, v),
            (args(&["ukload", "mcp", "call", "--arg", "-vv", "echo"]), 0)
        );
    }
}
