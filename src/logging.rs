//! Diagnostics of `ukload` and `ukload-guest` through the `log` facade: the
//! library logs (`log::warn!`, `log::debug!`, ...) and never writes to stderr
//! itself; a binary installs [`init`] once. Progress is separate
//! ([`crate::progress`]).
//!
//! The logger is ours (thirty lines) rather than `env_logger`: it needs no
//! more than a level, the program's name as prefix, and writes that cannot
//! panic (`eprintln!` panics on a full or closed stderr); env_logger would
//! bring its own dependencies and formats for none of that.
//!
//! Lines: `PROGRAM: message` for errors, warnings and information (the form
//! ukload's messages always had), `PROGRAM: debug: message` and
//! `PROGRAM: trace: message` below that.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The level from the command line and `RUST_LOG`: `RUST_LOG` wins when set
/// to something this understands; else `-q` gives warnings and errors only,
/// none gives information too, `-v` debug and `-vv` (or more) trace.
pub fn level(verbose: u8, quiet: bool, rust_log: Option<&str>) -> LevelFilter {
    if let Some(l) = rust_log.and_then(parse_rust_log) {
        return l;
    }
    match (quiet, verbose) {
        (_, 2..) => LevelFilter::Trace,
        (_, 1) => LevelFilter::Debug,
        (true, 0) => LevelFilter::Warn,
        (false, 0) => LevelFilter::Info,
    }
}

/// The most verbose level `RUST_LOG` names for everything or for ukload:
/// `debug`, `ukload=trace`, `info,ukload=debug`. Directives for other
/// targets are ignored; `None` when nothing applies.
pub fn parse_rust_log(v: &str) -> Option<LevelFilter> {
    v.split(',')
        .filter_map(|d| {
            let d = d.trim();
            let lvl = match d.split_once('=') {
                None => d,
                Some((target, lvl)) if target.trim().starts_with("ukload") => lvl,
                Some(_) => return None,
            };
            lvl.trim().parse::<LevelFilter>().ok()
        })
        .max()
}

/// Log target of lines passed on as they are, without the program's prefix
/// (a server's stderr echoed to the console carries its own prefix).
pub const RAW_TARGET: &str = "ukload::raw";

struct Logger {
    program: &'static str,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = match r.level() {
            _ if r.target() == RAW_TARGET => format!("{}\n", r.args()),
            Level::Error | Level::Warn | Level::Info => format!("{}: {}\n", self.program, r.args()),
            Level::Debug => format!("{}: debug: {}\n", self.program, r.args()),
            Level::Trace => format!("{}: trace: {}\n", self.program, r.args()),
        };
        // One write per line, errors ignored: see the module doc.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger for `program` at `level`. A second call only changes
/// the level.
pub fn init(program: &'static str, level: LevelFilter) {
    static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();
    let logger = LOGGER.get_or_init(|| Logger { program });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_rust_log_pick_the_level() {
        assert_eq!(level(0, false, None), LevelFilter::Info);
        assert_eq!(level(0, true, None), LevelFilter::Warn);
        assert_eq!(level(1, false, None), LevelFilter::Debug);
        assert_eq!(level(3, true, None), LevelFilter::Trace);
        assert_eq!(level(0, false, Some("debug")), LevelFilter::Debug);
        assert_eq!(level(2, false, Some("error")), LevelFilter::Error);
        assert_eq!(level(0, false, Some("other=trace")), LevelFilter::Info);
        assert_eq!(
            parse_rust_log("info,ukload=trace"),
            Some(LevelFilter::Trace)
        );
        assert_eq!(
            parse_rust_log("ukload::run=debug"),
            Some(LevelFilter::Debug)
        );
        assert_eq!(parse_rust_log("nonsense"), None);
        assert_eq!(parse_rust_log("off"), Some(LevelFilter::Off));
    }
}
