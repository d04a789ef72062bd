//! Typed flag values: each parses one flag's text into what the library
//! takes, with the bound and unit in its error. argh puts the flag and the
//! value in front of the error (see `usage_message` in main.rs), so these
//! messages say only what was expected.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ukload::vsock::{kernel::cid_is_connectable, Endpoint};

/// Longest duration any flag accepts (boot timeout, grace period, deadlines,
/// injected boot delay): a day, in seconds. Beyond it a deadline is a
/// mistake, and far beyond it `Instant + Duration` overflows and would panic
/// in a worker thread (`--boot-timeout 1e19` did).
pub const MAX_DURATION_S: u64 = 24 * 60 * 60;
/// [`MAX_DURATION_S`] in milliseconds, for the `-ms` flags.
pub const MAX_DURATION_MS: u64 = MAX_DURATION_S * 1000;
/// Largest `--memory`, MiB (1 TiB): a bound that keeps `MiB → bytes`
/// arithmetic, here and in any VMM, far from overflow.
pub const MAX_MEMORY_MB: u64 = 1 << 20;

/// Parses a trimmed number, or says what was expected.
fn number<T: FromStr>(s: &str, expected: &str) -> Result<T, String> {
    s.trim()
        .parse::<T>()
        .map_err(|_| format!("expected {expected}"))
}

/// A whole number of milliseconds, 0 to a day (`--grace-ms`,
/// `--guest-boot-delay-ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis(pub Duration);

impl FromStr for Millis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ms: u64 = number(s, "milliseconds (a whole number)")?;
        if ms > MAX_DURATION_MS {
            return Err(format!("too long; at most {MAX_DURATION_MS} ms (a day)"));
        }
        Ok(Millis(Duration::from_millis(ms)))
    }
}

/// A deadline in whole milliseconds, 1 ms to a day (`--tool-timeout-ms`,
/// `--timeout-ms`, `--max-total-ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub Duration);

impl FromStr for Deadline {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Millis(d) = s.parse()?;
        if d.is_zero() {
            return Err("give a deadline of at least 1 ms".into());
        }
        Ok(Deadline(d))
    }
}

/// Seconds, positive and at most a day; fractions allowed (`--boot-timeout`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seconds(pub Duration);

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Positive(secs) = s.parse()?;
        if secs > MAX_DURATION_S as f64 {
            return Err(format!(
                "too long; at most {MAX_DURATION_S} seconds (a day)"
            ));
        }
        Ok(Seconds(Duration::from_secs_f64(secs)))
    }
}

/// A positive, finite number (targets in ms or MB).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Positive(pub f64);

impl FromStr for Positive {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let x: f64 = number(s, "a positive number")?;
        if x.is_finite() && x > 0.0 {
            Ok(Positive(x))
        } else {
            Err("expected a positive number".into())
        }
    }
}

/// A percentage 0..100, `%` optional (`--min-success`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percent(pub f64);

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "a percentage 0..100";
        let v: f64 = number(s.trim().trim_end_matches('%'), expected)?;
        if (0.0..=100.0).contains(&v) {
            Ok(Percent(v))
        } else {
            Err(format!("expected {expected}"))
        }
    }
}

/// A whole number from 1 to `MAX` (instances, cycles, calls, threads, MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count<const MAX: u64 = { u32::MAX as u64 }>(pub u64);

impl<const MAX: u64> Count<MAX> {
    /// The count as a `u32` (every `MAX` used with it fits).
    pub fn get(self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }
}

impl<const MAX: u64> FromStr for Count<MAX> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = format!("a whole number from 1 to {MAX}");
        match s.trim().parse::<u64>() {
            Ok(n) if (1..=MAX).contains(&n) => Ok(Count(n)),
            _ => Err(format!("expected {expected}")),
        }
    }
}

/// A vsock port other than 0 and the wildcard (`--port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port(pub u32);

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = format!("a port number 1..{}", libc::VMADDR_PORT_ANY - 1);
        match s.trim().parse::<u32>() {
            Ok(p) if p != 0 && p != libc::VMADDR_PORT_ANY => Ok(Port(p)),
            _ => Err(format!("expected {expected}")),
        }
    }
}

/// Guest memory in MiB, `M`/`Mi` suffix optional, 1 MiB to 1 TiB
/// (`--memory`; the qemu launcher's own minimum is checked with the
/// launcher).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMib(pub u64);

impl FromStr for MemoryMib {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits = s.trim().trim_end_matches("Mi").trim_end_matches('M');
        let mb: u64 = number(digits, "MiB (a whole number)")?;
        if mb == 0 {
            return Err("a guest needs some memory".into());
        }
        if mb > MAX_MEMORY_MB {
            return Err(format!("more than {MAX_MEMORY_MB} MiB (1 TiB) per guest"));
        }
        Ok(MemoryMib(mb))
    }
}

/// A regular expression (`--ready-console`).
#[derive(Clone, Debug)]
pub struct Pattern(pub regex_lite::Regex);

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        regex_lite::Regex::new(s)
            .map(Pattern)
            .map_err(|e| format!("not a valid regex: {e}"))
    }
}

/// A command line split like a shell would, without one (`--stdio`,
/// `--mcp-server`): the text as given and its words, at least one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    pub text: String,
    pub argv: Vec<String>,
}

impl FromStr for CommandLine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let argv = ukload::mcp::split_command(s).map_err(|e| e.to_string())?;
        if argv.is_empty() {
            return Err("expected a command line, e.g. 'node server.js'".into());
        }
        Ok(CommandLine {
            text: s.to_string(),
            argv,
        })
    }
}

/// Output format of reports and listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A readable report (`human`, also spelled `text`; for `mcp call`: the
    /// result's text).
    Human,
    Json,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" | "text" => Ok(Format::Human),
            "json" => Ok(Format::Json),
            _ => Err("expected human (or text) or json".into()),
        }
    }
}

/// Output of `ukload report merge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeFormat {
    Human,
    Json,
    Junit,
    Html,
}

impl FromStr for MergeFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" | "text" => Ok(MergeFormat::Human),
            "json" => Ok(MergeFormat::Json),
            "junit" => Ok(MergeFormat::Junit),
            "html" => Ok(MergeFormat::Html),
            _ => Err("expected human, json, junit or html".into()),
        }
    }
}

/// `CID:PORT` of an `AF_VSOCK` peer (`--vsock`); CIDs 0, 1, 2 (hypervisor,
/// local, host) and the wildcard are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockPeer(pub Endpoint);

impl FromStr for VsockPeer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (cid, port) = s
            .split_once(':')
            .ok_or("expected CID:PORT, e.g. 200:5252")?;
        let cid: u32 = cid
            .parse()
            .map_err(|_| format!("invalid CID {cid:?}: expected CID:PORT, e.g. 200:5252"))?;
        if !cid_is_connectable(cid) {
            return Err(format!(
                "CID {cid} is reserved (0, 1 and 2 are the hypervisor, local and host CIDs; \
                 {} is the wildcard); guests have CID 3 or more",
                libc::VMADDR_CID_ANY
            ));
        }
        let port = peer_port(port)?;
        Ok(VsockPeer(Endpoint::Vsock { cid, port }))
    }
}

/// `PATH:PORT` of a hybrid-vsock Unix socket (`--uds`), split at the last
/// colon (the path may contain colons).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HybridPeer(pub Endpoint);

impl FromStr for HybridPeer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, port) = s
            .rsplit_once(':')
            .ok_or("expected PATH:PORT, e.g. /tmp/guest.sock:5252")?;
        if path.is_empty() {
            return Err("the socket path is empty".into());
        }
        let port = peer_port(port)?;
        Ok(HybridPeer(Endpoint::Hybrid {
            path: PathBuf::from(path),
            port,
        }))
    }
}

/// The port of `--vsock`/`--uds`.
fn peer_port(s: &str) -> Result<u32, String> {
    s.parse::<Port>()
        .map(|Port(p)| p)
        .map_err(|e| format!("invalid port {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded_by_a_day_and_deadlines_by_one_ms() {
        assert_eq!("250".parse::<Millis>().unwrap().0.as_millis(), 250);
        assert_eq!("0".parse::<Millis>().unwrap().0, Duration::ZERO);
        assert!("86400001"
            .parse::<Millis>()
            .unwrap_err()
            .contains("at most"));
        assert!("2s".parse::<Millis>().unwrap_err().contains("milliseconds"));
        assert!("0"
            .parse::<Deadline>()
            .unwrap_err()
            .contains("at least 1 ms"));
        assert!("1e3".parse::<Deadline>().is_err());
        assert_eq!(
            "1.5".parse::<Seconds>().unwrap().0,
            Duration::from_millis(1500)
        );
        for bad in ["0", "-1", "nan", "inf", "1e19", "86400.5"] {
            assert!(bad.parse::<Seconds>().is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_ports_percentages_and_memory_keep_their_bounds() {
        assert_eq!("7".parse::<Count>().unwrap().get(), 7);
        assert!("0".parse::<Count>().is_err());
        assert!("4294967296".parse::<Count>().is_err());
        let e = "1025".parse::<Count<1024>>().unwrap_err();
        assert_eq!(e, "expected a whole number from 1 to 1024");
        assert!("0".parse::<Port>().is_err());
        assert!("4294967295".parse::<Port>().is_err());
        assert_eq!("5252".parse::<Port>().unwrap().0, 5252);
        assert_eq!("80%".parse::<Percent>().unwrap().0, 80.0);
        assert!("101".parse::<Percent>().is_err());
        assert!("-5".parse::<Percent>().is_err());
        assert_eq!("64Mi".parse::<MemoryMib>().unwrap().0, 64);
        assert_eq!("64M".parse::<MemoryMib>().unwrap().0, 64);
        assert!("0".parse::<MemoryMib>().unwrap_err().contains("memory"));
        assert!("1048577".parse::<MemoryMib>().is_err());
    }

    #[test]
    fn peers_refuse_reserved_cids_and_empty_paths() {
        assert_eq!(
            "200:5252".parse::<VsockPeer>().unwrap().0,
            Endpoint::Vsock {
                cid: 200,
                port: 5252
            }
        );
        for cid in ["0", "1", "2", "4294967295"] {
            let e = format!("{cid}:5252").parse::<VsockPeer>().unwrap_err();
            assert!(e.contains("reserved"), "{e}");
        }
        assert!("200".parse::<VsockPeer>().is_err());
        assert!("200:0".parse::<VsockPeer>().unwrap_err().contains("port"));
        assert_eq!(
            "/a:b/s.sock:7".parse::<HybridPeer>().unwrap().0,
            Endpoint::Hybrid {
                path: PathBuf::from("/a:b/s.sock"),
                port: 7
            }
        );
        assert!(":7".parse::<HybridPeer>().unwrap_err().contains("empty"));
    }

    #[test]
    fn command_lines_need_a_word() {
        let c: CommandLine = "node 'my server.js'".parse().unwrap();
        assert_eq!(c.argv, ["node", "my server.js"]);
        assert!("   ".parse::<CommandLine>().is_err());
        assert!("node 'open".parse::<CommandLine>().is_err());
    }
}
