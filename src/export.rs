//! Machine formats beside the report: JUnit XML for CI servers and the
//! Prometheus text format for monitoring (node_exporter's textfile
//! collector). Both are written atomically: a temporary file in the target's
//! directory, then `rename`, so a reader never sees half a file.

use crate::report::{self, Summary, Verdict};
use crate::run::{Instance, RunConfig, RunResult};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

/// Upper bounds of the boot-time histogram, seconds.
const BOOT_BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds of the tool-call histogram, seconds.
const TOOL_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Writes `bytes` to `path` atomically (temporary file beside it, fsync,
/// rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// `s` escaped for XML and HTML text and attribute values.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// One testcase: its name, time (s) and failure message, if it failed.
struct Case {
    name: &'static str,
    secs: f64,
    failure: Option<String>,
}

/// The testcases of instance `i`: boot, memory (if it booted), CID, tool
/// call (if one was asked for and it booted), cleanup (if it was started).
fn cases(i: &Instance, cfg: &RunConfig, s: &report::Summary) -> Vec<Case> {
    let mut v = vec![boot_case(i, cfg)];
    if i.boot_ms.is_some() {
        v.push(memory_case(i, cfg));
    }
    v.push(cid_case(i, cfg, s));
    if cfg.tool_call.is_some() && i.boot_ms.is_some() {
        v.push(tool_case(i, cfg));
    }
    if i.pid.is_some() {
        v.push(cleanup_case(i));
    }
    v
}

/// Milliseconds (none: 0) as seconds.
fn ms_to_secs(v: Option<f64>) -> f64 {
    v.unwrap_or(0.0) / 1000.0
}

/// Boot: fails if it did not boot, booted over the target or died after.
fn boot_case(i: &Instance, cfg: &RunConfig) -> Case {
    let failure = match (&i.boot_error, i.boot_ms) {
        (Some(e), _) => Some(e.clone()),
        (None, None) => Some("not started".into()),
        (None, Some(b)) if b > cfg.max_boot_ms => Some(format!(
            "booted in {b:.1} ms, over the {} ms target",
            cfg.max_boot_ms
        )),
        _ => i
            .crashed
            .as_ref()
            .map(|c| format!("died after booting: {c}")),
    };
    Case {
        name: "boot",
        secs: ms_to_secs(i.boot_ms),
        failure,
    }
}

/// Memory (the configured metric): fails if not measured or over the target.
fn memory_case(i: &Instance, cfg: &RunConfig) -> Case {
    Case {
        name: "memory",
        secs: 0.0,
        failure: match report::mem_mb(i, cfg.mem_metric) {
            None => Some("not measured".into()),
            Some(mb) if mb > cfg.max_mem_mb => Some(format!(
                "{mb:.1} MB over the {} MB target ({:?})",
                cfg.max_mem_mb, cfg.mem_metric
            )),
            Some(_) => None,
        },
    }
}

/// CID: fails if the instance's CID clashed, mismatched or was out of range.
fn cid_case(i: &Instance, cfg: &RunConfig, s: &report::Summary) -> Case {
    let cid_bad = s.cids.collisions.values().any(|w| w.contains(&i.index))
        || s.cids.mismatched.contains(&i.index)
        || s.cids.out_of_range.contains(&i.index);
    Case {
        name: "cid",
        secs: 0.0,
        failure: cid_bad.then(|| {
            format!(
                "CID {} (guest reports {:?}): collision, mismatch or out of {}",
                i.cid, i.reported_cid, cfg.cid_range
            )
        }),
    }
}

/// Tool call: fails if it failed, did not run or took over the target.
fn tool_case(i: &Instance, cfg: &RunConfig) -> Case {
    Case {
        name: "tool",
        secs: ms_to_secs(i.tool_ms),
        failure: match (&i.tool_error, i.tool_ms) {
            (Some(e), _) => Some(e.clone()),
            (None, None) => Some("not run".into()),
            (None, Some(t)) if t > cfg.max_tool_ms => {
                Some(format!("{t:.2} ms, over the {} ms target", cfg.max_tool_ms))
            }
            _ => None,
        },
    }
}

/// Cleanup: fails if processes survived SIGKILL, needed SIGKILL, or the
/// instance was not torn down.
fn cleanup_case(i: &Instance) -> Case {
    Case {
        name: "cleanup",
        secs: ms_to_secs(i.teardown_ms),
        failure: match i.teardown.as_deref() {
            Some("survived") => Some("processes still running after SIGKILL".into()),
            Some("killed") => Some("did not stop on SIGTERM within the grace period".into()),
            None => Some("not torn down".into()),
            _ => None,
        },
    }
}

/// Appends one JUnit testcase (with its failure and reason, if it failed).
pub(crate) fn junit_case(
    x: &mut String,
    class: &str,
    name: &str,
    secs: f64,
    failure: Option<&str>,
) {
    let (class, name) = (xml_escape(class), xml_escape(name));
    match failure {
        None => {
            let _ = writeln!(
                x,
                r#"    <testcase classname="{class}" name="{name}" time="{secs:.6}"/>"#
            );
        }
        Some(f) => {
            let f = xml_escape(f);
            let _ = writeln!(
                x,
                r#"    <testcase classname="{class}" name="{name}" time="{secs:.6}">"#
            );
            let _ = writeln!(
                x,
                r#"      <failure message="{f}" type="{name}">{f}</failure>"#
            );
            let _ = writeln!(x, "    </testcase>");
        }
    }
}

/// JUnit XML: one testsuite, a testcase per instance per phase (boot,
/// memory, cid, tool, cleanup), a failure with the reason; plus one run-wide
/// testcase for anything left behind.
pub fn junit(r: &RunResult, cfg: &RunConfig, s: &Summary) -> String {
    let mut all: Vec<(String, Case)> = Vec::new();
    for i in &r.instances {
        for c in cases(i, cfg, s) {
            all.push((format!("ukload.instance{}", i.index), c));
        }
    }
    let left = r.teardown.as_ref().map_or(0, |t| t.survivors.len());
    all.push((
        "ukload.run".into(),
        Case {
            name: "nothing_left_behind",
            secs: r.teardown.as_ref().map_or(0.0, |t| t.ms / 1000.0),
            failure: (left > 0).then(|| format!("{left} process(es) left after cleanup")),
        },
    ));
    let failures = all.iter().filter(|(_, c)| c.failure.is_some()).count();
    let mut x = String::new();
    let _ = writeln!(x, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        x,
        r#"<testsuites name="ukload" tests="{}" failures="{failures}" errors="0" time="{:.3}">"#,
        all.len(),
        r.elapsed_ms / 1000.0
    );
    let _ = writeln!(
        x,
        r#"  <testsuite name="ukload run {}" tests="{}" failures="{failures}" errors="0" skipped="0" time="{:.3}">"#,
        xml_escape(&r.run_id),
        all.len(),
        r.elapsed_ms / 1000.0
    );
    let _ = writeln!(x, "    <properties>");
    for (k, v) in [
        ("launcher", cfg.launcher.kind.to_string()),
        ("count", cfg.count.to_string()),
        ("verdict", s.verdict.word().to_string()),
        ("containment", r.containment.clone()),
    ] {
        let _ = writeln!(
            x,
            r#"      <property name="{k}" value="{}"/>"#,
            xml_escape(&v)
        );
    }
    let _ = writeln!(x, "    </properties>");
    for (class, c) in &all {
        junit_case(&mut x, class, c.name, c.secs, c.failure.as_deref());
    }
    let _ = writeln!(x, "  </testsuite>");
    let _ = writeln!(x, "</testsuites>");
    x
}

fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends a histogram of `values` (seconds) with `labels`.
fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &str,
    bounds: &[f64],
    values: &[f64],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for b in bounds {
        let n = values.iter().filter(|v| **v <= *b).count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
        values.len()
    );
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", values.iter().sum::<f64>());
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", values.len());
}

/// The Prometheus text format (node_exporter textfile collector): boot and
/// tool-call histograms, PSS per instance, the verdict and the processes
/// left behind, labelled with the run id and the launcher.
pub fn prometheus(r: &RunResult, cfg: &RunConfig, s: &Summary) -> String {
    let labels = format!(
        "run_id=\"{}\",launcher=\"{}\"",
        label_value(&r.run_id),
        cfg.launcher.kind
    );
    let mut out = String::new();
    let boots: Vec<f64> = r
        .instances
        .iter()
        .filter_map(|i| i.boot_ms.map(|b| b / 1000.0))
        .collect();
    histogram(
        &mut out,
        "ukload_boot_seconds",
        "Spawn to the guest's first reply (or console ready line), per instance.",
        &labels,
        BOOT_BUCKETS_S,
        &boots,
    );
    pss_gauges(&mut out, &labels, r);
    if cfg.tool_call.is_some() {
        let tools: Vec<f64> = r
            .instances
            .iter()
            .filter_map(|i| i.tool_ms.map(|t| t / 1000.0))
            .collect();
        histogram(
            &mut out,
            "ukload_tool_call_seconds",
            "Latency of tools/call inside each instance.",
            &labels,
            TOOL_BUCKETS_S,
            &tools,
        );
    }
    summary_gauges(&mut out, &labels, s);
    out
}

/// `ukload_instance_pss_bytes`: one gauge per measured instance.
fn pss_gauges(out: &mut String, labels: &str, r: &RunResult) {
    let _ = writeln!(
        out,
        "# HELP ukload_instance_pss_bytes PSS of each instance's whole process tree."
    );
    let _ = writeln!(out, "# TYPE ukload_instance_pss_bytes gauge");
    for i in &r.instances {
        if let Some(kb) = i.pss_kb {
            let _ = writeln!(
                out,
                "ukload_instance_pss_bytes{{{labels},instance=\"{}\",cid=\"{}\"}} {}",
                i.index,
                i.cid,
                kb * 1024
            );
        }
    }
}

/// The run's gauges: instances asked for and booted, the verdict, and the
/// processes left behind.
fn summary_gauges(out: &mut String, labels: &str, s: &report::Summary) {
    let _ = writeln!(
        out,
        "# HELP ukload_instances Instances asked for and booted."
    );
    let _ = writeln!(out, "# TYPE ukload_instances gauge");
    let _ = writeln!(
        out,
        "ukload_instances{{{labels},state=\"total\"}} {}",
        s.total
    );
    let _ = writeln!(
        out,
        "ukload_instances{{{labels},state=\"booted\"}} {}",
        s.booted
    );
    let _ = writeln!(
        out,
        "# HELP ukload_verdict 1 for the run's verdict (PASS, PARTIAL or FAIL), 0 for the others."
    );
    let _ = writeln!(out, "# TYPE ukload_verdict gauge");
    for v in [Verdict::Pass, Verdict::Partial, Verdict::Fail] {
        let _ = writeln!(
            out,
            "ukload_verdict{{{labels},verdict=\"{}\"}} {}",
            v.word(),
            u8::from(v == s.verdict)
        );
    }
    let _ = writeln!(
        out,
        "# HELP ukload_leftover_processes Processes of the run alive after cleanup."
    );
    let _ = writeln!(out, "# TYPE ukload_leftover_processes gauge");
    let _ = writeln!(out, "ukload_leftover_processes{{{labels}}} {}", s.survivors);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_is_escaped_and_control_characters_dropped() {
        assert_eq!(xml_escape("a<b>&\"'\u{1}"), "a&lt;b&gt;&amp;&quot;&apos; ");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn atomic_write_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("ukload-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.prom");
        write_atomically(&p, b"one\n").unwrap();
        write_atomically(&p, b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
