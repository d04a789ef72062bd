//! `--html FILE`: a self-contained page, looked at in a real headless browser.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|c| ukload::supervisor::spawn::resolve_program(c.as_ref()))
}

#[test]
fn the_html_report_is_self_contained_and_renders_in_a_browser() {
    let dir = TempDir::new("html");
    let page = dir.path().join("report.html");
    let range = cid_block(10);
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 6))
        .arg("--guest-bin")
        .arg(fixture_guest())
        .args(["--guest-arg=--fault-map=2=exit:3", "--cid-range", &range])
        .args(["--max-boot-ms", "60000", "--html"])
        .arg(&page);
    let out = output_within(cmd, Duration::from_secs(60));
    let doc = json_of(&out);
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no script, nothing fetched.
    for banned in ["<script", " src=", " href=", "@import", "url("] {
        assert!(!html.contains(banned), "{banned} in the page");
    }
    assert!(html.contains(&format!("ukload run {}", doc["run_id"].as_str().unwrap())));
    assert!(
        html.contains(">FAIL<") || html.contains(">PARTIAL<"),
        "verdict shown"
    );
    // Timeline: a boot bar per booted instance, the failure marked.
    assert_eq!(html.matches("class=\"boot\"").count(), 5);
    assert_eq!(html.matches("class=\"failed\"").count(), 1);
    assert!(html.contains("exit code 3"));
    assert!(html.contains("id=\"histogram\"") && html.contains("id=\"target\""));
    assert!(html.contains("id=\"memory\""));

    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but chromium is not installed (scripts/test.sh installs it)"
        );
        eprintln!("skipped the browser check: chromium not installed");
        return;
    };
    let shot = dir.path().join("shot.png");
    let profile = dir.path().join("chromium-profile");
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1000,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--screenshot={}", shot.display()))
    .arg(format!("file://{}", page.display()))
    .stdin(std::process::Stdio::null());
    let out = output_within(c, Duration::from_secs(120));
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Non-blank: decode the PNG's pixel data and count distinct byte values
    // (a blank page compresses to one value after filtering).
    let check = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys,zlib,struct\n\
             d=open(sys.argv[1],'rb').read()\n\
             assert d[:8]==b'\\x89PNG\\r\\n\\x1a\\n'\n\
             i=8;idat=b''\n\
             while i<len(d):\n\
             \x20n=struct.unpack('>I',d[i:i+4])[0];t=d[i+4:i+8]\n\
             \x20if t==b'IDAT': idat+=d[i+8:i+8+n]\n\
             \x20i+=12+n\n\
             raw=zlib.decompress(idat)\n\
             print(len(set(raw)), len(raw))\n",
        )
        .arg(&shot)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    let distinct: usize = text
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(distinct > 30, "screenshot looks blank ({text})");
}
