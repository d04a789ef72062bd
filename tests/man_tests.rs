//! Every command and flag of `--help` is in the manual pages:
//! `man/ukload.1` for `ukload`, `man/ukload-guest.1` for the guest agent.

mod common;

use std::collections::BTreeSet;

/// The flags a man page mentions (`\-\-flag` in roff).
fn man_flags(page: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("man")
            .join(page),
    )
    .unwrap();
    let text = text.replace("\\-", "-");
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if !name.is_empty() {
            out.insert(format!("--{name}"));
        }
    }
    out
}

#[test]
fn every_ukload_flag_is_in_the_manual() {
    let bin = common::ukload_bin();
    let man = man_flags("ukload.1");
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man/ukload.1"),
    )
    .unwrap();
    let mut missing = Vec::new();
    for cmd in [
        &["run"][..],
        &["ps"],
        &["cleanup"],
        &["cycles"],
        &["doctor"],
        &["report", "merge"],
        &["mcp", "tools"],
        &["mcp", "call"],
        &["mcp", "bench"],
        &["image", "build"],
        &["image", "info"],
        &["image", "slim-kernel"],
        &["image", "rootfs"],
    ] {
        let name = cmd.join(" ");
        let described = page.contains(&format!(".SH {}", name.to_uppercase()))
            || page.contains(&format!("ukload {name}"))
            || page.contains(&format!("ukload {}", name.replace('-', "\\-")));
        if !described {
            missing.push(format!("command `ukload {name}`"));
        }
        for f in common::help_flags(&bin, cmd) {
            if !man.contains(&f) {
                missing.push(format!("ukload {name} {f}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from man/ukload.1: {missing:#?}"
    );
}

#[test]
fn every_ukload_guest_flag_is_in_its_manual() {
    let man = man_flags("ukload-guest.1");
    let missing: Vec<String> = common::help_flags(&common::guest_bin(), &[])
        .into_iter()
        .filter(|f| !man.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "flags missing from man/ukload-guest.1: {missing:#?}"
    );
}
