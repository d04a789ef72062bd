//! Transport tests that need no guest: AF_VSOCK only where nothing is
//! connected to (this host has no loopback and CID 2 is not ours), and the
//! hybrid handshake fully, over Unix sockets in a temp dir.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(10);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "ukload-vt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hybrid(path: &Path, port: u32) -> Endpoint {
    Endpoint::Hybrid {
        path: path.to_path_buf(),
        port,
    }
}

/// A one-connection fake VMM: reads the CONNECT line, then does `reply`.
fn fake_vmm(path: &Path, reply: Option<&'static [u8]>) -> std::thread::JoinHandle<String> {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let mut s = r.into_inner();
        match reply {
            Some(bytes) => {
                s.write_all(bytes).unwrap();
                // Hold the stream until the client is done with it.
                let mut sink = [0u8; 16];
                let _ = s.read(&mut sink);
            }
            None => drop(s),
        }
        line
    })
}

#[test]
fn reserved_cids_are_refused_before_any_socket() {
    for cid in [0, 1, 2, libc::VMADDR_CID_ANY] {
        let err = connect(&Endpoint::Vsock { cid, port: 5252 }, SHORT).unwrap_err();
        assert!(matches!(err, ConnectError::ForbiddenCid { cid: c } if c == cid));
        assert!(!err.is_retryable());
        assert!(err.to_string().contains(&format!("CID {cid}")), "{err}");
        let io = VsockStream::connect_timeout(cid, 5252, SHORT).unwrap_err();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
    }
}

#[test]
fn vsock_bind_succeeds_or_fails_cleanly() {
    // No connection is attempted: binding is local.
    match VsockListener::bind(40_000 + std::process::id() % 20_000) {
        Ok(l) => {
            assert!(l
                .accept_timeout(Duration::from_millis(10))
                .unwrap()
                .is_none());
        }
        Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
    }
    // local_cid either answers or says which device failed.
    if let Err(e) = local_cid() {
        assert!(e.to_string().contains(kernel::VSOCK_DEVICE), "{e}");
    }
}

#[test]
fn endpoint_display() {
    assert_eq!(
        Endpoint::Vsock { cid: 3, port: 5252 }.to_string(),
        "vsock:3:5252"
    );
    assert_eq!(
        hybrid(Path::new("/r/vm.sock"), 7).to_string(),
        "uds:/r/vm.sock:7"
    );
}

#[test]
fn hybrid_handshake_ok_then_stream_is_the_guest_connection() {
    let dir = TempDir::new();
    let path = dir.join("vm.sock");
    let vmm = fake_vmm(&path, Some(b"OK 1073741824\nhello"));
    let mut s = connect(&hybrid(&path, 5252), LONG).unwrap();
    assert_eq!(
        s.read_timeout().unwrap(),
        None,
        "handshake timeouts must be cleared"
    );
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(
        &buf, b"hello",
        "bytes after the OK line belong to the guest"
    );
    drop(s);
    assert_eq!(vmm.join().unwrap(), "CONNECT 5252\n");
}

#[test]
fn hybrid_garbage_reply_is_not_retryable() {
    let dir = TempDir::new();
    let path = dir.join("vm.sock");
    let vmm = fake_vmm(&path, Some(b"HTTP/1.1 400 Bad Request\r\n"));
    let err = connect(&hybrid(&path, 5252), LONG).unwrap_err();
    assert!(matches!(err, ConnectError::BadHandshake { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("HTTP/1.1"), "{err}");
    vmm.join().unwrap();
}

#[test]
fn hybrid_close_before_ok_is_retryable() {
    let dir = TempDir::new();
    let path = dir.join("vm.sock");
    let vmm = fake_vmm(&path, None);
    let err = connect(&hybrid(&path, 5252), LONG).unwrap_err();
    assert!(matches!(err, ConnectError::HandshakeClosed { .. }), "{err}");
    assert!(err.is_retryable());
    vmm.join().unwrap();
}

#[test]
fn hybrid_silent_peer_times_out_at_the_deadline() {
    let dir = TempDir::new();
    let path = dir.join("vm.sock");
    let _l = UnixListener::bind(&path).unwrap(); // accepts into the backlog, never answers
    let start = Instant::now();
    let err = connect(&hybrid(&path, 5252), SHORT).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ConnectError::TimedOut { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(
        took >= SHORT && took < SHORT + Duration::from_secs(5),
        "took {took:?}"
    );
}

/// How soon after its stop flag is set an interruptible wait must give up.
const STOP_LATENCY: Duration = Duration::from_millis(100);

#[test]
fn a_stop_flag_ends_a_hybrid_handshake_within_100_ms() {
    let dir = TempDir::new();
    let path = dir.join("vm.sock");
    let _l = UnixListener::bind(&path).unwrap(); // accepts into the backlog, never answers
    let stop = std::sync::atomic::AtomicBool::new(false);
    let set_at = std::thread::scope(|s| {
        let setter = s.spawn(|| {
            std::thread::sleep(SHORT);
            stop.store(true, Ordering::Relaxed);
            Instant::now()
        });
        let err = connect_interruptible(&hybrid(&path, 5252), LONG, &stop).unwrap_err();
        let ended = Instant::now();
        let set_at = setter.join().unwrap();
        assert!(
            matches!(
                err,
                ConnectError::Interrupted {
                    stage: "handshake",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("interrupted by signal"), "{err}");
        let late = ended.saturating_duration_since(set_at);
        assert!(late < STOP_LATENCY, "gave up {late:?} after the flag");
        set_at
    });
    // A flag already set gives up before any wait.
    assert!(stop.load(Ordering::Relaxed));
    let start = Instant::now();
    let err = connect_interruptible(&hybrid(&path, 5252), LONG, &stop).unwrap_err();
    assert!(matches!(err, ConnectError::Interrupted { .. }), "{err}");
    assert!(start.elapsed() < STOP_LATENCY, "{:?}", set_at.elapsed());
}

#[test]
fn missing_or_dead_socket_is_retryable_and_long_path_is_not() {
    let dir = TempDir::new();
    let err = connect(&hybrid(&dir.join("absent.sock"), 1), SHORT).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(err.is_retryable());

    let dead = dir.join("dead.sock");
    drop(UnixListener::bind(&dead).unwrap()); // the file stays, nobody listens
    let err = connect(&hybrid(&dead, 1), SHORT).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ECONNREFUSED), "{err}");
    assert!(err.is_retryable());

    let long = dir.join(&"x".repeat(hybrid::MAX_UNIX_PATH));
    let err = connect(&hybrid(&long, 1), SHORT).unwrap_err();
    assert!(matches!(err, ConnectError::BadPath { .. }));
    assert!(!err.is_retryable());
}

#[test]
fn hybrid_listener_answers_its_port_only_and_keeps_accepting() {
    let dir = TempDir::new();
    let path = dir.join("g.sock");
    let l = HybridListener::bind(&path, 5252).unwrap();
    let server = std::thread::spawn(move || {
        let mut s = l.accept().unwrap();
        s.write_all(b"hi").unwrap();
        let mut buf = [0u8; 1];
        let _ = s.read(&mut buf);
        l
    });
    let err = connect(&hybrid(&path, 5253), LONG).unwrap_err();
    assert!(matches!(err, ConnectError::HandshakeClosed { .. }), "{err}");
    let mut s = connect(&hybrid(&path, 5252), LONG).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    drop(s);
    let l = server.join().unwrap();
    assert!(path.exists());
    drop(l);
    assert!(!path.exists(), "listener removes its socket file on drop");
}

#[test]
fn hybrid_listener_drops_silent_clients_after_the_handshake_timeout() {
    let dir = TempDir::new();
    let path = dir.join("g.sock");
    let l = HybridListener::bind(&path, 5252).unwrap();
    let _silent = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let start = Instant::now();
    assert!(l.accept_timeout(LONG).unwrap().is_none());
    let took = start.elapsed();
    assert!(took >= HANDSHAKE_TIMEOUT && took < HANDSHAKE_TIMEOUT + Duration::from_secs(5));
}

#[test]
fn hybrid_bind_replaces_stale_socket_but_not_live_ones_or_files() {
    let dir = TempDir::new();
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let l = HybridListener::bind(&stale, 1).expect("stale socket file is replaced");

    let err = HybridListener::bind(&stale, 1).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    drop(l);

    let file = dir.join("plain");
    std::fs::write(&file, b"keep me").unwrap();
    let err = HybridListener::bind(&file, 1).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}
