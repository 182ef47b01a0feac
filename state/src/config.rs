//! `[state]`: where durable state lives, how RocksDB is tuned, and how often checkpoints
//! are taken.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Durable state and checkpoints (`[state]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// State directory (RocksDB database and its retained checkpoints). Empty: no durable
    /// state, nothing survives a restart (`replay`'s default).
    #[serde(default)]
    pub dir: PathBuf,
    /// A checkpoint (source offsets, features, pending impressions, model, metrics) is taken
    /// this often, in wall-clock milliseconds.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Checkpoints kept besides the live database, to fall back to if the newest is damaged.
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// RocksDB block cache, MiB (shared by all tables).
    #[serde(default = "default_block_cache_mb")]
    pub block_cache_mb: usize,
    /// RocksDB write buffer (memtable) per table, MiB.
    #[serde(default = "default_write_buffer_mb")]
    pub write_buffer_mb: usize,
    /// Compression of table files: `none`, `lz4`, `zstd` or `snappy`.
    #[serde(default)]
    pub compression: Compression,
}

/// Compression of RocksDB table files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Uncompressed.
    None,
    /// LZ4: cheap, the default.
    #[default]
    Lz4,
    /// Zstandard: smaller, more CPU.
    Zstd,
    /// Snappy.
    Snappy,
}

const fn default_checkpoint_interval_ms() -> u64 {
    5000
}

const fn default_keep_checkpoints() -> usize {
    2
}

const fn default_block_cache_mb() -> usize {
    64
}

const fn default_write_buffer_mb() -> usize {
    32
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            checkpoint_interval_ms: default_checkpoint_interval_ms(),
            keep_checkpoints: default_keep_checkpoints(),
            block_cache_mb: default_block_cache_mb(),
            write_buffer_mb: default_write_buffer_mb(),
            compression: Compression::default(),
        }
    }
}

impl StateConfig {
    /// Whether state is durable (a directory is configured).
    pub fn is_durable(&self) -> bool {
        !self.dir.as_os_str().is_empty()
    }

    /// Every problem with these settings, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.checkpoint_interval_ms < 100 {
            problems.push(format!(
                "state.checkpoint_interval_ms must be at least 100, got {}",
                self.checkpoint_interval_ms
            ));
        }
        if self.keep_checkpoints == 0 {
            problems.push(
                "state.keep_checkpoints must be at least 1 (a damaged newest checkpoint needs \
                 one to fall back to), got 0"
                    .to_owned(),
            );
        }
        if self.block_cache_mb == 0 {
            problems.push("state.block_cache_mb must be > 0, got 0".to_owned());
        }
        if self.write_buffer_mb == 0 {
            problems.push("state.write_buffer_mb must be > 0, got 0".to_owned());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_keys() {
        assert!(StateConfig::default().validate().is_empty());
        assert!(!StateConfig::default().is_durable());
        let bad = StateConfig {
            checkpoint_interval_ms: 5,
            keep_checkpoints: 0,
            block_cache_mb: 0,
            ..StateConfig::default()
        };
        let problems = bad.validate();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("state.checkpoint_interval_ms"));
        assert!(problems[1].starts_with("state.keep_checkpoints"));
        assert!(problems[2].starts_with("state.block_cache_mb"));
    }
}
