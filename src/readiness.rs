//! One loop that watches every pending boot at once.
//!
//! Each instance waiting for readiness is a small state machine: reading its
//! console log for the ready line, waiting out a backoff, connecting to its
//! hybrid vsock socket (`CONNECT <port>` → `OK`), or waiting for the reply to
//! its `ukload/status` request ([`jsonrpc::STATUS_METHOD`]). A single thread polls all their sockets together, so a guest's
//! reply is read the moment it arrives (no thread per instance to wake up and
//! schedule), and the number of threads does not grow with the number of
//! guests. Failed attempts back off from 1 to 4 ms, as in [`crate::probe`],
//! whose judgement of a reply ([`probe::status_reply`]) this loop shares and
//! whose other messages and rules it keeps exactly. A console log is read
//! when inotify says it was written to (`IN_MODIFY`), so a microVM's ready
//! line is seen when it lands rather than at the next 2 ms poll.
//!
//! Kernel `AF_VSOCK` endpoints (hosts with vhost-vsock) are not multiplexed
//! here: each runs the blocking [`probe::wait_ready`] on a thread of its own
//! and reports back through a channel.

use crate::framing::{FrameError, FrameReader, Framing};
use crate::jsonrpc::{self, CallError};
use crate::launcher::Readiness;
use crate::probe::{self, BootFailure, Ready};
use crate::vsock::{self, Endpoint};
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::time::TimeSpec;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest single wait of the loop (signals and new instances are also
/// noticed through the wake descriptor; this bounds everything else).
const MAX_WAIT: Duration = Duration::from_millis(20);
/// How often an instance's `dead` check runs while it waits (it may scan
/// `/proc` on the marker path).
const DEAD_CHECK_EVERY: Duration = Duration::from_millis(5);
/// A guest whose socket file does not exist yet is woken by the socket's
/// creation (inotify); this is the safety tick if a notification is missed.
const MISSING_SOCKET_TICK: Duration = Duration::from_millis(50);
/// A console log watched by inotify (`IN_MODIFY`) is read when it is
/// written to; this is the safety tick if a notification is missed. Logs
/// that cannot be watched are read every [`probe::CONSOLE_POLL`].
const WATCHED_CONSOLE_TICK: Duration = Duration::from_millis(50);
/// Retry delay when the socket exists but nothing listens yet (between a
/// guest's `bind` and its `listen`: microseconds).
const REFUSED_BACKOFF: Duration = Duration::from_micros(200);
/// Longest wait for a connect when the guest's listen backlog is full.
const BACKLOG_WAIT: Duration = Duration::from_millis(1);
/// Request id of the readiness `ukload/status` request.
const PING_ID: u64 = 1;

/// Whether an instance can no longer become ready (e.g. its launcher died).
pub type DeadCheck = Box<dyn Fn() -> Option<String> + Send>;

/// An instance whose readiness is to be watched.
pub struct Pending {
    pub index: u32,
    pub readiness: Readiness,
    pub framing: Framing,
    pub log: PathBuf,
    /// Bytes at the head of the log that are ukload's own (the launch
    /// command lines), not the guest's console.
    pub log_skip: u64,
    pub started: Instant,
    pub deadline: Instant,
    pub dead: DeadCheck,
}

/// A finished wait.
pub struct Done {
    pub index: u32,
    pub result: Result<Ready, BootFailure>,
}

enum Stage {
    /// Reading the console log for the ready line.
    Console(probe::ConsoleTail),
    /// Waiting until `next` before the next connect attempt.
    Backoff { next: Instant },
    /// `CONNECT` written; reading the VMM's `OK` line until `until`.
    Handshake {
        stream: UnixStream,
        got: Vec<u8>,
        until: Instant,
    },
    /// `ping` written; reading the reply until `until`.
    Ping {
        reader: FrameReader<UnixStream>,
        until: Instant,
    },
    /// A kernel vsock probe running on its own thread.
    Thread(crossbeam_channel::Receiver<Result<Ready, BootFailure>>),
}

struct Item {
    p: Pending,
    stage: Stage,
    attempts: u32,
    last_error: String,
    backoff: Duration,
    last_try: Instant,
    final_chance: bool,
    deadline: Instant,
    console_line: Option<String>,
    next_dead_check: Instant,
    /// The socket's creation will be notified (inotify on its directory).
    notified: bool,
    /// When the current connect attempt began.
    conn_started: Instant,
    /// The last completed connection (connect + handshake), ms.
    connect_ms: Option<f64>,
    /// Watch descriptor of the console log while the console is being read
    /// (writes to it are notified, so the ready line is read when it lands
    /// instead of at the next poll).
    console_wd: Option<WatchDescriptor>,
}

/// The loop's state: every instance still waiting.
pub struct Watcher {
    items: Vec<Item>,
    stop: Arc<AtomicBool>,
    /// Creations in the directories of guests' sockets (None: inotify
    /// unavailable; then missing sockets are polled with the backoff).
    created: Option<Creations>,
}

/// An inotify descriptor watching directories for new entries, and console
/// logs for writes.
struct Creations {
    inotify: Inotify,
    /// Watch descriptor → directory.
    dirs: std::collections::HashMap<WatchDescriptor, PathBuf>,
}

impl Creations {
    fn new() -> Option<Creations> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        Some(Creations {
            inotify,
            dirs: std::collections::HashMap::new(),
        })
    }

    /// Watches the file `path` for writes; its watch descriptor, or None if
    /// it cannot be watched (then it is polled).
    fn watch_writes(&mut self, path: &std::path::Path) -> Option<WatchDescriptor> {
        self.inotify.add_watch(path, AddWatchFlags::IN_MODIFY).ok()
    }

    /// Stops a watch made by [`Creations::watch_writes`] (a stale one only
    /// makes the call fail with EINVAL).
    fn unwatch(&self, wd: WatchDescriptor) {
        let _ = self.inotify.rm_watch(wd);
    }

    /// Watches `dir` for new entries (once per directory).
    fn watch(&mut self, dir: &std::path::Path) -> bool {
        if self.dirs.values().any(|d| d == dir) {
            return true;
        }
        let Ok(wd) = self
            .inotify
            .add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
        else {
            return false;
        };
        self.dirs.insert(wd, dir.to_path_buf());
        true
    }

    /// Paths created since the last call.
    fn read(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        // Non-blocking: EAGAIN once everything was read.
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for ev in events {
                if let (Some(dir), Some(name)) = (self.dirs.get(&ev.wd), &ev.name) {
                    out.push(dir.join(name));
                }
            }
        }
        out
    }
}

impl Watcher {
    /// A watcher that abandons every wait (as [`BootFailure::Interrupted`])
    /// once `stop` is set.
    pub fn new(stop: Arc<AtomicBool>) -> Watcher {
        Watcher {
            items: Vec::new(),
            stop,
            created: Creations::new(),
        }
    }

    /// Instances still waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Starts watching `p`.
    pub fn add(&mut self, p: Pending) {
        let now = Instant::now();
        let stage = match &p.readiness {
            Readiness::Console(_) | Readiness::ConsoleThenProbe(..) => {
                Stage::Console(probe::ConsoleTail::at(p.log_skip))
            }
            Readiness::Probe(Endpoint::Hybrid { .. }) => Stage::Backoff { next: now },
            Readiness::Probe(Endpoint::Vsock { .. }) => self.on_thread(&p),
        };
        if let (Some(c), Some(Endpoint::Hybrid { path, .. })) =
            (self.created.as_mut(), p.readiness.endpoint())
        {
            if let Some(dir) = path.parent() {
                c.watch(dir);
            }
        }
        let console_wd = match (&stage, self.created.as_mut()) {
            (Stage::Console(_), Some(c)) => c.watch_writes(&p.log),
            _ => None,
        };
        let deadline = p.deadline;
        self.items.push(Item {
            p,
            stage,
            attempts: 0,
            last_error: String::from("not tried"),
            backoff: probe::BACKOFF_START,
            last_try: now,
            final_chance: true,
            deadline,
            console_line: None,
            next_dead_check: now,
            notified: self.created.is_some(),
            conn_started: now,
            connect_ms: None,
            console_wd,
        });
    }

    /// A kernel vsock probe on a thread of its own.
    fn on_thread(&self, p: &Pending) -> Stage {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let readiness = p.readiness.clone();
        let (framing, log, skip, started, deadline) =
            (p.framing, p.log.clone(), p.log_skip, p.started, p.deadline);
        let stop = self.stop.clone();
        // The dead check stays with the loop; the thread only probes.
        let spawned = std::thread::Builder::new()
            .name(format!("ukload-probe-{}", p.index))
            .spawn(move || {
                let r = probe::wait_ready(
                    &readiness,
                    framing,
                    probe::ConsoleLog { path: &log, skip },
                    started,
                    deadline,
                    &stop,
                    &|| None,
                );
                let _ = tx.send(r);
            });
        if let Err(e) = spawned {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = tx.send(Err(BootFailure::Unreachable(format!(
                "cannot start a probe thread: {e}"
            ))));
            return Stage::Thread(rx);
        }
        Stage::Thread(rx)
    }

    /// Waits until something may have happened (a socket became readable,
    /// a timer is due, `wake` became readable, or [`MAX_WAIT`] passed), then
    /// moves every instance on. Returns the instances that finished.
    pub fn turn(&mut self, wake: Option<BorrowedFd<'_>>) -> Vec<Done> {
        self.wait(wake);
        let stopping = self.stop.load(Ordering::Relaxed);
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            let finished = if stopping {
                Some(Err(BootFailure::Interrupted))
            } else {
                self.items[i].step()
            };
            // Past the console (or finished): its writes no longer matter.
            let item = &mut self.items[i];
            if finished.is_some() || !matches!(item.stage, Stage::Console(_)) {
                if let (Some(wd), Some(c)) = (item.console_wd.take(), &self.created) {
                    c.unwatch(wd);
                }
            }
            match finished {
                Some(result) => {
                    let item = self.items.swap_remove(i);
                    done.push(Done {
                        index: item.p.index,
                        result,
                    });
                }
                None => i += 1,
            }
        }
        done
    }

    /// One `ppoll` over every socket being read (and the socket-creation
    /// notifications), bounded by the earliest timer; then wakes the
    /// instances whose socket just appeared.
    fn wait(&mut self, wake: Option<BorrowedFd<'_>>) {
        let now = Instant::now();
        let mut timeout = MAX_WAIT;
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(self.items.len() + 2);
        if let Some(w) = wake {
            fds.push(pollin(w));
        }
        if let Some(c) = &self.created {
            fds.push(pollin(c.inotify.as_fd()));
        }
        for it in &self.items {
            let due = match &it.stage {
                Stage::Console(_) if it.console_wd.is_some() => Some(now + WATCHED_CONSOLE_TICK),
                Stage::Console(_) => Some(now + probe::CONSOLE_POLL),
                Stage::Backoff { next } => Some(*next),
                Stage::Handshake { stream, until, .. } => {
                    fds.push(pollin(stream.as_fd()));
                    Some(*until)
                }
                Stage::Ping { reader, until } => {
                    fds.push(pollin(reader.get_ref().as_fd()));
                    Some(*until)
                }
                Stage::Thread(_) => None,
            };
            if let Some(d) = due {
                timeout = timeout.min(d.saturating_duration_since(now));
            }
            timeout = timeout.min(it.deadline.saturating_duration_since(now));
        }
        if !timeout.is_zero() {
            // ppoll: nanosecond timeout; no signal mask.
            let _ = ppoll(&mut fds, Some(TimeSpec::from_duration(timeout)), None);
        }
        drop(fds);
        if let Some(w) = wake {
            drain(w);
        }
        let created = self
            .created
            .as_ref()
            .map(Creations::read)
            .unwrap_or_default();
        if created.is_empty() {
            return;
        }
        let now = Instant::now();
        for it in &mut self.items {
            if let (Stage::Backoff { next }, Some(Endpoint::Hybrid { path, .. })) =
                (&mut it.stage, it.p.readiness.endpoint())
            {
                if created.iter().any(|c| c == path) {
                    *next = now;
                }
            }
        }
    }
}

fn pollin(fd: BorrowedFd<'_>) -> PollFd<'_> {
    PollFd::new(fd, PollFlags::POLLIN)
}

/// Empties a non-blocking wake descriptor.
fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    while matches!(nix::unistd::read(fd, &mut buf), Ok(n) if n > 0) {}
}

impl Item {
    fn endpoint(&self) -> Option<&Endpoint> {
        self.p.readiness.endpoint()
    }

    /// Moves this instance on; `Some` when its wait is over.
    fn step(&mut self) -> Option<Result<Ready, BootFailure>> {
        // Each stage may finish into the next within one turn (e.g. a
        // console line, then the first connect at once).
        loop {
            let before = std::mem::discriminant(&self.stage);
            if let Some(r) = self.advance() {
                return Some(r);
            }
            let after = std::mem::discriminant(&self.stage);
            if before == after {
                return None;
            }
        }
    }

    fn dead(&mut self, now: Instant) -> Option<BootFailure> {
        if now < self.next_dead_check {
            return None;
        }
        self.next_dead_check = now + DEAD_CHECK_EVERY;
        (self.p.dead)().map(|status| BootFailure::LauncherExited { status })
    }

    /// A failed attempt: remember why, check the launcher, back off.
    fn retry(&mut self, why: String) -> Option<Result<Ready, BootFailure>> {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(probe::BACKOFF_MAX);
        self.retry_after(why, wait)
    }

    /// [`Item::retry`] after `wait` (capped at the deadline).
    fn retry_after(&mut self, why: String, wait: Duration) -> Option<Result<Ready, BootFailure>> {
        self.last_error = why;
        let now = Instant::now();
        self.next_dead_check = now;
        if let Some(f) = self.dead(now) {
            return Some(Err(f));
        }
        self.last_try = now;
        self.stage = Stage::Backoff {
            next: now + wait.min(self.deadline.saturating_duration_since(now)),
        };
        None
    }

    /// A failed connect: a socket not created yet is waited for by its
    /// creation notice; one created but not yet listening (the guest is
    /// between `bind` and `listen`) is retried almost at once.
    fn connect_failed(&mut self, e: vsock::ConnectError) -> Option<Result<Ready, BootFailure>> {
        match e.errno() {
            Some(libc::ENOENT) if self.notified => {
                self.retry_after(e.to_string(), MISSING_SOCKET_TICK)
            }
            Some(libc::ECONNREFUSED) => self.retry_after(e.to_string(), REFUSED_BACKOFF),
            _ => self.retry(e.to_string()),
        }
    }

    fn advance(&mut self) -> Option<Result<Ready, BootFailure>> {
        let now = Instant::now();
        // Take the stage out; each arm puts back the next one.
        let stage = std::mem::replace(&mut self.stage, Stage::Backoff { next: now });
        match stage {
            Stage::Console(tail) => self.console(tail, now),
            Stage::Backoff { next } => {
                if now < next {
                    self.stage = Stage::Backoff { next };
                    return None;
                }
                self.connect(now)
            }
            Stage::Handshake { stream, got, until } => self.handshake(stream, got, until, now),
            Stage::Ping { reader, until } => self.ping(reader, until, now),
            Stage::Thread(rx) => match rx.try_recv() {
                Ok(r) => Some(r),
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    self.stage = Stage::Thread(rx);
                    self.dead(now).map(Err)
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    Some(Err(BootFailure::Unreachable("probe thread ended".into())))
                }
            },
        }
    }

    fn console(
        &mut self,
        mut tail: probe::ConsoleTail,
        now: Instant,
    ) -> Option<Result<Ready, BootFailure>> {
        let re = match &self.p.readiness {
            Readiness::Console(re) | Readiness::ConsoleThenProbe(re, _) => re.clone(),
            Readiness::Probe(_) => {
                return Some(Err(BootFailure::Unreachable("no console pattern".into())))
            }
        };
        self.attempts += 1;
        if let Some(line) = tail.poll(&re, &self.p.log) {
            if matches!(self.p.readiness, Readiness::Console(_)) {
                return Some(Ok(Ready::now(None, Some(line), self.attempts, None)));
            }
            // Console marker seen: probe at once.
            self.console_line = Some(line);
            self.last_try = now;
            self.stage = Stage::Backoff { next: now };
            return None;
        }
        if now >= self.deadline {
            return Some(Err(probe::console_timeout(
                &re,
                &self.p.log,
                now - self.p.started,
            )));
        }
        self.stage = Stage::Console(tail);
        self.dead(now).map(Err)
    }

    fn connect(&mut self, now: Instant) -> Option<Result<Ready, BootFailure>> {
        if now >= self.deadline {
            // The deadline passed while we were not running (the harness
            // was stopped, or starved): one last probe before blaming the guest.
            if let Some(d) = probe::last_chance(now, self.last_try, &mut self.final_chance) {
                self.deadline = d;
            } else {
                return Some(Err(BootFailure::Timeout {
                    after: now - self.p.started,
                    last_error: std::mem::take(&mut self.last_error),
                }));
            }
        }
        self.attempts += 1;
        let Some(Endpoint::Hybrid { path, port }) = self.endpoint().cloned() else {
            return Some(Err(BootFailure::Unreachable(
                "the readiness loop probes hybrid vsock endpoints only".into(),
            )));
        };
        let timeout = probe::CONNECT_TIMEOUT.min(self.deadline - now);
        // Waits only if the guest's listen backlog is full, and then at most
        // a millisecond: the loop must not stall on one guest.
        self.conn_started = Instant::now();
        match vsock::hybrid_connect_start(&path, port, timeout.min(BACKLOG_WAIT)) {
            Ok(stream) => {
                self.stage = Stage::Handshake {
                    stream,
                    got: Vec::new(),
                    until: now + timeout,
                };
                None
            }
            Err(e) if e.is_retryable() => self.connect_failed(e),
            Err(e) => Some(Err(BootFailure::Unreachable(e.to_string()))),
        }
    }

    fn handshake(
        &mut self,
        mut stream: UnixStream,
        mut got: Vec<u8>,
        until: Instant,
        now: Instant,
    ) -> Option<Result<Ready, BootFailure>> {
        let ep = self.endpoint().cloned()?;
        let mut buf = [0u8; 64];
        let mut closed = false;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.contains(&b'\n') {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let err = vsock::ConnectError::Sys {
                        endpoint: ep,
                        syscall: "read(OK)",
                        source: e,
                    };
                    return if err.is_retryable() {
                        self.retry(err.to_string())
                    } else {
                        Some(Err(BootFailure::Unreachable(err.to_string())))
                    };
                }
            }
        }
        let nl = got.iter().position(|&b| b == b'\n');
        let line = &got[..nl.unwrap_or(got.len())];
        match vsock::check_handshake_line(&ep, line, nl.is_some(), closed) {
            // Bytes after the OK line would belong to the guest's stream; the
            // agent sends none before our request.
            Ok(true) => {
                self.connect_ms = Some(self.conn_started.elapsed().as_secs_f64() * 1000.0);
                self.send_ping(stream, &ep, now)
            }
            Ok(false) if now >= until => {
                let err = vsock::ConnectError::TimedOut {
                    endpoint: ep,
                    stage: "handshake",
                    after: now.duration_since(self.last_try),
                };
                self.retry(err.to_string())
            }
            Ok(false) => {
                self.stage = Stage::Handshake { stream, got, until };
                None
            }
            Err(e) if e.is_retryable() => self.retry(e.to_string()),
            Err(e) => Some(Err(BootFailure::Unreachable(e.to_string()))),
        }
    }

    fn ping(
        &mut self,
        mut reader: FrameReader<UnixStream>,
        until: Instant,
        now: Instant,
    ) -> Option<Result<Ready, BootFailure>> {
        let ep = self.endpoint().cloned()?;
        let want = serde_json::Value::from(PING_ID);
        loop {
            match reader.read_frame() {
                Ok(frame) => match jsonrpc::classify_reply(&frame, PING_ID, &want) {
                    None => continue,
                    Some(reply) => return self.status_reply(&ep, reply),
                },
                Err(FrameError::TimedOut) if now >= until => {
                    return self.retry(format!("ping to {ep}: no reply"));
                }
                Err(FrameError::TimedOut) => {
                    self.stage = Stage::Ping { reader, until };
                    return None;
                }
                Err(FrameError::Eof) => return self.status_reply(&ep, Err(CallError::Closed)),
                Err(e) => return self.status_reply(&ep, Err(CallError::Frame(e))),
            }
        }
    }

    /// Writes the `ping` request on a connected stream and starts reading.
    fn send_ping(
        &mut self,
        mut stream: UnixStream,
        ep: &Endpoint,
        now: Instant,
    ) -> Option<Result<Ready, BootFailure>> {
        let bytes = jsonrpc::to_bytes(&jsonrpc::request(
            PING_ID,
            jsonrpc::STATUS_METHOD,
            serde_json::json!({}),
        ));
        // A small request into an empty socket buffer goes out at once.
        match crate::framing::write_frame(&mut stream, self.p.framing, &bytes) {
            Ok(()) => {
                let until = self.deadline.min(now + probe::PING_TIMEOUT);
                self.stage = Stage::Ping {
                    reader: FrameReader::new(stream, self.p.framing),
                    until,
                };
                None
            }
            Err(e) => self.status_reply(ep, Err(CallError::Frame(e))),
        }
    }

    /// The blocking probe's judgement of the exchange
    /// ([`probe::status_reply`]): ready, retry, or a protocol error.
    fn status_reply(
        &mut self,
        ep: &Endpoint,
        reply: Result<serde_json::Value, CallError>,
    ) -> Option<Result<Ready, BootFailure>> {
        match probe::status_reply(ep, reply) {
            Ok(probe::Status::Up(info)) => Some(Ok(Ready::now(
                info,
                self.console_line.take(),
                self.attempts,
                self.connect_ms,
            ))),
            Ok(probe::Status::NotYet(why)) => self.retry(why),
            Err(f) => Some(Err(f)),
        }
    }
}
