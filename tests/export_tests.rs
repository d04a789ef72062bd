//! `--junit FILE` and `--prom FILE`: the files CI servers and Prometheus
//! read, checked against the rules those readers apply.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;

/// A run of 3 fixture guests, instance 1 never listening (a failed boot).
fn run_with_exports(dir: &std::path::Path) -> (std::process::Output, serde_json::Value) {
    let mut cmd = ukload(dir);
    cmd.args(run_args(dir, 3))
        .arg("--guest-bin")
        .arg(fixture_guest())
        .args([
            "--guest-arg=--fault-map=1=never-listen",
            "--boot-timeout",
            "2",
        ])
        .args(["--cid-range", &cid_block(10), "--max-boot-ms", "60000"])
        .arg("--junit")
        .arg(dir.join("out/junit.xml"))
        .arg("--prom")
        .arg(dir.join("out/ukload.prom"));
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let out = output_within(cmd, Duration::from_secs(60));
    let doc = json_of(&out);
    (out, doc)
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    Some(tag[start..start + tag[start..].find('"')?].to_string())
}

#[test]
fn junit_has_a_testcase_per_instance_and_phase_with_consistent_counts() {
    let dir = TempDir::new("junit");
    let (out, doc) = run_with_exports(dir.path());
    assert_eq!(out.status.code(), Some(1), "{doc:#}");
    let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
    assert!(xml.starts_with("<?xml version=\"1.0\""));
    // Balanced elements, the nesting CI servers read.
    for tag in ["testsuites", "testsuite", "properties"] {
        assert_eq!(
            xml.matches(&format!("<{tag}")).count()
                - xml.matches(&format!("<{tag}s")).count() * usize::from(tag == "testsuite"),
            xml.matches(&format!("</{tag}>")).count(),
            "<{tag}> not balanced:\n{xml}"
        );
    }
    let suite_line = xml
        .lines()
        .find(|l| l.trim_start().starts_with("<testsuite "))
        .unwrap();
    let tests: usize = attr(suite_line, "tests").unwrap().parse().unwrap();
    let failures: usize = attr(suite_line, "failures").unwrap().parse().unwrap();
    let cases: Vec<&str> = xml
        .lines()
        .filter(|l| l.trim_start().starts_with("<testcase "))
        .collect();
    assert_eq!(cases.len(), tests, "tests= matches the testcases");
    assert_eq!(xml.matches("<failure ").count(), failures);
    assert_eq!(xml.matches("</failure>").count(), failures);
    // Per instance: boot, cid, cleanup (+ memory when booted), and the run.
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    for c in &cases {
        names
            .entry(attr(c, "classname").unwrap())
            .or_default()
            .push(attr(c, "name").unwrap());
    }
    assert_eq!(
        names["ukload.instance0"],
        ["boot", "memory", "cid", "cleanup"]
    );
    assert_eq!(names["ukload.instance1"], ["boot", "cid", "cleanup"]);
    assert_eq!(names["ukload.run"], ["nothing_left_behind"]);
    // The failure is instance 1's boot, with the reason.
    assert_eq!(failures, 1, "{xml}");
    let i = xml
        .find("classname=\"ukload.instance1\" name=\"boot\"")
        .unwrap();
    assert!(
        xml[i..].contains("<failure message=\"no reply within"),
        "{xml}"
    );
    assert!(xml.contains(r#"<property name="verdict" value="FAIL"/>"#));
}

/// A sample line: name, labels, value.
fn parse_sample(line: &str) -> (String, HashMap<String, String>, f64) {
    let (head, value) = line.rsplit_once(' ').expect("name and value");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), HashMap::new()),
        Some((n, rest)) => {
            let body = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
            let mut labels = HashMap::new();
            for pair in body.split(",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap();
                assert!(
                    v.starts_with('"') && v.ends_with('"'),
                    "label value not quoted: {line:?}"
                );
                labels.insert(k.to_string(), v[1..v.len() - 1].to_string());
            }
            (n.to_string(), labels)
        }
    };
    assert!(
        name.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name {name:?}"
    );
    (name, labels, value)
}

#[test]
fn prometheus_file_follows_the_text_format() {
    let dir = TempDir::new("prom");
    let (_out, doc) = run_with_exports(dir.path());
    let text = std::fs::read_to_string(dir.path().join("out/ukload.prom")).unwrap();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let mut count = None;
    let mut verdicts = Vec::new();
    let mut pss = 0;
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (n, k) = t.split_once(' ').unwrap();
            assert!(["gauge", "histogram", "counter"].contains(&k));
            assert!(
                types.insert(n.into(), k.into()).is_none(),
                "TYPE twice for {n}"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels, value) = parse_sample(line);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(&name)
            .to_string();
        assert!(
            types.contains_key(&family),
            "sample before its TYPE: {line}"
        );
        assert_eq!(labels["run_id"], doc["run_id"].as_str().unwrap());
        assert_eq!(labels["launcher"], "process");
        match name.as_str() {
            "ukload_boot_seconds_bucket" => {
                let le = match labels["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap(),
                };
                buckets.push((le, value));
            }
            "ukload_boot_seconds_count" => count = Some(value),
            "ukload_verdict" => verdicts.push((labels["verdict"].clone(), value)),
            "ukload_instance_pss_bytes" => {
                assert!(value > 0.0);
                pss += 1;
            }
            "ukload_leftover_processes" => assert_eq!(value, 0.0),
            _ => {}
        }
    }
    // Cumulative buckets, ending at +Inf = count = the booted instances.
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{buckets:?}"
    );
    assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
    assert_eq!(Some(buckets.last().unwrap().1), count);
    assert_eq!(count, Some(2.0));
    assert_eq!(pss, 2);
    assert_eq!(
        verdicts
            .iter()
            .filter(|(_, v)| *v == 1.0)
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["FAIL"]
    );
    // Written atomically: no temporary file left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
