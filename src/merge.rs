//! `ukload report merge`: one verdict and one set of statistics from the
//! JSON reports of runs on several hosts (a CI matrix, a Kubernetes Job per
//! node, `parallel --sshlogin`). Per report ("host"): its own verdict, boot
//! and memory figures, CID clashes (CIDs are per host, so they are checked
//! per report, never across). Overall: every instance's figures together and
//! the worst verdict.

use crate::export::xml_escape as esc;
use crate::report::Verdict;
use crate::stats::Stats;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Why a report could not be merged.
#[derive(Debug)]
pub struct MergeError {
    pub file: PathBuf,
    pub why: String,
}

impl std::fmt::Display for MergeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (expected the output of `ukload run --format json`)",
            self.file.display(),
            self.why
        )
    }
}

/// One input report.
#[derive(Debug, Clone, Serialize)]
pub struct HostRun {
    /// The host it ran on (`host` of the report, else the file's name).
    pub host: String,
    pub run_id: String,
    pub file: PathBuf,
    pub launcher: String,
    pub total: usize,
    pub booted: usize,
    pub verdict: Verdict,
    pub exit_code: i32,
    pub reasons: Vec<String>,
    pub boot_ms: Option<Stats>,
    pub pss_mb: Option<Stats>,
    pub cid_collisions: usize,
    pub survivors: usize,
}

/// The merged result.
#[derive(Debug, Clone, Serialize)]
pub struct Merged {
    pub hosts: Vec<HostRun>,
    pub total: usize,
    pub booted: usize,
    pub boot_ms: Option<Stats>,
    pub pss_mb: Option<Stats>,
    pub tool_ms: Option<Stats>,
    pub survivors: usize,
    pub verdict: Verdict,
    pub exit_code: i32,
    /// Instances, with the index of the report they come from (JUnit).
    #[serde(skip)]
    instances: Vec<(usize, Value)>,
}

fn verdict_of(v: &Value) -> Option<Verdict> {
    Verdict::deserialize(v).ok()
}

fn numbers<'a>(instances: impl IntoIterator<Item = &'a Value>, key: &str, scale: f64) -> Vec<f64> {
    instances
        .into_iter()
        .filter_map(|i| i[key].as_f64())
        .map(|v| v * scale)
        .collect()
}

/// Reads and merges `files`.
pub fn merge(files: &[PathBuf]) -> Result<Merged, MergeError> {
    let mut hosts = Vec::new();
    let mut all: Vec<(usize, Value)> = Vec::new();
    for (n, f) in files.iter().enumerate() {
        let (host, instances) = read_report(f)?;
        hosts.push(host);
        all.extend(instances.into_iter().map(|i| (n, i)));
    }
    if hosts.is_empty() {
        return Err(MergeError {
            file: PathBuf::from("(none)"),
            why: "no report given".into(),
        });
    }
    let only = || all.iter().map(|(_, i)| i);
    let verdict = worst_verdict(&hosts);
    Ok(Merged {
        total: all.len(),
        booted: hosts.iter().map(|h| h.booted).sum(),
        boot_ms: Stats::of(&numbers(only(), "boot_ms", 1.0)),
        pss_mb: Stats::of(&numbers(only(), "pss_kb", 1.0 / 1024.0)),
        tool_ms: Stats::of(&numbers(only(), "tool_ms", 1.0)),
        survivors: hosts.iter().map(|h| h.survivors).sum(),
        exit_code: verdict.exit_code(),
        verdict,
        hosts,
        instances: all,
    })
}

/// Reads one JSON report: its per-host summary and its instances. A missing
/// `run_id`, `instances` or `verdict` is an error naming the file.
fn read_report(f: &Path) -> Result<(HostRun, Vec<Value>), MergeError> {
    let err = |why: String| MergeError {
        file: f.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(f).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut doc: Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    let run_id = doc["run_id"]
        .as_str()
        .ok_or_else(|| err("no run_id".into()))?
        .to_string();
    // Taken out of the document, not copied: nothing else reads them there.
    let Some(Value::Array(instances)) = doc.get_mut("instances").map(Value::take) else {
        return Err(err("no instances".into()));
    };
    let verdict = verdict_of(&doc["verdict"]).ok_or_else(|| err("no verdict".into()))?;
    let host = host_run(f, &doc, run_id, verdict, &instances);
    Ok((host, instances))
}

/// The summary of one report (`doc`, read from `f`) from its optional fields.
fn host_run(
    f: &Path,
    doc: &Value,
    run_id: String,
    verdict: Verdict,
    instances: &[Value],
) -> HostRun {
    let host = doc["host"].as_str().map(str::to_string).unwrap_or_else(|| {
        f.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let s = &doc["summary"];
    let booted = instances
        .iter()
        .filter(|i| i["boot_ms"].is_number())
        .count();
    HostRun {
        host,
        run_id,
        file: f.to_path_buf(),
        launcher: doc["config"]["launcher"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        total: instances.len(),
        booted,
        verdict,
        exit_code: doc["exit_code"].as_i64().unwrap_or(1) as i32,
        reasons: s["reasons"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        boot_ms: Stats::of(&numbers(instances, "boot_ms", 1.0)),
        pss_mb: Stats::of(&numbers(instances, "pss_kb", 1.0 / 1024.0)),
        cid_collisions: s["cids"]["collisions"].as_object().map_or(0, |c| c.len()),
        survivors: doc["teardown"]["survivors"]
            .as_array()
            .map_or(0, |a| a.len()),
    }
}

/// The overall verdict: FAIL if any host failed, PASS if all passed,
/// PARTIAL otherwise.
fn worst_verdict(hosts: &[HostRun]) -> Verdict {
    if hosts.iter().any(|h| h.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if hosts.iter().all(|h| h.verdict == Verdict::Pass) {
        Verdict::Pass
    } else {
        Verdict::Partial
    }
}

fn stats_line(s: &Option<Stats>, unit: &str) -> String {
    match s {
        None => "-".into(),
        Some(s) => format!(
            "min {:.1}{unit}, median {:.1}{unit}, p95 {:.1}{unit}, max {:.1}{unit} ({})",
            s.min, s.median, s.p95, s.max, s.count
        ),
    }
}

impl Merged {
    /// The human form.
    pub fn human(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "Merged load test: {} report(s)", self.hosts.len());
        for h in &self.hosts {
            let _ = writeln!(
                o,
                "  {:<24} run {:<20} {:<8} {}/{} booted, boot {}, PSS {}{}",
                h.host,
                h.run_id,
                h.verdict.word(),
                h.booted,
                h.total,
                h.boot_ms
                    .map_or("-".into(), |b| format!("median {:.1}ms", b.median)),
                h.pss_mb
                    .map_or("-".into(), |m| format!("median {:.1}MB", m.median)),
                if h.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", h.reasons.join("; "))
                }
            );
        }
        let _ = writeln!(o, "Overall: {}/{} booted", self.booted, self.total);
        let _ = writeln!(o, "  boot: {}", stats_line(&self.boot_ms, "ms"));
        let _ = writeln!(o, "  PSS:  {}", stats_line(&self.pss_mb, "MB"));
        if self.tool_ms.is_some() {
            let _ = writeln!(o, "  tool: {}", stats_line(&self.tool_ms, "ms"));
        }
        let _ = writeln!(
            o,
            "  CID clashes (per host): {}; processes left behind: {}",
            self.hosts.iter().map(|h| h.cid_collisions).sum::<usize>(),
            self.survivors
        );
        let _ = writeln!(o, "Verdict: {}", self.verdict.word());
        o
    }

    /// A self-contained HTML page: the verdict, a row per host, the overall
    /// figures and a histogram of every instance's boot time (inline SVG).
    pub fn html(&self) -> String {
        let word = self.verdict.word();
        let colour = crate::html::verdict_colour(self.verdict);
        let mut h = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ukload merged: {word}</title>\
             <style>body{{font:14px system-ui,sans-serif;margin:24px}} td,th{{padding:2px 10px;text-align:left}}\
             .v{{color:#fff;background:{colour};padding:2px 10px;border-radius:4px}}</style></head><body>\n\
             <h1>ukload: {} report(s) <span class=\"v\">{word}</span></h1>\n<table id=\"hosts\"><tr><th>host</th><th>run</th>\
             <th>verdict</th><th>booted</th><th>boot median</th><th>PSS median</th><th>left behind</th><th>reasons</th></tr>\n",
            self.hosts.len()
        );
        for x in &self.hosts {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&x.host),
                esc(&x.run_id),
                x.verdict.word(),
                x.booted,
                x.total,
                x.boot_ms.map_or("-".into(), |b| format!("{:.1} ms", b.median)),
                x.pss_mb.map_or("-".into(), |m| format!("{:.1} MB", m.median)),
                x.survivors,
                esc(&x.reasons.join("; "))
            );
        }
        let _ = writeln!(
            h,
            "</table>\n<p>Overall: {}/{} booted; boot {}; PSS {}.</p>",
            self.booted,
            self.total,
            esc(&stats_line(&self.boot_ms, "ms")),
            esc(&stats_line(&self.pss_mb, "MB"))
        );
        let boots: Vec<f64> = self
            .instances
            .iter()
            .filter_map(|(_, i)| i["boot_ms"].as_f64())
            .collect();
        if !boots.is_empty() {
            h.push_str("<h2>Boot times, every host</h2>\n");
            h.push_str(&crate::html::boot_histogram(&boots, None));
        }
        h.push_str("</body></html>\n");
        h
    }

    /// JUnit XML: a testsuite per host, a testcase per instance per phase.
    pub fn junit(&self) -> String {
        let mut suites = String::new();
        let (mut tests, mut failures) = (0usize, 0usize);
        for (n, h) in self.hosts.iter().enumerate() {
            let mut cases = String::new();
            let (mut t, mut fl) = (0usize, 0usize);
            for (_, i) in self.instances.iter().filter(|(k, _)| *k == n) {
                let idx = i["index"].as_u64().unwrap_or(0);
                let boot_fail = i["boot_error"].as_str().map(String::from).or_else(|| {
                    i["crashed"]
                        .as_str()
                        .map(|c| format!("died after booting: {c}"))
                });
                let cleanup_fail = match i["teardown"].as_str() {
                    Some("survived") => Some("processes still running after SIGKILL".to_string()),
                    Some("killed") => {
                        Some("did not stop on SIGTERM within the grace period".into())
                    }
                    _ => None,
                };
                for (name, secs, fail) in [
                    (
                        "boot",
                        i["boot_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                        boot_fail,
                    ),
                    (
                        "cleanup",
                        i["teardown_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                        cleanup_fail,
                    ),
                ] {
                    t += 1;
                    let class = format!("ukload.{}.instance{idx}", h.host);
                    fl += usize::from(fail.is_some());
                    crate::export::junit_case(&mut cases, &class, name, secs, fail.as_deref());
                }
            }
            tests += t;
            failures += fl;
            let _ = write!(
                suites,
                "  <testsuite name=\"{}\" tests=\"{t}\" failures=\"{fl}\" errors=\"0\">\n{cases}  </testsuite>\n",
                esc(&format!("{} ({})", h.host, h.run_id))
            );
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"ukload merged\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\">\n{suites}</testsuites>\n"
        )
    }
}
