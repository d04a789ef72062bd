//! Containment by the kernel: one cgroup v2 per run, one per instance inside it.
//!
//! A launcher is moved into its instance's cgroup by the forked child itself,
//! before `exec` (see [`super::spawn`]), so every process it ever starts is
//! born inside: no environment change, `setsid` or double fork gets out. The
//! instance's processes are then its `cgroup.procs` (no `/proc`-wide scan),
//! "all gone" is `populated 0` in `cgroup.events` (the kernel wakes `poll`
//! when it changes), and `cgroup.kill` ends the whole subtree in one write,
//! fork chains included.
//!
//! Where the cgroup lives: in the cgroup v2 tree, under the harness's own
//! cgroup (read from `/proc/self/cgroup`), at the mount point read from
//! `/proc/self/mountinfo` — never an assumed `/sys/fs/cgroup` (hybrid hosts
//! mount v2 at `/sys/fs/cgroup/unified`). The v1 hierarchies are never
//! touched. If the tree is not writable (not root, no delegated subtree),
//! the run falls back to process groups and markers and says so.
//!
//! Names: `ukload-<run id>` for a run, `i<index>-cid<cid>` for an instance.
//! Every cgroup created is removed after its teardown; a run whose harness
//! and watchdog both died leaves its cgroup, which the next `ukload` that
//! starts (or `ukload cleanup`) kills and removes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use nix::poll::{PollFd, PollFlags};

use super::terminate::{terminate, Group, Phase, Policy};

/// Selects containment: `auto` (cgroup where possible, the default),
/// `cgroup` (fail if impossible) or `marker` (process groups and markers only).
pub const ENV_CONTAINMENT: &str = "UKLOAD_CONTAINMENT";
/// Prefix of a run's cgroup directory name.
pub const RUN_PREFIX: &str = "ukload-";
/// How long removal of a cgroup waits for its last processes to be gone.
const REMOVE_WAIT: Duration = Duration::from_millis(500);

/// Why cgroup containment cannot be set up.
#[derive(Debug)]
pub enum CgroupError {
    /// [`ENV_CONTAINMENT`] holds an unknown mode.
    BadMode { value: String },
    /// `/proc/self/mountinfo` shows no cgroup2 mount.
    NoV2Mount,
    /// `/proc/self/cgroup` has no `0::` line.
    NoV2Entry,
    /// The harness's cgroup lies outside its cgroup namespace (`/..`).
    OutsideNamespace { cgroup: String },
    /// The run's cgroup directory could not be created.
    Create(io::Error),
    /// The run's `cgroup.procs` cannot be written: launchers could not be
    /// moved in.
    NotWritable { path: PathBuf, error: io::Error },
    /// [`ENV_CONTAINMENT`]`=cgroup` was asked for and is not possible.
    Required(Box<CgroupError>),
}

impl std::fmt::Display for CgroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupError::BadMode { value } => write!(
                f,
                "{ENV_CONTAINMENT}={value:?}: expected auto, cgroup or marker"
            ),
            CgroupError::NoV2Mount => f.write_str("no cgroup v2 tree is mounted"),
            CgroupError::NoV2Entry => f.write_str("/proc/self/cgroup has no cgroup v2 entry"),
            CgroupError::OutsideNamespace { cgroup } => {
                write!(f, "own cgroup {cgroup:?} is outside this cgroup namespace")
            }
            CgroupError::Create(e) => write!(f, "{e}"),
            CgroupError::NotWritable { path, error } => {
                write!(f, "{} not writable: {error}", path.display())
            }
            CgroupError::Required(e) => write!(
                f,
                "cgroup containment ({ENV_CONTAINMENT}=cgroup) is not possible here: {e}"
            ),
        }
    }
}

impl std::error::Error for CgroupError {}

/// Which containment the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Cgroup,
    Marker,
}

impl Mode {
    /// From [`ENV_CONTAINMENT`]; unset or empty is `auto`.
    pub fn from_env() -> Result<Mode, CgroupError> {
        match std::env::var(ENV_CONTAINMENT).as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(Mode::Auto),
            Ok("cgroup") => Ok(Mode::Cgroup),
            Ok("marker") => Ok(Mode::Marker),
            Ok(other) => Err(CgroupError::BadMode {
                value: other.to_string(),
            }),
        }
    }
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
pub fn v2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        // `id parent maj:min root mountpoint opts... - fstype source superopts`
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mp = pre.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mp)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The harness's own cgroup v2 path relative to the mount (`0::/path`).
pub fn own_cgroup() -> Option<String> {
    v2_path_in(Path::new("/proc/self/cgroup"))
}

/// The cgroup v2 path relative to the mount in a `/proc/.../cgroup` file:
/// its `0::` line.
fn v2_path_in(file: &Path) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Where run cgroups are created: the harness's own v2 cgroup directory.
pub fn parent_dir() -> Result<PathBuf, CgroupError> {
    let mount = v2_mount().ok_or(CgroupError::NoV2Mount)?;
    let rel = own_cgroup().ok_or(CgroupError::NoV2Entry)?;
    // A process inside a cgroup namespace may see "/.." paths; refuse them.
    if rel.split('/').any(|c| c == "..") {
        return Err(CgroupError::OutsideNamespace { cgroup: rel });
    }
    Ok(mount.join(rel.trim_start_matches('/')))
}

fn io_ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Writes `value` to a cgroup control file.
fn write_ctl(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io_ctx(e, "open", path))?;
    f.write_all(value.as_bytes())
        .map_err(|e| io_ctx(e, "write", path))
}

/// Reads `cgroup.procs`-style pid lists.
fn read_pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Parses `populated` from the text of `cgroup.events`.
pub fn parse_populated(events: &str) -> Option<bool> {
    events.lines().find_map(|l| match l.split_once(' ')? {
        ("populated", v) => Some(v.trim() == "1"),
        _ => None,
    })
}

/// One cgroup directory ukload created: its path and an open `cgroup.events`
/// (read through the descriptor and polled for changes).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    events: File,
}

impl Cgroup {
    /// Creates the directory (it must not exist: `EEXIST` is an error, so a
    /// cgroup someone else made is never adopted) and opens its events file.
    fn create(path: PathBuf) -> io::Result<Cgroup> {
        fs::create_dir(&path).map_err(|e| io_ctx(e, "create cgroup", &path))?;
        Cgroup::open(path.clone()).inspect_err(|_| {
            let _ = fs::remove_dir(&path);
        })
    }

    /// Opens an existing cgroup directory.
    pub fn open(path: PathBuf) -> io::Result<Cgroup> {
        let ev = path.join("cgroup.events");
        let events = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&ev)
            .map_err(|e| io_ctx(e, "open", &ev))?;
        Ok(Cgroup { path, events })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pids of the processes in this cgroup (not its descendants).
    pub fn procs(&self) -> Vec<i32> {
        read_pids(&self.path.join("cgroup.procs"))
    }

    /// Pids in this cgroup and every cgroup below it.
    pub fn procs_recursive(&self) -> Vec<i32> {
        let mut out = self.procs();
        if let Ok(rd) = fs::read_dir(&self.path) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    if let Ok(c) = Cgroup::open(e.path()) {
                        out.extend(c.procs_recursive());
                    }
                }
            }
        }
        out
    }

    /// Whether any process is in it or below it (`populated` of `cgroup.events`).
    /// An unreadable file counts as populated (never "gone" on a guess).
    pub fn populated(&self) -> bool {
        let mut f = &self.events;
        let mut s = String::new();
        if f.seek(io::SeekFrom::Start(0)).is_err() || f.read_to_string(&mut s).is_err() {
            return true;
        }
        parse_populated(&s).unwrap_or(true)
    }

    /// Whether the kernel kills the whole cgroup at once (`cgroup.kill`,
    /// Linux 5.14+); without it [`Cgroup::kill`] signals the pids listed at
    /// the time and must be repeated while members remain.
    pub fn kill_is_atomic(&self) -> bool {
        self.path.join("cgroup.kill").exists()
    }

    /// Sends `SIGKILL` to every process in it and below (`cgroup.kill`, Linux
    /// 5.14+). On older kernels: every pid listed now, once (a process
    /// forked meanwhile is missed: the `refresh` of both cgroup groups,
    /// [`end`]'s and teardown's, repeats it at each wake-up).
    pub fn kill(&self) -> io::Result<()> {
        let ctl = self.path.join("cgroup.kill");
        if ctl.exists() {
            return write_ctl(&ctl, "1");
        }
        for pid in self.procs_recursive() {
            // The pid was a member of our cgroup just now (no process can be
            // moved in by others without write access to it).
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Ok(())
    }

    /// Removes the directory (and any child cgroups), waiting briefly for
    /// the last processes to leave. Missing is fine.
    pub fn remove(&self) -> io::Result<()> {
        remove_tree(&self.path, Instant::now() + REMOVE_WAIT)
    }

    /// The descriptor of `cgroup.events`, for polling.
    pub fn events_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

/// What [`end`] did.
#[derive(Debug)]
pub struct Ended {
    /// Nothing was left in it (or below) before the deadline.
    pub emptied: bool,
    /// Removing the directories failed (it was still populated, say).
    pub remove_error: Option<io::Error>,
}

/// The one way a cgroup ukload created is ended: [`terminate`] with an
/// immediate kill (`cgroup.kill` on it: every process in it and below), the
/// wait for `populated 0` until `deadline`, then removal of it and every
/// cgroup below it. Used by the run's own cleanup, the watchdog, `ukload
/// cleanup` and the reaping of dead runs' cgroups. A missing directory is
/// already ended.
pub fn end(dir: &Path, deadline: Instant) -> Ended {
    let emptied = match Cgroup::open(dir.to_path_buf()) {
        Ok(mut cg) => {
            let wait = deadline.saturating_duration_since(Instant::now());
            let out = terminate(&mut [&mut cg], &Policy::kill(wait));
            out[0].ended != super::terminate::Ended::Survived
        }
        Err(_) => !dir.exists(),
    };
    Ended {
        emptied,
        remove_error: remove_tree(dir, deadline.max(Instant::now() + REMOVE_WAIT)).err(),
    }
}

/// Removes `dir` and every cgroup below it, deepest first.
pub fn remove_tree(dir: &Path, deadline: Instant) -> io::Result<()> {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path(), deadline)?;
            }
        }
    }
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // EBUSY: processes are still leaving (or a zombie is not reaped yet).
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_ctx(e, "remove cgroup", dir)),
        }
    }
}

/// A run's cgroup: `<parent>/ukload-<run id>`.
#[derive(Debug)]
pub struct RunCgroup {
    cg: Cgroup,
}

impl RunCgroup {
    /// Creates the run's cgroup under the harness's own.
    pub fn create(run_id: &str) -> Result<RunCgroup, CgroupError> {
        let parent = parent_dir()?;
        let path = parent.join(format!("{RUN_PREFIX}{run_id}"));
        let cg = Cgroup::create(path).map_err(CgroupError::Create)?;
        // Prove we can move a process in: write access to cgroup.procs of
        // both the source and the target is what a launcher's move needs.
        let probe = cg.path.join("cgroup.procs");
        if let Err(e) = OpenOptions::new().write(true).open(&probe) {
            let _ = cg.remove();
            return Err(CgroupError::NotWritable {
                path: probe,
                error: e,
            });
        }
        Ok(RunCgroup { cg })
    }

    pub fn path(&self) -> &Path {
        self.cg.path()
    }

    pub fn cgroup(&self) -> &Cgroup {
        &self.cg
    }

    /// Creates instance `index`'s cgroup (removing a leftover of an earlier
    /// cycle of the same run first).
    pub fn instance(&self, index: u32, cid: u32) -> io::Result<InstanceCgroup> {
        let path = self.cg.path.join(format!("i{index}-cid{cid}"));
        if path.exists() {
            if let Some(e) = end(&path, Instant::now() + REMOVE_WAIT).remove_error {
                return Err(e);
            }
        }
        let cg = Cgroup::create(path)?;
        let procs_path = cg.path.join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&procs_path)
            .map_err(|e| io_ctx(e, "open", &procs_path))?;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&cg.path)
            .map_err(|e| io_ctx(e, "open", &cg.path))?;
        Ok(InstanceCgroup { cg, procs, dir })
    }

    /// Kills everything in the run (every instance), waits until it is
    /// empty or `deadline`, and removes the cgroups. True if it was emptied.
    pub fn kill_and_remove(&self, deadline: Instant) -> bool {
        end(&self.cg.path, deadline).emptied
    }
}

/// An instance's cgroup: its directory (launchers are cloned into it) and
/// its open `cgroup.procs` (where that is refused, a launcher writes itself
/// into it between `fork` and `exec`).
#[derive(Debug)]
pub struct InstanceCgroup {
    pub cg: Cgroup,
    procs: File,
    dir: File,
}

impl InstanceCgroup {
    /// The cgroup's directory descriptor (for `CLONE_INTO_CGROUP`).
    pub fn dir_fd(&self) -> i32 {
        self.dir.as_raw_fd()
    }

    /// The descriptor a forked child writes `0` to (moving itself in).
    pub fn procs_fd(&self) -> i32 {
        self.procs.as_raw_fd()
    }
}

/// The run's containment, decided once per harness.
#[derive(Debug)]
pub enum Containment {
    Cgroup(RunCgroup),
    /// Process groups and markers; why cgroups are not used.
    Marker(String),
}

impl Containment {
    /// Sets up containment for `run_id` as [`Mode::from_env`] asks.
    pub fn setup(run_id: &str) -> Result<Containment, CgroupError> {
        match Mode::from_env()? {
            Mode::Marker => Ok(Containment::Marker(format!("{ENV_CONTAINMENT}=marker"))),
            Mode::Cgroup => RunCgroup::create(run_id)
                .map(Containment::Cgroup)
                .map_err(|e| CgroupError::Required(Box::new(e))),
            Mode::Auto => Ok(match RunCgroup::create(run_id) {
                Ok(c) => Containment::Cgroup(c),
                Err(e) => Containment::Marker(format!("cgroup v2 not usable: {e}")),
            }),
        }
    }

    /// The run cgroup, if cgroups are used.
    pub fn run_cgroup(&self) -> Option<&RunCgroup> {
        match self {
            Containment::Cgroup(c) => Some(c),
            Containment::Marker(_) => None,
        }
    }

    /// How the report names it.
    pub fn describe(&self) -> String {
        match self {
            Containment::Cgroup(c) => format!("cgroup v2 ({})", c.path().display()),
            Containment::Marker(why) => format!("process groups and markers ({why})"),
        }
    }

    /// `cgroup` or `marker`.
    pub fn key(&self) -> &'static str {
        match self {
            Containment::Cgroup(_) => "cgroup",
            Containment::Marker(_) => "marker",
        }
    }
}

/// Run cgroups (`ukload-<run id>`) under `parent`, with their run ids.
pub fn run_cgroups_in(parent: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_prefix(RUN_PREFIX)?.to_string();
            e.file_type().ok()?.is_dir().then(|| (id, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Conservative liveness of a run from its id alone: dead only when no
/// process has the harness's pid any more (a reused pid counts as alive, so
/// a live run is never taken for dead).
pub fn run_maybe_alive(run_id: &str) -> bool {
    match crate::runs::harness_pid_of(run_id) {
        Some(pid) if pid > 0 => Path::new(&format!("/proc/{pid}")).exists(),
        _ => true,
    }
}

/// Kills and removes run cgroups under the harness's own cgroup whose
/// harness is gone (its watchdog died too: a whole-cgroup kill, an OOM).
/// The second line of defence, run by every harness as it starts. Returns
/// the run ids it cleaned.
pub fn reap_stale_runs() -> Vec<String> {
    let Ok(parent) = parent_dir() else {
        return Vec::new();
    };
    let mut cleaned = Vec::new();
    for (id, path) in run_cgroups_in(&parent) {
        if run_maybe_alive(&id) {
            continue;
        }
        if end(&path, Instant::now() + REMOVE_WAIT)
            .remove_error
            .is_none()
        {
            cleaned.push(id);
        }
    }
    cleaned
}

/// The instance index of an instance cgroup's name (`i<index>-cid<cid>`).
pub fn instance_of(name: &str) -> Option<(u32, u32)> {
    let (i, c) = name.strip_prefix('i')?.split_once("-cid")?;
    Some((i.parse().ok()?, c.parse().ok()?))
}

/// The cgroup v2 path of `pid` relative to the mount, from `/proc/PID/cgroup`.
pub fn cgroup_of(pid: i32) -> Option<String> {
    v2_path_in(Path::new(&format!("/proc/{pid}/cgroup")))
}

/// A cgroup and everything below it, as [`end`] ends it: at once, with
/// `cgroup.kill` (no fork outruns it), gone at `populated 0`. There is no
/// `SIGTERM` phase: a cgroup is ended this way only when its processes are
/// unwanted leftovers (a run's graceful teardown goes instance by instance,
/// in [`super::teardown`]), so every phase is the kill.
impl Group for Cgroup {
    fn gone(&mut self) -> bool {
        !self.populated()
    }
    fn signal(&mut self, _phase: Phase) {
        let _ = self.kill();
    }
    /// Before Linux 5.14 the per-member kill misses what forked meanwhile:
    /// repeated at every wake-up.
    fn refresh(&mut self, _phase: Phase) {
        if !self.kill_is_atomic() {
            let _ = self.kill();
        }
    }
    fn wake_fds(&self) -> Vec<PollFd<'_>> {
        vec![PollFd::new(self.events_fd(), PollFlags::POLLPRI)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ends (by [`end`]) whatever a test left in its cgroup, even if it failed.
    struct Guard(PathBuf);

    impl Drop for Guard {
        fn drop(&mut self) {
            end(&self.0, Instant::now() + Duration::from_secs(10));
        }
    }

    /// The live processes of process group `pgid`.
    fn group_members(pgid: i32) -> Vec<i32> {
        crate::proc::table()
            .into_iter()
            .filter(|s| s.pgid == pgid && !s.is_zombie())
            .map(|s| s.pid)
            .collect()
    }

    /// Needs a writable cgroup v2 tree (root); says so and passes without
    /// one, except under `CI=true`.
    #[test]
    fn end_kills_a_cgroup_that_forks_all_the_time_and_removes_it() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        use std::process::{Command, Stdio};
        // The harness pid in the id: a leftover of a crashed test is reaped
        // by the next ukload that starts, as a dead run's.
        let run = match RunCgroup::create(&format!("unit-fork-{}", std::process::id())) {
            Ok(r) => r,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true but cgroup v2 is not writable: {e}"
                );
                eprintln!("SKIP: cgroup v2 not writable here ({e})");
                return;
            }
        };
        let _guard = Guard(run.path().to_path_buf());
        // Waits (for its stdin to close) until it is in the cgroup, then
        // ignores SIGTERM and starts a new child every few milliseconds.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("read x; trap '' TERM; echo r; while :; do sleep 30 & sleep 0.01; done")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pgid = child.id() as i32;
        write_ctl(&run.path().join("cgroup.procs"), &pgid.to_string()).expect("move sh in");
        drop(child.stdin.take());
        let mut b = [0u8; 1];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut b).expect("sh ready");
        assert!(run.cgroup().populated());

        let ended = end(run.path(), Instant::now() + Duration::from_secs(10));
        assert!(ended.emptied);
        assert!(ended.remove_error.is_none(), "{:?}", ended.remove_error);
        assert!(!run.path().exists());
        assert_eq!(child.wait().expect("reap").signal(), Some(libc::SIGKILL));
        assert_eq!(group_members(pgid), Vec::<i32>::new());
    }

    #[test]
    fn populated_is_read_from_events_text() {
        assert_eq!(parse_populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated("frozen 0\n"), None);
    }

    #[test]
    fn instance_names_round_trip() {
        assert_eq!(instance_of("i12-cid5003"), Some((12, 5003)));
        assert_eq!(instance_of("x12-cid5003"), None);
        assert_eq!(instance_of("i-cid5"), None);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trail\04"), r"/trail\04");
    }
}
