//! fork/exec of launchers, each in its own process group.
//!
//! Why not `std::process::Command`: the harness reaps *every* child with
//! `waitpid(-1)` (it is a subreaper and must also reap adopted orphans), and
//! std's spawn calls `waitpid` on its own child when `exec` fails, which would
//! race with our reaper. So we fork ourselves, doing only async-signal-safe
//! calls between `fork` and `exec`, and report `exec` failure through a
//! close-on-exec pipe.
//!
//! The parent side uses nix. The child side, between `fork`/`clone3` and
//! `execve`, stays raw libc in one `unsafe` block: it must not allocate
//! (another thread may hold the allocator's lock at fork time), and nix's
//! `execve` builds a `Vec` of pointers. `clone3` with `CLONE_INTO_CGROUP`
//! has no nix wrapper either.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::OFlag;
use nix::sys::signal::SigSet;
use nix::unistd::{pipe2, setpgid, Pid};

/// Exit code a forked child uses when `exec` fails (like the shell's 127).
pub const EXEC_FAILED_CODE: i32 = 127;

/// Where one of the child's standard streams goes.
#[derive(Debug)]
pub enum Redirect {
    /// `/dev/null`.
    Null,
    /// Same as ours.
    Inherit,
    /// An already open file (e.g. the instance log, opened for append).
    File(File),
    /// A new pipe; our end is returned in [`Child`].
    Pipe,
}

/// What to start.
#[derive(Debug)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdin: Redirect,
    stdout: Redirect,
    stderr: Redirect,
    group: Group,
    /// The cgroup to start in: its directory (for `clone3` with
    /// `CLONE_INTO_CGROUP`) and its open `cgroup.procs` (the fallback: the
    /// child writes itself in before `exec`).
    cgroup: Option<(RawFd, RawFd)>,
}

/// Which process group the child is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    /// A new group led by the child (the default).
    New,
    /// An existing group (another process of the same instance).
    Join(i32),
}

impl Command {
    /// A command running `program` (looked up on `PATH` if it has no `/`).
    pub fn new(program: impl Into<OsString>) -> Self {
        Command {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: Redirect::Null,
            stdout: Redirect::Inherit,
            stderr: Redirect::Inherit,
            group: Group::New,
            cgroup: None,
        }
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, it: I) -> Self {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }
    /// Adds (or overrides) one variable on top of our own environment.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    pub fn stdin(mut self, r: Redirect) -> Self {
        self.stdin = r;
        self
    }
    pub fn stdout(mut self, r: Redirect) -> Self {
        self.stdout = r;
        self
    }
    pub fn stderr(mut self, r: Redirect) -> Self {
        self.stderr = r;
        self
    }
    /// Puts the child into the existing process group `pgid` (e.g. the group
    /// of another process of the same instance), so one signal reaches both.
    pub fn join_process_group(mut self, pgid: i32) -> Self {
        self.group = Group::Join(pgid);
        self
    }
    /// Starts the child inside a cgroup: `dir_fd` is that cgroup's open
    /// directory and `procs_fd` its open `cgroup.procs` (both must stay open
    /// until [`spawn`] returns). The child is created inside it (`clone3`
    /// with `CLONE_INTO_CGROUP`, Linux 5.7+) or, where that is refused,
    /// moves itself in before `exec`: nothing it runs starts outside.
    pub fn into_cgroup(mut self, dir_fd: RawFd, procs_fd: RawFd) -> Self {
        self.cgroup = Some((dir_fd, procs_fd));
        self
    }
    /// The same command run through `wrapper` (e.g. `flatpak-spawn --host`):
    /// `wrapper wrapper_args [--env=K=V for each variable set here] program
    /// args`, because such a wrapper starts the program elsewhere, where
    /// our own environment changes would not reach it.
    pub fn wrapped_in(mut self, wrapper: &str, wrapper_args: &[&str]) -> Self {
        let mut args: Vec<OsString> = wrapper_args.iter().map(OsString::from).collect();
        for (k, v) in &self.env {
            let mut kv = OsString::from("--env=");
            kv.push(k);
            kv.push("=");
            kv.push(v);
            args.push(kv);
        }
        args.push(std::mem::replace(
            &mut self.program,
            OsString::from(wrapper),
        ));
        args.append(&mut self.args);
        self.args = args;
        self
    }
    /// The program as given.
    pub fn program(&self) -> &OsStr {
        &self.program
    }
    /// The arguments as given (after the program).
    pub fn arg_list(&self) -> &[OsString] {
        &self.args
    }
    /// Program and arguments as a shell would take them back (arguments
    /// with spaces or shell characters single-quoted), for messages and logs.
    pub fn display(&self) -> String {
        let mut s = shell_word(&self.program.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_word(&a.to_string_lossy()));
        }
        s
    }
}

/// `w` quoted for a POSIX shell if it needs it.
fn shell_word(w: &str) -> String {
    let plain = !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// A started child. Dropping it neither kills nor waits: the supervisor owns that.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    /// Its process group (its own pid when it leads a new group).
    pub pgid: i32,
    /// When `fork` returned in the parent.
    pub started: Instant,
    /// `CLOCK_MONOTONIC` at the same moment, comparable with guest stamps.
    pub started_mono_ns: u64,
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

/// Why a child could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// The program is not on `PATH` / does not exist.
    NotFound { program: String },
    /// A syscall in the parent failed.
    Sys { call: &'static str, err: io::Error },
    /// `exec` failed in the child.
    Exec { program: String, err: io::Error },
    /// An argument or variable contains a NUL byte.
    Nul { what: String },
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::NotFound { program } => {
                write!(
                    f,
                    "{program}: command not found (not a path and not on PATH)"
                )
            }
            SpawnError::Sys { call, err } => write!(f, "{call} failed: {err}"),
            SpawnError::Exec { program, err } => write!(f, "cannot execute {program}: {err}"),
            SpawnError::Nul { what } => write!(f, "{what} contains a NUL byte"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Resolves `program` like `execvp` would, in the parent, so the error is ours to word.
pub fn resolve_program(program: &OsStr) -> Option<PathBuf> {
    let p = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        return p.exists().then(|| p.to_path_buf());
    }
    crate::paths::find_on_path(&program.to_string_lossy())
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul {
        what: what.to_string(),
    })
}

fn sys(call: &'static str) -> SpawnError {
    SpawnError::Sys {
        call,
        err: io::Error::last_os_error(),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Sys {
        call: "pipe2",
        err: e.into(),
    })
}

/// The fd the child gets for one stream, and our end if it is a pipe.
struct Stdio {
    /// Held until the child has its copy (dropped with the struct after the fork).
    _child_fd: Option<OwnedFd>,
    /// -1: leave the stream as it is (inherit).
    child_raw: RawFd,
    ours: Option<File>,
}

fn prepare(r: Redirect, is_input: bool, devnull: &OwnedFd) -> Result<Stdio, SpawnError> {
    Ok(match r {
        Redirect::Inherit => Stdio {
            _child_fd: None,
            child_raw: -1,
            ours: None,
        },
        Redirect::Null => Stdio {
            _child_fd: None,
            child_raw: devnull.as_raw_fd(),
            ours: None,
        },
        Redirect::File(f) => {
            let fd = OwnedFd::from(f);
            let raw = fd.as_raw_fd();
            Stdio {
                _child_fd: Some(fd),
                child_raw: raw,
                ours: None,
            }
        }
        Redirect::Pipe => {
            let (r, w) = pipe()?;
            let (child, ours) = if is_input { (r, w) } else { (w, r) };
            let raw = child.as_raw_fd();
            Stdio {
                _child_fd: Some(child),
                child_raw: raw,
                ours: Some(File::from(ours)),
            }
        }
    })
}

/// Starts `cmd`. Only async-signal-safe calls run in the child before `exec`.
pub fn spawn(cmd: Command) -> Result<Child, SpawnError> {
    let shown = cmd.program.to_string_lossy().into_owned();
    let exec = Exec::new(&cmd)?;
    let devnull = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|err| SpawnError::Sys {
            call: "open /dev/null",
            err,
        })?;
    let devnull = OwnedFd::from(devnull);
    let streams = [
        prepare(cmd.stdin, true, &devnull)?,
        prepare(cmd.stdout, false, &devnull)?,
        prepare(cmd.stderr, false, &devnull)?,
    ];
    let (err_r, err_w) = pipe()?;
    let group = cmd.group;
    // setpgid's second argument: 0 makes the child lead a new group.
    let target_pgid = match group {
        Group::New => 0,
        Group::Join(g) => g,
    };
    let started = Instant::now();
    let started_mono_ns = crate::clock::monotonic_ns();
    let raw = [0, 1, 2].map(|i| streams[i].child_raw);
    let pid = fork_exec(&exec, target_pgid, cmd.cgroup, raw, err_w.as_raw_fd())?;
    // Parent. Set the group here too so it exists before we ever signal it.
    let pgid = if target_pgid == 0 { pid } else { target_pgid };
    // EACCES (the child has already exec'd and set it) is harmless.
    let _ = setpgid(Pid::from_raw(pid), Pid::from_raw(pgid));
    drop(err_w);
    let [stdin, stdout, stderr] = streams.map(|s| s.ours);
    wait_exec(err_r, shown)?;
    Ok(Child {
        pid,
        pgid,
        started,
        started_mono_ns,
        stdin,
        stdout,
        stderr,
    })
}

/// Everything `execve` needs, built before `fork` (the child must not
/// allocate): the resolved program path, `argv`, `envp` (ours with the
/// command's variables replacing or added) and the working directory.
struct Exec {
    path: CString,
    _args: Vec<CString>,
    _env: Vec<CString>,
    cwd: Option<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl Exec {
    fn new(cmd: &Command) -> Result<Exec, SpawnError> {
        let path = resolve_program(&cmd.program).ok_or_else(|| SpawnError::NotFound {
            program: cmd.program.to_string_lossy().into_owned(),
        })?;
        let mut args = vec![cstring(cmd.program.as_bytes(), "program")?];
        for a in &cmd.args {
            args.push(cstring(a.as_bytes(), &format!("argument {:?}", a))?);
        }
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (k, v) in &cmd.env {
            vars.retain(|(ek, _)| ek != k);
            vars.push((k.clone(), v.clone()));
        }
        let mut env = Vec::with_capacity(vars.len());
        for (k, v) in &vars {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(cstring(&kv, &format!("environment variable {:?}", k))?);
        }
        let cwd = match &cmd.cwd {
            Some(d) => Some(cstring(d.as_os_str().as_bytes(), "working directory")?),
            None => None,
        };
        let nul_terminated = |v: &[CString]| -> Vec<*const libc::c_char> {
            v.iter()
                .map(|c| c.as_ptr())
                .chain([std::ptr::null()])
                .collect()
        };
        Ok(Exec {
            path: cstring(path.as_os_str().as_bytes(), "program path")?,
            argv: nul_terminated(&args),
            envp: nul_terminated(&env),
            _args: args,
            _env: env,
            cwd,
        })
    }
}

/// Forks (into `cgroup`'s directory with `clone3` where possible) and, in
/// the child, sets its group, joins the cgroup by `cgroup.procs` if it was
/// not born inside, resets its signal state, redirects `stdio` (-1: keep)
/// and execs. Returns the child's pid. A failure in the child is reported
/// on `err_w` as an errno.
fn fork_exec(
    exec: &Exec,
    target_pgid: i32,
    cgroup: Option<(RawFd, RawFd)>,
    stdio: [RawFd; 3],
    err_w: RawFd,
) -> Result<i32, SpawnError> {
    let (cgroup_dir, mut cgroup_fd): (RawFd, RawFd) = cgroup.unwrap_or((-1, -1));
    let empty = SigSet::empty();
    let empty: &libc::sigset_t = empty.as_ref();
    // SAFETY: fork (or clone3 used as a fork) is called with every buffer
    // the child needs already built; the child only calls async-signal-safe
    // functions (setpgid, write, sigprocmask, signal, dup2, chdir, execve,
    // _exit) and touches no allocator.
    let pid = unsafe {
        match (cgroup_dir >= 0).then(|| fork_into_cgroup(cgroup_dir)) {
            Some(Some(pid)) => {
                // Born inside: no write to cgroup.procs needed.
                cgroup_fd = -1;
                pid
            }
            _ => libc::fork(),
        }
    };
    if pid < 0 {
        return Err(sys("fork"));
    }
    if pid > 0 {
        return Ok(pid);
    }
    // Child.
    // SAFETY: all pointers were built before fork and stay valid; every
    // call below is async-signal-safe; the child never returns.
    unsafe {
        if libc::setpgid(0, target_pgid) != 0 {
            child_fail(err_w);
        }
        // "0" moves the writing process into the cgroup.
        if cgroup_fd >= 0 && libc::write(cgroup_fd, b"0".as_ptr().cast(), 1) != 1 {
            child_fail(err_w);
        }
        libc::sigprocmask(libc::SIG_SETMASK, empty, std::ptr::null_mut());
        // Rust ignores SIGPIPE; an ignored disposition survives exec.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        for (target, fd) in stdio.into_iter().enumerate() {
            if fd >= 0 && libc::dup2(fd, target as RawFd) < 0 {
                child_fail(err_w);
            }
        }
        if let Some(d) = &exec.cwd {
            if libc::chdir(d.as_ptr()) != 0 {
                child_fail(err_w);
            }
        }
        libc::execve(exec.path.as_ptr(), exec.argv.as_ptr(), exec.envp.as_ptr());
        child_fail(err_w);
    }
}

/// Waits for the child's `exec`: end of file on the close-on-exec pipe
/// means it succeeded; 4 bytes are the errno of what failed.
fn wait_exec(err_r: OwnedFd, program: String) -> Result<(), SpawnError> {
    let mut buf = [0u8; 4];
    let mut errf = File::from(err_r);
    let mut got = 0;
    while got < buf.len() {
        match errf.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(SpawnError::Sys {
                    call: "read exec status",
                    err,
                })
            }
        }
    }
    if got == buf.len() {
        // The child has _exit(127)ed; the reaper collects it.
        return Err(SpawnError::Exec {
            program,
            err: io::Error::from_raw_os_error(i32::from_ne_bytes(buf)),
        });
    }
    Ok(())
}

/// `CLONE_INTO_CGROUP` (Linux 5.7+): the child starts in the cgroup whose
/// directory descriptor is `clone_args.cgroup`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Set once `clone3` with `CLONE_INTO_CGROUP` was refused (old kernel,
/// seccomp): later spawns fork and let the child move itself.
static CLONE3_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `clone3` used as `fork`, with the child created inside the cgroup of
/// directory `dir_fd`. Why: the child then never runs outside it (no window
/// before a `cgroup.procs` write), and the kernel skips one cgroup migration
/// per launcher.
/// `None` if the kernel refuses (the caller forks instead); `Some(-1)` if it
/// failed otherwise (errno set), like `fork`.
///
/// # Safety
/// As `fork`: the child may only call async-signal-safe functions. The
/// child's libc-cached thread id is the parent's (raw clone), which none of
/// those functions uses.
unsafe fn fork_into_cgroup(dir_fd: RawFd) -> Option<i32> {
    use std::sync::atomic::Ordering;
    if CLONE3_REFUSED.load(Ordering::Relaxed) {
        return None;
    }
    // No pidfd, no tids, no stack: the child runs on a copy of this stack,
    // as after fork.
    let mut args = libc::clone_args {
        flags: CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: dir_fd as u64,
    };
    // SAFETY: `args` is a valid clone_args of the size given, read by the
    // kernel during the call only; the child side is the caller's duty (as
    // for fork, see # Safety).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error().raw_os_error();
        if matches!(
            e,
            Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EPERM | libc::EOPNOTSUPP)
        ) {
            CLONE3_REFUSED.store(true, Ordering::Relaxed);
            return None;
        }
    }
    Some(ret as i32)
}

/// In the child after fork: report errno through the pipe and exit.
///
/// # Safety
/// Only to be called in a forked child; uses async-signal-safe calls only.
unsafe fn child_fail(fd: RawFd) -> ! {
    // SAFETY: __errno_location is async-signal-safe and returns a valid
    // pointer; writing 4 bytes from a stack buffer to an fd we own, then
    // _exit, are async-signal-safe too.
    unsafe {
        let e = (*libc::__errno_location()).to_ne_bytes();
        libc::write(fd, e.as_ptr().cast(), e.len());
        libc::_exit(EXEC_FAILED_CODE)
    }
}
