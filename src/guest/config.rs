//! What the guest agent listens on and how it talks.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::framing::Framing;

/// Where the agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// Kernel vsock on `VMADDR_CID_ANY:port` (inside a VM).
    Vsock { port: u32 },
    /// A hybrid-vsock Unix socket at `path` answering `CONNECT port` (the
    /// agent as a plain host process, standing in for guest + VMM).
    Uds { path: PathBuf, port: u32 },
}

impl ListenAddr {
    pub fn port(&self) -> u32 {
        match self {
            ListenAddr::Vsock { port } | ListenAddr::Uds { port, .. } => *port,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Vsock { port } => write!(f, "vsock:{port}"),
            ListenAddr::Uds { path, port } => write!(f, "uds:{} (port {port})", path.display()),
        }
    }
}

/// A `--listen` value that could not be understood; the text says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseListenError(pub String);

impl fmt::Display for ParseListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseListenError {}

/// Parses a port; `flag` names where it came from for the message.
fn parse_port(s: &str, flag: &str) -> Result<u32, ParseListenError> {
    match s.parse::<u32>() {
        Ok(p) if p != 0 && p != libc::VMADDR_PORT_ANY => Ok(p),
        _ => Err(ParseListenError(format!(
            "{flag}: invalid port {s:?}: expected a number from 1 to {}",
            libc::VMADDR_PORT_ANY - 1
        ))),
    }
}

/// Parses `vsock:PORT`, `vsock` or `uds:PATH`, with `port` (from `--port`)
/// giving the port where the address has none (default
/// [`crate::DEFAULT_PORT`]). `--port` that contradicts `vsock:PORT` is an
/// error rather than a silent choice. Error texts name the flag at fault.
pub fn parse_listen(s: &str, port: Option<u32>) -> Result<ListenAddr, ParseListenError> {
    if let Some(p) = port {
        parse_port(&p.to_string(), "--port")?;
    }
    let default_port = port.unwrap_or(crate::DEFAULT_PORT);
    if s == "vsock" {
        return Ok(ListenAddr::Vsock { port: default_port });
    }
    if let Some(p) = s.strip_prefix("vsock:") {
        let p = parse_port(p, &format!("--listen {s}"))?;
        if let Some(flag) = port.filter(|&f| f != p) {
            return Err(ParseListenError(format!(
                "--port {flag} contradicts --listen {s}; give the port once"
            )));
        }
        return Ok(ListenAddr::Vsock { port: p });
    }
    if let Some(path) = s.strip_prefix("uds:") {
        if path.is_empty() {
            return Err(ParseListenError(
                "--listen uds: needs a socket path, e.g. uds:/tmp/guest.sock".into(),
            ));
        }
        return Ok(ListenAddr::Uds {
            path: PathBuf::from(path),
            port: default_port,
        });
    }
    Err(ParseListenError(format!(
        "--listen {s:?}: expected vsock:PORT, vsock or uds:PATH"
    )))
}

impl FromStr for ListenAddr {
    type Err = ParseListenError;

    /// `vsock:PORT`, `vsock` or `uds:PATH` (port [`crate::DEFAULT_PORT`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_listen(s, None)
    }
}

/// Everything [`super::run_agent`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub listen: ListenAddr,
    pub framing: Framing,
    /// Pause before binding, standing in for a guest's boot in process mode.
    pub boot_delay: Duration,
    /// The CID to report; `None`: env `UKLOAD_CID`, else the vsock device's.
    pub cid: Option<u32>,
    /// Print the `ukload-guest: ready ...` line on stdout once listening
    /// (what a console-marker probe waits for).
    pub ready_marker: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: ListenAddr::Vsock {
                port: crate::DEFAULT_PORT,
            },
            framing: Framing::Line,
            boot_delay: Duration::ZERO,
            cid: None,
            ready_marker: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen("vsock:6000", None).unwrap(),
            ListenAddr::Vsock { port: 6000 }
        );
        assert_eq!(
            parse_listen("vsock", Some(7)).unwrap(),
            ListenAddr::Vsock { port: 7 }
        );
        assert_eq!(
            "uds:/tmp/a:b.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Uds {
                path: "/tmp/a:b.sock".into(),
                port: crate::DEFAULT_PORT
            }
        );
        assert_eq!(
            parse_listen("uds:/x", Some(9)).unwrap().port(),
            9,
            "--port applies to uds"
        );
        assert!(parse_listen("vsock:5252", Some(6000)).is_err());
        assert!(parse_listen("vsock:0", None).is_err());
        assert!(parse_listen("vsock:x", None).is_err());
        assert!(parse_listen("uds:", None).is_err());
        assert!(parse_listen("tcp:1", None)
            .unwrap_err()
            .to_string()
            .contains("vsock:PORT"));
    }
}
