//! `ukload image rootfs`: read-only erofs root filesystems for MCP servers.
//!
//! The real proof that an image is complete: extract it with
//! `fsck.erofs --extract` and run the program inside it with `chroot` (as
//! root; nothing is mounted). Also checked against `ldd`, independently of
//! the builder's own ELF reader.

mod common;

use common::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use ukload::rootfs::{self, RootfsError, RootfsSpec, MANIFEST_PATH};

/// Deadline of any one command here (a build hashes and copies ~100 MB).
const CMD_LIMIT: Duration = Duration::from_secs(300);

/// True when `what` is there; otherwise fails under CI=true, says
/// "skipped" and returns false elsewhere.
fn need(what: &str, present: bool) -> bool {
    common::prerequisite((!present).then(|| format!("{what} not found")))
}

fn have_erofs_utils() -> bool {
    need(
        "erofs-utils (mkfs.erofs, fsck.erofs)",
        ukload::paths::find_on_path("mkfs.erofs").is_some()
            && ukload::paths::find_on_path("fsck.erofs").is_some(),
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    need("root (for chroot)", root)
}

/// `ukload image rootfs ARGS` with the cache in `cache`.
fn rootfs_cmd(cache: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(common::ukload_bin());
    c.env("UKLOAD_CACHE_DIR", cache)
        .stdin(Stdio::null())
        .args(["image", "rootfs"])
        .args(args);
    common::output_within(c, CMD_LIMIT)
}

/// Builds with `--format json` and returns the document.
fn build_json(cache: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = rootfs_cmd(cache, &all);
    assert!(
        out.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Checks the image with fsck.erofs and extracts it into `dir`.
fn extract(image: &Path, dir: &Path) {
    let mut c = Command::new("fsck.erofs");
    c.arg(format!("--extract={}", dir.display())).arg(image);
    let out = common::output_within(c, CMD_LIMIT);
    assert!(
        out.status.success(),
        "fsck.erofs {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `argv` chrooted into `root` with an empty environment and `stdin`.
fn run_in(root: &Path, argv: &[&str], stdin: Option<&Path>) -> Output {
    let chroot = ukload::paths::find_on_path("chroot").expect("chroot (coreutils)");
    let mut c = Command::new(chroot);
    c.arg(root)
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(match stdin {
            Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
            None => Stdio::null(),
        });
    common::output_within(c, CMD_LIMIT)
}

/// Every library path `ldd` names for `program`.
fn ldd_paths(program: &Path) -> Vec<PathBuf> {
    let mut c = Command::new("ldd");
    c.arg(program);
    let out = common::output_within(c, CMD_LIMIT);
    assert!(out.status.success(), "ldd {}", program.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn in_image(root: &Path, guest: &Path) -> PathBuf {
    root.join(guest.strip_prefix("/").unwrap())
}

/// A copy of `/bin/true` whose `DT_NEEDED` "libc.so.6" names `needed`
/// instead (same length: the string is patched in place).
fn true_needing(needed: &[u8; 9]) -> Vec<u8> {
    let mut data = std::fs::read("/bin/true").unwrap();
    let off = ukload::elf::needed_string_offset(Path::new("/bin/true"), "libc.so.6")
        .unwrap()
        .expect("/bin/true needs libc.so.6") as usize;
    data[off..off + needed.len()].copy_from_slice(needed);
    data
}

/// Writes `data` to `path` as an executable.
fn write_exec(path: &Path, data: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn node_image_runs_node_and_the_echo_server_inside_a_chroot() {
    if !need("node", common::node_available()) || !have_erofs_utils() || !is_root() {
        return;
    }
    let t = TempDir::new("rootfs-node");
    let server = common::echo_server();
    let server_s = server.to_str().unwrap();
    let doc = build_json(
        &t.path().join("cache"),
        &["--command", &format!("node {server_s}")],
    );
    let image = PathBuf::from(doc["path"].as_str().unwrap());
    assert_eq!(doc["cached"], false);
    let root = t.path().join("root");
    extract(&image, &root);

    // The manifest in the image is the one reported, and names the command.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(in_image(&root, Path::new(MANIFEST_PATH))).unwrap())
            .unwrap();
    assert_eq!(manifest, doc["manifest"]);
    let node = ukload::paths::find_on_path("node").unwrap();
    assert_eq!(
        manifest["command"],
        serde_json::json!([node.to_str().unwrap(), server_s])
    );
    assert!(
        in_image(&root, &server).is_file(),
        "the script is in the image"
    );
    for m in ["dev", "proc", "sys", "tmp"] {
        assert!(root.join(m).is_dir(), "/{m} mount point");
    }

    // Independently of the builder's ELF reader: everything ldd names is there.
    for lib in ldd_paths(&node) {
        assert!(
            in_image(&root, &lib).exists(),
            "{} (from ldd) missing from the image",
            lib.display()
        );
    }

    // The real proof: node runs inside the image alone.
    let out = run_in(
        &root,
        &[node.to_str().unwrap(), "-e", "console.log(1+1)"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");

    // And the MCP server answers initialize on stdio.
    let req = t.path().join("req.jsonl");
    std::fs::write(
        &req,
        concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
            "\n"
        ),
    )
    .unwrap();
    let argv: Vec<&str> = manifest["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let out = run_in(&root, &argv, Some(&req));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first: serde_json::Value =
        serde_json::from_str(stdout.lines().next().unwrap_or("null")).unwrap();
    assert_eq!(
        first["id"],
        1,
        "{stdout} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(first["result"]["serverInfo"].is_object(), "{first}");
}

#[test]
fn python_image_runs_python_with_its_standard_library_inside_a_chroot() {
    let python = Path::new("/usr/bin/python3");
    if !need("/usr/bin/python3", python.exists()) || !have_erofs_utils() || !is_root() {
        return;
    }
    let t = TempDir::new("rootfs-py");
    let doc = build_json(
        &t.path().join("cache"),
        &["--command", "/usr/bin/python3 -u"],
    );
    let root = t.path().join("root");
    extract(Path::new(doc["path"].as_str().unwrap()), &root);
    let real = std::fs::canonicalize(python).unwrap();
    for lib in ldd_paths(&real) {
        assert!(in_image(&root, &lib).exists(), "{} missing", lib.display());
    }
    // Both the named path and the real file work.
    assert!(std::fs::symlink_metadata(root.join("usr/bin/python3")).is_ok());
    assert!(in_image(&root, &real).is_file());
    // Left out to keep the image small.
    let version = real.file_name().unwrap().to_str().unwrap();
    let stdlib = root.join("usr/lib").join(version);
    assert!(
        stdlib.join("os.py").is_file(),
        "stdlib at {}",
        stdlib.display()
    );
    for skipped in ["test", "idlelib", "tkinter", "ensurepip"] {
        assert!(
            !stdlib.join(skipped).exists(),
            "{skipped} should be left out"
        );
    }
    let out = run_in(
        &root,
        &[
            "/usr/bin/python3",
            "-c",
            "import json, decimal; print(json.dumps(2))",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
}

#[test]
fn same_inputs_give_the_same_bytes_and_a_second_build_comes_from_the_cache() {
    if !have_erofs_utils() {
        return;
    }
    let t = TempDir::new("rootfs-repro");
    // A tree made in two different orders: the image must not care.
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for n in ["zeta", "alpha", "mid", "beta"] {
        std::fs::write(tree.join("sub").join(n), n).unwrap();
    }
    std::os::unix::fs::symlink("sub/alpha", tree.join("link")).unwrap();
    let inc = format!("{}:/srv/data", tree.display());
    let args = ["--command", "/bin/true", "--include", inc.as_str()];
    let a = build_json(&t.path().join("a"), &args);
    // Rewrite the files (new mtimes, new creation order): same content, same key.
    for n in ["beta", "mid", "alpha", "zeta"] {
        std::fs::remove_file(tree.join("sub").join(n)).unwrap();
        std::fs::write(tree.join("sub").join(n), n).unwrap();
    }
    let b = build_json(&t.path().join("b"), &args);
    assert_eq!(a["key"], b["key"]);
    let bytes = |d: &serde_json::Value| std::fs::read(d["path"].as_str().unwrap()).unwrap();
    assert!(bytes(&a) == bytes(&b), "two builds differ");
    let fsck = Command::new("fsck.erofs")
        .arg(a["path"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(fsck.status.success(), "fsck.erofs refused the image");

    // Second build in the same cache: no mkfs, the same path on stdout.
    let image = PathBuf::from(a["path"].as_str().unwrap());
    let mtime = std::fs::metadata(&image).unwrap().modified().unwrap();
    let again = rootfs_cmd(&t.path().join("a"), &args);
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        image.display().to_string()
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("cached"));
    assert_eq!(
        std::fs::metadata(&image).unwrap().modified().unwrap(),
        mtime
    );
    // Only the image and its manifest are left in the cache (no staging).
    let mut names: Vec<String> = std::fs::read_dir(image.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let key = a["key"].as_str().unwrap();
    assert_eq!(names, [format!("{key}.erofs"), format!("{key}.json")]);

    // Changed content, another key.
    std::fs::write(tree.join("sub/mid"), "changed").unwrap();
    let c = build_json(&t.path().join("a"), &args);
    assert_ne!(c["key"], a["key"]);
}

#[test]
fn includes_keep_inside_symlinks_and_copy_outside_ones_and_bring_elf_libraries() {
    let t = TempDir::new("rootfs-inc");
    let tree = t.path().join("app");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("data.txt"), "data").unwrap();
    std::fs::write(t.path().join("outside.txt"), "outside").unwrap();
    std::os::unix::fs::symlink("data.txt", tree.join("inside-link")).unwrap();
    std::os::unix::fs::symlink(t.path().join("outside.txt"), tree.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../outside.txt", tree.join("escaping-link")).unwrap();
    std::fs::copy("/bin/true", tree.join("bin/tool")).unwrap();
    let spec = RootfsSpec::parse("/bin/true", &[format!("{}:/opt/app", tree.display())]).unwrap();
    let plan = rootfs::plan(&spec, "test").unwrap();
    use rootfs::Entry;
    let e = |p: &str| plan.entries.get(Path::new(p)).cloned();
    assert_eq!(
        e("/opt/app/inside-link"),
        Some(Entry::Symlink {
            target: "data.txt".into()
        })
    );
    assert!(matches!(e("/opt/app/abs-link"), Some(Entry::File { .. })));
    assert!(matches!(
        e("/opt/app/escaping-link"),
        Some(Entry::File { .. })
    ));
    assert!(matches!(e("/opt/app/bin/tool"), Some(Entry::File { .. })));
    assert_eq!(plan.manifest.includes, ["/opt/app"]);
    assert!(plan
        .manifest
        .libraries
        .iter()
        .any(|l| l.ends_with("libc.so.6")));
}

#[test]
fn a_missing_library_is_refused_naming_it_and_its_user() {
    // No mkfs.erofs needed: the plan fails before anything is built.
    let t = TempDir::new("rootfs-nolib");
    // A real binary whose DT_NEEDED names a library that exists nowhere.
    let prog = t.path().join("needs-libq");
    write_exec(&prog, &true_needing(b"libq.so.6"));

    let out = rootfs_cmd(
        &t.path().join("cache"),
        &["--command", prog.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "libq.so.6 needed by {} not found in",
            prog.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("/lib/x86_64-linux-gnu"),
        "names the dirs: {err}"
    );
    assert!(out.stdout.is_empty());
    assert!(!t.path().join("cache/rootfs").exists(), "nothing written");

    // The library API says the same, as a typed error.
    let spec = RootfsSpec::parse(prog.to_str().unwrap(), &[]).unwrap();
    match rootfs::build(&spec, &t.path().join("cache")) {
        Err(RootfsError::LibraryNotFound { library, .. }) => assert_eq!(library, "libq.so.6"),
        other => panic!("expected LibraryNotFound, got {other:?}"),
    }
}

#[test]
fn bad_input_is_a_usage_error_naming_what_is_wrong() {
    let t = TempDir::new("rootfs-bad");
    let cache = t.path().join("cache");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--command", "no-such-program-ukload"],
            "program `no-such-program-ukload` not found",
        ),
        (
            &["--command", "/bin/true", "--include", ""],
            "HOST is empty",
        ),
        (
            &["--command", "/bin/true", "--include", "/etc:relative"],
            "must be absolute",
        ),
        (
            &["--command", "/bin/true", "--include", "/no/such/include"],
            "include /no/such/include does not exist",
        ),
        (&["--command", ""], "empty command"),
        (&["--command", "'unterminated"], "unterminated"),
        (&["--command", "/bin/true", "--format", "xml"], "--format"),
    ];
    for (args, want) in cases {
        let out = rootfs_cmd(&cache, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    assert!(!cache.join("rootfs").exists());
}

#[test]
fn a_shell_script_program_is_refused_with_what_to_name_instead() {
    let t = TempDir::new("rootfs-shim");
    let shim = t.path().join("python3");
    write_exec(
        &shim,
        b"#!/usr/bin/env bash\nexec pyenv exec python3 \"$@\"\n",
    );
    let spec = RootfsSpec::parse(shim.to_str().unwrap(), &[]).unwrap();
    let err = rootfs::plan(&spec, "test").unwrap_err();
    assert!(matches!(err, RootfsError::ShellScript { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("shell script") && msg.contains("/usr/bin/python3"),
        "{msg}"
    );
}

#[test]
fn without_mkfs_erofs_the_build_says_how_to_install_it() {
    let t = TempDir::new("rootfs-nomkfs");
    let mut c = Command::new(common::ukload_bin());
    c.env("UKLOAD_CACHE_DIR", t.path().join("cache"))
        .env("PATH", t.path())
        .stdin(Stdio::null())
        .args(["image", "rootfs", "--command", "/bin/true"]);
    let out = common::output_within(c, CMD_LIMIT);
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install erofs-utils"), "{err}");
}

#[test]
fn argument_files_are_included_at_their_absolute_path() {
    // Integration tests run in the package root: a relative path works.
    let rel = "examples/test_mcp_servers/echo_server.js";
    assert!(Path::new(rel).is_file());
    let spec = RootfsSpec::parse(&format!("/bin/true {rel} --flag 7"), &[]).unwrap();
    let abs = std::path::absolute(rel).unwrap();
    let argv = spec.guest_command();
    assert_eq!(argv, ["/bin/true", abs.to_str().unwrap(), "--flag", "7"]);
    let plan = rootfs::plan(&spec, "test").unwrap();
    assert!(plan.entries.contains_key(&abs));
    assert_eq!(plan.manifest.includes, [abs.to_str().unwrap()]);
    assert_eq!(plan.manifest.command, argv);
}

#[test]
fn image_info_lists_the_root_filesystems_in_the_cache() {
    if !have_erofs_utils() {
        return;
    }
    let t = TempDir::new("rootfs-info");
    let cache = t.path().join("cache");
    let doc = build_json(&cache, &["--command", "/bin/true --version"]);
    let mut c = Command::new(common::ukload_bin());
    c.env("UKLOAD_CACHE_DIR", &cache)
        .stdin(Stdio::null())
        .args(["image", "info"]);
    let out = common::output_within(c, CMD_LIMIT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("root filesystems: 1"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains(doc["path"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("image not listed: {text}"));
    assert!(line.contains("command: /bin/true --version"), "{line}");
    let files = doc["manifest"]["files"].as_u64().unwrap();
    assert!(line.contains(&format!("{files} files")), "{line}");
    // --out: a copy of the same bytes, and its path is what is printed.
    let copy = t.path().join("out.erofs");
    let out = rootfs_cmd(
        &cache,
        &[
            "--command",
            "/bin/true --version",
            "--out",
            copy.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        copy.display().to_string()
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(doc["path"].as_str().unwrap()).unwrap()
    );
    // The pieces are still listed as before.
    assert!(text.contains("kernel (vmlinux)"), "{text}");
    let listed = rootfs::list(&cache);
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].manifest,
        serde_json::from_value(doc["manifest"].clone()).unwrap()
    );
}

#[test]
fn python_stdlib_is_found_by_convention_and_trimmed() {
    // A stand-in interpreter named python3.9 in its own prefix: the
    // convention <prefix>/bin/python3.X → <prefix>/lib/python3.X decides.
    let t = TempDir::new("rootfs-pyconv");
    let prefix = t.path().join("prefix");
    write_exec(
        &prefix.join("bin/python3.9"),
        &std::fs::read("/bin/true").unwrap(),
    );
    let lib = prefix.join("lib/python3.9");
    for f in [
        "os.py",
        "json/__init__.py",
        "__pycache__/os.cpython-39.pyc",
        "test/test_x.py",
    ] {
        std::fs::create_dir_all(lib.join(f).parent().unwrap()).unwrap();
        std::fs::write(lib.join(f), f).unwrap();
    }
    for d in [
        "idlelib",
        "tkinter",
        "ensurepip",
        "config-3.9-x86_64-linux-gnu",
    ] {
        std::fs::create_dir_all(lib.join(d)).unwrap();
        std::fs::write(lib.join(d).join("x"), "x").unwrap();
    }
    // An extension module whose library the host lacks: left out, with a note.
    write_exec(
        &lib.join("lib-dynload/_bad.so"),
        &true_needing(b"libq.so.6"),
    );
    write_exec(
        &lib.join("lib-dynload/_good.so"),
        &std::fs::read("/bin/true").unwrap(),
    );

    let py = prefix.join("bin/python3.9");
    let spec = RootfsSpec::parse(py.to_str().unwrap(), &[]).unwrap();
    let plan = rootfs::plan(&spec, "test").unwrap();
    let has = |p: &Path| plan.entries.contains_key(p);
    assert!(has(&lib.join("os.py")) && has(&lib.join("json/__init__.py")));
    assert!(
        has(&lib.join("__pycache__/os.cpython-39.pyc")),
        "__pycache__ kept"
    );
    for gone in [
        "test",
        "idlelib",
        "tkinter",
        "ensurepip",
        "config-3.9-x86_64-linux-gnu",
    ] {
        assert!(!has(&lib.join(gone)), "{gone} left out");
    }
    assert!(has(&lib.join("lib-dynload/_good.so")));
    assert!(!has(&lib.join("lib-dynload/_bad.so")));
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("_bad.so") && w.contains("libq.so.6")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn an_env_script_brings_env_and_its_interpreter() {
    if !need("node", common::node_available()) {
        return;
    }
    let t = TempDir::new("rootfs-envscript");
    let script = t.path().join("server");
    write_exec(&script, b"#!/usr/bin/env node\nconsole.log(1)\n");
    let spec = RootfsSpec::parse(script.to_str().unwrap(), &[]).unwrap();
    let plan = rootfs::plan(&spec, "test").unwrap();
    let node = std::fs::canonicalize(ukload::paths::find_on_path("node").unwrap()).unwrap();
    let env = std::fs::canonicalize("/usr/bin/env").unwrap();
    for p in [&script, &node, &env] {
        assert!(
            plan.entries.contains_key(p.as_path()),
            "{} missing",
            p.display()
        );
    }
    assert_eq!(plan.manifest.command, [script.to_str().unwrap()]);
}

#[test]
fn an_origin_library_inside_a_moved_tree_goes_where_the_tree_goes() {
    // DT_NEEDED "$ORIGIN/x" (same length as "libc.so.6"): the loader expands
    // $ORIGIN to the program's directory, and so must the builder.
    let t = TempDir::new("rootfs-origin");
    let app = t.path().join("app");
    write_exec(&app.join("bin/tool"), &true_needing(b"$ORIGIN/x"));
    let libc = ukload::elf::read(Path::new("/bin/true")).unwrap();
    assert!(libc.needed.contains(&"libc.so.6".to_string()));
    std::fs::copy("/lib/x86_64-linux-gnu/libc.so.6", app.join("bin/x")).unwrap();
    let spec = RootfsSpec::parse("/bin/true", &[format!("{}:/opt/app", app.display())]).unwrap();
    let plan = rootfs::plan(&spec, "test").unwrap();
    assert!(
        plan.manifest
            .libraries
            .contains(&"/opt/app/bin/x".to_string()),
        "{:?}",
        plan.manifest.libraries
    );
    assert!(plan.entries.contains_key(Path::new("/opt/app/bin/x")));
    assert!(
        !plan.entries.contains_key(&app.join("bin/x")),
        "not at the host path"
    );

    // Without the library next to it, the error names $ORIGIN's expansion.
    std::fs::remove_file(app.join("bin/x")).unwrap();
    let err = rootfs::plan(&spec, "test").unwrap_err().to_string();
    assert!(
        err.contains("$ORIGIN/x needed by")
            && err.contains(&app.join("bin/x").display().to_string()),
        "{err}"
    );
}

#[test]
fn a_symlink_to_an_enclosing_directory_is_refused_as_a_loop() {
    let t = TempDir::new("rootfs-loop");
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("d")).unwrap();
    std::os::unix::fs::symlink(&tree, tree.join("d/up")).unwrap();
    let spec = RootfsSpec::parse("/bin/true", &[format!("{}:/srv/t", tree.display())]).unwrap();
    let err = rootfs::plan(&spec, "test").unwrap_err();
    assert!(matches!(err, RootfsError::Usage(_)), "{err}");
    assert!(err.to_string().contains("loop"), "{err}");
}

#[test]
fn a_failing_mkfs_is_reported_and_leaves_nothing_behind() {
    let t = TempDir::new("rootfs-mkfsfail");
    let bin = t.path().join("bin");
    write_exec(
        &bin.join("mkfs.erofs"),
        b"#!/bin/sh\nif [ $# -eq 0 ]; then echo 'mkfs.erofs 9.9'; exit 1; fi\necho 'no space left' >&2\nexit 3\n",
    );
    let cache = t.path().join("cache");
    let mut c = Command::new(common::ukload_bin());
    c.env("UKLOAD_CACHE_DIR", &cache)
        .env("PATH", &bin)
        .stdin(Stdio::null())
        .args(["image", "rootfs", "--command", "/bin/true"]);
    let out = common::output_within(c, CMD_LIMIT);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mkfs.erofs failed") && err.contains("no space left"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let left: Vec<_> = std::fs::read_dir(cache.join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the cache: {left:?}");
}
