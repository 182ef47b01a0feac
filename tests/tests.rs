//! ctrflow's integration tests: one binary, one module per area.

/// Fixtures: the binary, temp dirs, generated inputs.
mod util;

/// `ctrflow replay` end to end: learning, determinism, bad input, workers.
mod replay;

/// Every file in `configs/` parses and validates.
mod configs;
