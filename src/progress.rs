//! Progress of a run or a cycle series on stderr: what happened, as it
//! happens. Human lines by default, nothing with `-q`, and one JSON object a
//! line with `--progress json` (for scripts and the tests: they read events,
//! not prose). Diagnostics (warnings, errors, debug detail) are not progress:
//! they go through the `log` facade ([`crate::logging`]).
//!
//! Every JSON event has `"event"` (its kind) and `"t_ms"` (milliseconds since
//! the first event of this process); the other fields are the event's own.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;

/// How progress is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing (`-q`).
    Off,
    /// One line of prose per event (the default).
    #[default]
    Human,
    /// One JSON object per line (`--progress json`).
    Json,
}

impl ProgressMode {
    /// The spellings `--progress` accepts, for help texts.
    pub const VALID: &'static str = "human or json";

    /// Whether anything is shown.
    pub fn on(self) -> bool {
        self != ProgressMode::Off
    }
}

impl FromStr for ProgressMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(ProgressMode::Human),
            "json" => Ok(ProgressMode::Json),
            other => Err(format!(
                "unknown progress format {other:?}: expected {}",
                ProgressMode::VALID
            )),
        }
    }
}

/// One thing worth telling while a run goes on.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Phase 1 starts.
    Spawning {
        run_id: String,
        count: u32,
        concurrency: u32,
    },
    /// An instance's launcher was started.
    Spawned { instance: u32, pid: i32, cid: u32 },
    /// An instance answered its boot probe.
    Booted {
        instance: u32,
        boot_ms: f64,
        cid: u32,
    },
    /// An instance did not boot.
    BootFailed { instance: u32, error: String },
    /// The tool-call phase starts.
    ToolPhase { tool: String },
    /// One instance's tool call ended.
    Tool {
        instance: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        ms: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Phase 3 starts.
    Memory,
    /// Phase 5 starts: `instances` are torn down.
    Teardown { instances: usize },
    /// `ukload cycles` starts.
    Cycles {
        run_id: String,
        cycles: u32,
        count: u32,
    },
    /// A cycle failed.
    CycleFailed { cycle: u32, of: u32, why: String },
    /// Every few cycles: how the series goes.
    CycleProgress {
        cycle: u32,
        of: u32,
        clean: u32,
        fds: usize,
        threads: usize,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Spawning {
                run_id,
                count,
                concurrency,
            } => write!(
                f,
                "phase 1: spawning {count} instance(s), {concurrency} at a time (run {run_id})"
            ),
            Event::Spawned { instance, pid, cid } => {
                write!(f, "[{instance}] spawned pid {pid} with CID {cid}")
            }
            Event::Booted {
                instance,
                boot_ms,
                cid,
            } => write!(f, "[{instance}] booted in {boot_ms:.1} ms (CID {cid})"),
            Event::BootFailed { instance, error } => {
                write!(f, "[{instance}] boot failed: {error}")
            }
            Event::ToolPhase { tool } => write!(f, "tool calls: {tool} on every booted instance"),
            Event::Tool {
                instance,
                ms,
                error,
            } => match (error, ms) {
                (Some(e), _) => write!(f, "[{instance}] tool call failed: {e}"),
                (None, Some(ms)) => write!(f, "[{instance}] tool call in {ms:.2} ms"),
                (None, None) => write!(f, "[{instance}] tool call: no answer"),
            },
            Event::Memory => f.write_str("phase 3: measuring memory"),
            Event::Teardown { instances } => {
                write!(f, "phase 5: cleanup of {instances} instance(s)")
            }
            Event::Cycles {
                run_id,
                cycles,
                count,
            } => write!(
                f,
                "cycles: {cycles} cycle(s) of {count} instance(s) (run {run_id})"
            ),
            Event::CycleFailed { cycle, of, why } => write!(f, "cycle {cycle}/{of}: FAILED: {why}"),
            Event::CycleProgress {
                cycle,
                of,
                clean,
                fds,
                threads,
            } => write!(
                f,
                "cycle {cycle}/{of}: {clean} clean so far, {fds} fds, {threads} threads"
            ),
        }
    }
}

/// When this process's first event was shown: `t_ms` counts from it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The line `ev` is shown as in `mode` (`None` when progress is off).
pub fn render(mode: ProgressMode, ev: &Event) -> Option<String> {
    match mode {
        ProgressMode::Off => None,
        ProgressMode::Human => Some(ev.to_string()),
        ProgressMode::Json => {
            let mut v = serde_json::to_value(ev).ok()?;
            let t_ms = epoch().elapsed().as_secs_f64() * 1e3;
            v.as_object_mut()?
                .insert("t_ms".into(), serde_json::json!((t_ms * 1e3).round() / 1e3));
            Some(v.to_string())
        }
    }
}

/// Shows `ev` on stderr in `mode`. A failed write is ignored: progress must
/// never stop a run (stderr may be a full disk or a closed pipe).
pub fn emit(mode: ProgressMode, ev: Event) {
    if let Some(mut line) = render(mode, &ev) {
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_events_carry_their_kind_fields_and_time() {
        let line = render(
            ProgressMode::Json,
            &Event::Spawned {
                instance: 3,
                pid: 42,
                cid: 207,
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "spawned");
        assert_eq!(
            (v["instance"].as_u64(), v["pid"].as_i64(), v["cid"].as_u64()),
            (Some(3), Some(42), Some(207))
        );
        assert!(v["t_ms"].as_f64().unwrap() >= 0.0);
        let tool = render(
            ProgressMode::Json,
            &Event::Tool {
                instance: 1,
                ms: None,
                error: Some("boom".into()),
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&tool).unwrap();
        assert_eq!(v["error"], "boom");
        assert!(v.get("ms").is_none());
    }

    #[test]
    fn human_lines_and_off() {
        let ev = Event::Booted {
            instance: 0,
            boot_ms: 12.345,
            cid: 200,
        };
        assert_eq!(
            render(ProgressMode::Human, &ev).unwrap(),
            "[0] booted in 12.3 ms (CID 200)"
        );
        assert_eq!(render(ProgressMode::Off, &ev), None);
        assert_eq!("json".parse(), Ok(ProgressMode::Json));
        assert!("xml"
            .parse::<ProgressMode>()
            .unwrap_err()
            .contains("human or json"));
    }
}
