use ctrflow::config::{ConfigError, PipelineConfig};

#[test]
fn every_shipped_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            PipelineConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen > 0);
}

#[test]
fn example_toml_lists_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/example.toml");
    let config = PipelineConfig::load(std::path::Path::new(path)).unwrap();
    assert_eq!(config, PipelineConfig::default());
}

#[test]
fn three_mistakes_are_three_messages_naming_their_keys() {
    let text = "[model]\nbits = 20\nl1 = -1.0\n[label]\nfast_skip_ms = 4000000\n";
    let Err(ConfigError::Invalid { problems, .. }) = PipelineConfig::parse(text, "bad.toml") else {
        panic!("accepted");
    };
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("model.bits") && p.contains("features.bits"))
    );
    assert!(problems.iter().any(|p| p.contains("model.l1")));
    assert!(problems.iter().any(|p| p.contains("label.fast_skip_ms")));
}

/// `ctrflow check-config` with `env` added to its environment: (success, stdout, stderr).
fn check_config(path: &std::path::Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let output = crate::util::ctrflow()
        .arg("check-config")
        .arg("--print")
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .expect("starting ctrflow");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_passes_check_config() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, _, stderr) = check_config(&path, &[]);
            assert!(ok, "{}: {stderr}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 2);
}

#[test]
fn check_config_reports_three_mistakes_each_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[model]\nl1 = -1.0\n[input]\nwatermark_step_ms = 0\n[telemetry]\nlisten = \"everywhere\"\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = check_config(&path, &[]);
    assert!(!ok, "accepted: {stdout}");
    for key in ["model.l1", "input.watermark_step_ms", "telemetry.listen"] {
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
    assert_eq!(stderr.matches("\n  - ").count(), 3, "{stderr}");
}

#[test]
fn env_overrides_take_effect_and_bad_ones_name_the_key() {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/local.toml"));
    let (ok, stdout, stderr) = check_config(
        path,
        &[
            ("CTRFLOW__MODEL__L1", "0.5"),
            ("CTRFLOW__TELEMETRY__LISTEN", "127.0.0.1:9999"),
        ],
    );
    assert!(ok, "{stderr}");
    let effective: toml::Table = toml::from_str(&stdout).unwrap();
    assert_eq!(effective["model"]["l1"].as_float(), Some(0.5), "{stdout}");
    assert_eq!(
        effective["telemetry"]["listen"].as_str(),
        Some("127.0.0.1:9999")
    );
    // Untouched keys keep the file's values (local.toml sets allowed_lateness_ms = 0).
    assert_eq!(
        effective["input"]["allowed_lateness_ms"].as_integer(),
        Some(0)
    );

    let (ok, _, stderr) = check_config(path, &[("CTRFLOW__MODEL__L1", "lots")]);
    assert!(!ok);
    assert!(
        stderr.contains("CTRFLOW__MODEL__L1") && stderr.contains("model.l1"),
        "{stderr}"
    );
    let (ok, _, stderr) = check_config(path, &[("CTRFLOW__MODEL__LAMBDA", "1")]);
    assert!(!ok);
    assert!(stderr.contains("unknown key model.lambda"), "{stderr}");
}

/// Every `ctrflow_*` metric name in `text`, with a histogram's `_bucket`/`_sum`/`_count`
/// suffix taken off.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ctrflow_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        names.insert(base.to_owned());
    }
    names
}

#[test]
fn dashboard_and_alert_rules_use_only_exported_or_reserved_metrics() {
    use ctrflow::telemetry::{METRICS, RESERVED};
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/configs"));
    let dashboard = std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() > 10));
    let rules = std::fs::read_to_string(dir.join("prometheus-alerts.yml")).unwrap();
    let known = |name: &str| RESERVED.contains(&name) || METRICS.iter().any(|&(m, _, _)| m == name);
    for (file, text) in [("dashboard", &dashboard), ("rules", &rules)] {
        let names = metric_names(text);
        let unknown: Vec<_> = names.iter().filter(|n| !known(n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses unknown metrics {unknown:?}"
        );
        assert!(names.len() >= 8, "{file}: {names:?}");
    }
    // The rules cover lag, throughput and every drift alert kind of the contract.
    for needle in [
        "ctrflow_consumer_lag_messages",
        "CtrflowThroughputCollapse",
        "kind=\"concept_drift\"",
        "kind=\"data_drift\"",
        "kind=\"calibration\"",
        "kind=\"label_delay\"",
    ] {
        assert!(rules.contains(needle), "{needle}");
    }
    // Every exported metric is on the dashboard.
    let on_dashboard = metric_names(&dashboard);
    for &(name, _, _) in METRICS {
        assert!(
            on_dashboard.contains(name),
            "{name} is not on the dashboard"
        );
    }
}
