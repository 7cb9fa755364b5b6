//! The `edgeswarm` binary as an operator meets it: help text, option
//! precedence (command line > environment > config file > default), key
//! files, and clear one-line errors with a non-zero exit.

use std::path::Path;
use std::process::{Command, Output};

fn edgeswarm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeswarm"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run edgeswarm")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Compares with a checked-in snapshot; `UPDATE_SNAPSHOTS=1` rewrites it.
fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing snapshot {}; run with UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    assert_eq!(
        actual, expected,
        "help text changed; review and run with UPDATE_SNAPSHOTS=1"
    );
}

/// Every long option in a help text, with its description (up to the
/// next option).
fn option_blocks(text: &str) -> Vec<(String, String)> {
    text.split("\n      --")
        .skip(1)
        .map(|block| {
            let name = block.split_whitespace().next().unwrap_or("").to_owned();
            (name, block.to_owned())
        })
        .collect()
}

#[test]
fn help_snapshots_and_every_node_option_documents_its_default() {
    let top = edgeswarm(&["--help"], &[]);
    assert!(top.status.success());
    assert!(stdout(&top).contains("Examples:"));
    snapshot("help.txt", &stdout(&top));
    let node = edgeswarm(&["node", "--help"], &[]);
    assert!(node.status.success());
    let text = stdout(&node);
    snapshot("node-help.txt", &text);
    // Every long option's description (up to the next option) names a default.
    let mut options = 0;
    for (name, block) in option_blocks(&text) {
        if ["help", "print-config"].contains(&name.as_str()) {
            continue;
        }
        options += 1;
        assert!(
            block.contains("[default:"),
            "--{name} does not document its default"
        );
    }
    assert!(options >= 16, "found only {options} documented options");
    assert!(text.contains("--keep-versions"), "{text}");
}

#[test]
fn every_client_command_has_help_json_and_stated_defaults() {
    for cmd in ["deploy", "status", "images", "rm", "keygen", "swarm-key"] {
        let out = edgeswarm(&[cmd, "--help"], &[]);
        assert!(out.status.success(), "{cmd}: {}", stderr(&out));
        let text = stdout(&out);
        snapshot(&format!("{cmd}-help.txt"), &text);
        for (name, block) in option_blocks(&text) {
            if name == "help" {
                continue;
            }
            assert!(
                block.contains("[default:") || block.contains("(required"),
                "{cmd} --{name} states neither a default nor that it is required"
            );
            assert!(
                block.matches("[default:").count() <= 1,
                "{cmd} --{name} states its default twice"
            );
        }
        // Every command that reports has --json.
        assert!(text.contains("--json"), "{cmd} has no --json");
    }
}

#[test]
fn precedence_is_cli_then_env_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "locality = \"from-file\"\ngateway = true\nmax_store_size = \"2G\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let only_file = edgeswarm(&["node", "--config", file, "--print-config"], &[]);
    assert!(only_file.status.success(), "{}", stderr(&only_file));
    let text = stdout(&only_file);
    assert!(text.contains("locality = \"from-file\""), "{text}");
    assert!(text.contains("gateway = true"), "{text}");

    let env = edgeswarm(
        &["node", "--config", file, "--print-config"],
        &[("EDGESWARM_LOCALITY", "from-env")],
    );
    let text = stdout(&env);
    assert!(text.contains("locality = \"from-env\""), "{text}");
    assert!(
        text.contains("max_store_size = \"2G\""),
        "file still fills the rest: {text}"
    );

    let cli = edgeswarm(
        &[
            "node",
            "--config",
            file,
            "--locality",
            "from-cli",
            "--gateway=false",
            "--print-config",
        ],
        &[("EDGESWARM_LOCALITY", "from-env")],
    );
    assert!(
        stdout(&cli).contains("locality = \"from-cli\""),
        "{}",
        stdout(&cli)
    );
    assert!(stdout(&cli).contains("gateway = false"), "{}", stdout(&cli));

    // Boolean options are plain flags too.
    let flag = edgeswarm(&["node", "--gateway", "--no-mdns", "--print-config"], &[]);
    assert!(
        stdout(&flag).contains("gateway = true"),
        "{}",
        stdout(&flag)
    );
    assert!(
        stdout(&flag).contains("no_mdns = true"),
        "{}",
        stdout(&flag)
    );
}

#[test]
fn bad_config_and_options_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "localty = \"typo\"\n").unwrap();
    let out = edgeswarm(&["node", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("parsing config file"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("localty"), "{}", stderr(&out));
    // The gateway allowlist is read from the file too.
    std::fs::write(
        &file,
        "open_locality = true\ntrust_gateway = [\"not-a-peer\"]\n",
    )
    .unwrap();
    let out = edgeswarm(&["node", "--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--trust-gateway \"not-a-peer\" is not a peer id"),
        "{}",
        stderr(&out)
    );

    let data = dir.path().join("data");
    for (args, needle) in [
        (vec!["--max-store-size", "12Q"], "unknown unit"),
        (vec!["--chunk-size", "100K"], "chunk size"),
        (vec!["--locality", "a/b"], "--locality"),
        (vec!["--import", "tape"], "--import"),
        (vec!["--listen", "not-an-addr"], "not a multiaddr"),
        (vec!["--platform", "linux"], "--platform"),
        (vec!["--trust-gateway", "not-a-peer"], "is not a peer id"),
        // Closed by default: no swarm key needs an explicit open locality.
        (vec![], "--open-locality"),
        (vec![], "edgeswarm swarm-key --out"),
    ] {
        let mut full = vec!["node", "--data-dir", data.to_str().unwrap()];
        if !args.is_empty() {
            full.push("--open-locality");
        }
        full.extend(args.iter().copied());
        let out = edgeswarm(&full, &[]);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = stderr(&out);
        assert!(err.starts_with("edgeswarm: "), "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn keygen_writes_a_pair_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("publisher.key");
    let out = edgeswarm(&["keygen", "--out", key.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let secret = std::fs::read_to_string(&key).unwrap();
    let public = std::fs::read_to_string(dir.path().join("publisher.key.pub")).unwrap();
    let secret = edgeswarm_protocol::signing::PublisherKey::from_file_contents(&secret).unwrap();
    let public = edgeswarm_protocol::signing::PublicKey::from_file_contents(&public).unwrap();
    assert_eq!(secret.public(), public);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // --json names the files and the public key.
    let second = dir.path().join("second.key");
    let out = edgeswarm(
        &["keygen", "--out", second.to_str().unwrap(), "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let public = std::fs::read_to_string(dir.path().join("second.key.pub")).unwrap();
    let public = edgeswarm_protocol::signing::PublicKey::from_file_contents(&public).unwrap();
    assert_eq!(v["public_key_hex"], public.to_hex());
    assert_eq!(v["secret_key"], second.to_str().unwrap());

    let again = edgeswarm(&["keygen", "--out", key.to_str().unwrap()], &[]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("must not exist"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn client_commands_say_when_no_node_answers() {
    let out = edgeswarm(&["status", "--api", "127.0.0.1:9"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no edgeswarm node answers"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn registry_ca_and_log_format_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // A wrong --registry-ca path fails the start, naming the option.
    let missing = dir.path().join("missing-ca.pem");
    let out = edgeswarm(
        &[
            "node",
            "--data-dir",
            data,
            "--registry-ca",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--registry-ca"), "{err}");
    assert!(err.contains("missing-ca.pem"), "{err}");

    // Both come from the config file too.
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "registry_ca = [\"/etc/edgeswarm/ca.pem\"]\nlog_format = \"json\"\n",
    )
    .unwrap();
    let out = edgeswarm(
        &["node", "--config", file.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("log_format = \"json\""), "{text}");
    assert!(text.contains("/etc/edgeswarm/ca.pem"), "{text}");

    let out = edgeswarm(&["node", "--log-format", "yaml", "--print-config"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("json"), "{}", stderr(&out));
}
