use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `ctrflow` binary under test.
pub fn ctrflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ctrflow"))
}

/// Runs `command`, failing the test with its stderr if it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("starting ctrflow");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Writes `count` generated impressions (and their feedback) to `dir/name`.
pub fn generate(dir: &Path, name: &str, count: u64, seed: u64) -> PathBuf {
    let path = dir.join(name);
    run_ok(
        ctrflow()
            .args([
                "gen",
                "--count",
                &count.to_string(),
                "--seed",
                &seed.to_string(),
                "--out",
            ])
            .arg(&path),
    );
    path
}

/// Runs `replay --json` with extra arguments and returns the report.
pub fn replay_json(input: &Path, extra: &[&str]) -> serde_json::Value {
    let output = run_ok(
        ctrflow()
            .arg("replay")
            .arg("--input")
            .arg(input)
            .arg("--json")
            .args(extra),
    );
    serde_json::from_slice(&output.stdout).expect("the report is one JSON object")
}

/// Event time of impression `imp-<n>` in the generated file `input`.
pub fn impression_ts(input: &Path, n: u64) -> i64 {
    let id = format!("\"imp-{n}\"");
    let text = std::fs::read_to_string(input).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&id) && l.contains("impression"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["ts"].as_i64().unwrap()
}
