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
