//! `replay --baseline`: a batch logistic regression ([`smartcore`]) beside the online model,
//! on the same time split.
//!
//! # The comparison
//!
//! The replay's labelled impressions (the online model's served score and final label for
//! each) are ordered by event time and split at a timestamp: the first
//! `train_fraction` of them train the batch model, every later one tests both models. No
//! shuffling across time: the batch model never sees the future it is tested on (impressions
//! at the split timestamp all go to the test part). The batch model is fitted once; the
//! online model is scored progressively, each test impression before it learned from it,
//! exactly as served. A third line, the training part's click rate as a constant, says what
//! knowing nothing is worth.
//!
//! # Features
//!
//! Dense and low-cardinality: a second pass over the file one-hot encodes every `ctx` field
//! with at most [`MAX_CARDINALITY`] distinct values in the training part (strings, and
//! integral numbers as categories; fields starting with `_`, such as the generator's
//! `_p_true`, are never used). `user`, `item` and crosses are left out: one column each
//! would make the matrix as wide as the hashed space, which is what online FTRL is for.
//! smartcore's solver (L-BFGS on a dense matrix) costs `rows × columns` per step, so at
//! most `max_train_rows` training rows are used, evenly spread over the training period
//! (still no shuffling).
//!
//! # Why the online model wins or loses
//!
//! The online model should win on streams like the generator's: most of the signal is in
//! per-user and per-item biases and in user×category and item×device interactions that a
//! dense, low-cardinality model cannot represent, and the online model keeps learning
//! through the test part (and follows concept drift), where the batch model is frozen at
//! the split. The batch model can win where the online model is still young (few examples
//! per user and item: early in a stream, or a small file), since it is fitted to
//! convergence on every training row and is not hurt by the label delay; and on the
//! calibration of rare contexts, which FTRL's per-coordinate learning rates adapt to slowly.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde::Serialize;
use smallvec::SmallVec;
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

use crate::event::{self, CtxValue, Event};
use crate::progressive::{Progressive, Summary};

/// Fields with more distinct values than this in the training part are left out.
pub const MAX_CARDINALITY: usize = 64;

/// How the baseline is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineOptions {
    /// The share of labelled impressions, in event-time order, that train the batch model.
    pub train_fraction: f64,
    /// At most this many training rows (evenly spread over the training period).
    pub max_train_rows: usize,
    /// L2 regularization strength of the batch model.
    pub l2: f64,
}

impl Default for BaselineOptions {
    fn default() -> Self {
        Self {
            train_fraction: 0.5,
            max_train_rows: 50_000,
            l2: 1.0,
        }
    }
}

/// A labelled impression as the online model served it.
#[derive(Debug, Clone)]
pub struct Served {
    /// Impression id.
    pub id: CompactString,
    /// Its event time.
    pub ts: i64,
    /// Its final label.
    pub positive: bool,
    /// The online model's score, served before the label was known.
    pub served: f32,
}

/// The batch baseline beside the online model on the same test part.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    /// Impressions at or after this event time (epoch ms) are the test part.
    pub split_ts: i64,
    /// Labelled impressions before the split.
    pub train_examples: u64,
    /// Of those, the rows the batch model was fitted on.
    pub trained_on: u64,
    /// Labelled impressions in the test part.
    pub test_examples: u64,
    /// The `ctx` fields one-hot encoded.
    pub fields: Vec<String>,
    /// Fields left out for their cardinality or for being continuous.
    pub dropped_fields: Vec<String>,
    /// Columns of the batch model (one per field value seen in training).
    pub columns: usize,
    /// Seconds spent fitting.
    pub fit_secs: f64,
    /// The batch logistic regression on the test part.
    pub batch: Summary,
    /// The online model's progressive metrics on the same impressions.
    pub online: Summary,
    /// The training part's click rate, predicted for every test impression.
    pub base_rate: Summary,
}

/// An impression's `ctx`: interned `(field, value)` ids ([`CONTINUOUS`] for a
/// non-integral number), inline for up to 8 fields: a million rows stay small.
type CtxRow = SmallVec<[(u32, u32); 8]>;

/// The value id of a non-integral number: a continuous field, left out.
const CONTINUOUS: u32 = u32::MAX;

/// A field value, as a category.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Value {
    Str(CompactString),
    Int(i64),
}

/// Fits the batch model on the early part of `served` and evaluates both models on the
/// later part; the features come from the impressions in `input` (JSON Lines).
pub fn evaluate(
    input: &Path,
    max_event_bytes: usize,
    mut served: Vec<Served>,
    options: &BaselineOptions,
) -> anyhow::Result<BaselineReport> {
    anyhow::ensure!(
        options.train_fraction > 0.0 && options.train_fraction < 1.0,
        "--baseline-train-fraction must be between 0 and 1 (exclusive), got {}",
        options.train_fraction
    );
    anyhow::ensure!(
        served.len() >= 20,
        "the baseline needs at least 20 labelled impressions, the replay had {}",
        served.len()
    );
    served.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.id.cmp(&b.id)));
    let cut = ((served.len() as f64 * options.train_fraction) as usize).clamp(1, served.len() - 1);
    let split_ts = served[cut].ts;
    let train_end = served.partition_point(|s| s.ts < split_ts);
    anyhow::ensure!(
        train_end > 0 && train_end < served.len(),
        "every labelled impression has the same event time: no time split possible"
    );

    let (rows, names) = ctx_rows(input, max_event_bytes, &served)?;

    // Vocabulary from the training part only: the test part's unseen values get no column.
    let mut values: FxHashMap<u32, FxHashMap<u32, usize>> = FxHashMap::default();
    let mut continuous: Vec<u32> = Vec::new();
    for row in &rows[..train_end] {
        for &(field, value) in row {
            if value == CONTINUOUS {
                if !continuous.contains(&field) {
                    continuous.push(field);
                }
            } else {
                let seen = values.entry(field).or_default();
                let next = seen.len();
                seen.entry(value).or_insert(next);
            }
        }
    }
    let mut fields: Vec<u32> = values.keys().copied().collect();
    fields.sort_by_key(|&f| &names[f as usize]);
    let mut dropped: Vec<String> = continuous
        .iter()
        .map(|&f| format!("{} (continuous)", names[f as usize]))
        .collect();
    let mut offsets: FxHashMap<u32, usize> = FxHashMap::default();
    let mut columns = 0;
    let mut kept = Vec::new();
    for field in fields {
        let n = values[&field].len();
        if continuous.contains(&field) {
            continue;
        }
        if n > MAX_CARDINALITY {
            dropped.push(format!("{} ({n} values)", names[field as usize]));
            continue;
        }
        offsets.insert(field, columns);
        kept.push(names[field as usize].to_string());
        columns += n;
    }
    anyhow::ensure!(
        columns > 0,
        "no ctx field has at most {MAX_CARDINALITY} values: nothing for the baseline to learn from"
    );
    let one_hot = |row: &CtxRow, out: &mut SmallVec<[usize; 16]>| {
        out.clear();
        for (field, value) in row {
            if let Some(offset) = offsets.get(field)
                && let Some(i) = values[field].get(value)
            {
                out.push(offset + i);
            }
        }
    };

    // Training rows evenly spread over the training period.
    let m = train_end.min(options.max_train_rows.max(1));
    let picked: Vec<usize> = (0..m).map(|k| k * train_end / m).collect();
    let mut x = vec![0.0f64; picked.len() * columns];
    let mut y = Vec::with_capacity(picked.len());
    let mut hot = SmallVec::new();
    for (r, &i) in picked.iter().enumerate() {
        one_hot(&rows[i], &mut hot);
        for &c in &hot {
            x[r * columns + c] = 1.0;
        }
        y.push(u32::from(served[i].positive));
    }
    anyhow::ensure!(
        y.contains(&0) && y.contains(&1),
        "the training part has a single class: no baseline to fit"
    );
    let x = DenseMatrix::new(picked.len(), columns, x, false)
        .map_err(|e| anyhow::anyhow!("building the training matrix: {e}"))?;
    let started = Instant::now();
    let params = LogisticRegressionParameters::default().with_alpha(options.l2);
    let fitted = LogisticRegression::fit(&x, &y, params)
        .map_err(|e| anyhow::anyhow!("fitting the batch logistic regression: {e}"))?;
    let fit_secs = started.elapsed().as_secs_f64();
    let weights: Vec<f64> = (0..columns)
        .map(|c| *fitted.coefficients().get((0, c)))
        .collect();
    let intercept = *fitted.intercept().get((0, 0));

    let train_ctr =
        served[..train_end].iter().filter(|s| s.positive).count() as f64 / train_end as f64;
    let mut batch = Progressive::new();
    let mut online = Progressive::new();
    let mut base_rate = Progressive::new();
    for (row, s) in rows[train_end..].iter().zip(&served[train_end..]) {
        one_hot(row, &mut hot);
        let logit = intercept + hot.iter().map(|&c| weights[c]).sum::<f64>();
        let p = 1.0 / (1.0 + (-logit).exp());
        batch.observe(p as f32, s.positive, None);
        online.observe(s.served, s.positive, None);
        base_rate.observe(train_ctr as f32, s.positive, None);
    }
    dropped.sort();
    Ok(BaselineReport {
        split_ts,
        train_examples: train_end as u64,
        trained_on: picked.len() as u64,
        test_examples: (served.len() - train_end) as u64,
        fields: kept,
        dropped_fields: dropped,
        columns,
        fit_secs,
        batch: batch.summary(),
        online: online.summary(),
        base_rate: base_rate.summary(),
    })
}

/// The `ctx` of every impression in `served` (in its order), read from `input`, as
/// interned `(field, value)` ids; the field names, by id.
fn ctx_rows(
    input: &Path,
    max_event_bytes: usize,
    served: &[Served],
) -> anyhow::Result<(Vec<CtxRow>, Vec<CompactString>)> {
    let mut index: FxHashMap<&str, usize> = FxHashMap::default();
    for (i, s) in served.iter().enumerate() {
        index.entry(s.id.as_str()).or_insert(i);
    }
    let mut names: Vec<CompactString> = Vec::new();
    let mut field_ids: FxHashMap<CompactString, u32> = FxHashMap::default();
    let mut value_ids: FxHashMap<(u32, Value), u32> = FxHashMap::default();
    let mut rows = vec![CtxRow::new(); served.len()];
    let file = std::fs::File::open(input)
        .with_context(|| format!("reading {} for the baseline", input.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let Ok(Event::Impression(imp)) = event::decode(trim_newline(&line), max_event_bytes) else {
            continue;
        };
        let Some(&i) = index.get(imp.id.as_ref()) else {
            continue;
        };
        if !rows[i].is_empty() {
            continue;
        }
        for (name, value) in &imp.ctx {
            if name.starts_with('_') {
                continue;
            }
            let field = match field_ids.get(name.as_ref()) {
                Some(&id) => id,
                None => {
                    let id = names.len() as u32;
                    names.push(name.as_ref().into());
                    field_ids.insert(name.as_ref().into(), id);
                    id
                }
            };
            let value = match value {
                CtxValue::Str(s) => Value::Str(s.as_ref().into()),
                CtxValue::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => Value::Int(*n as i64),
                CtxValue::Num(_) => {
                    rows[i].push((field, CONTINUOUS));
                    continue;
                }
            };
            let next = value_ids.len() as u32;
            let id = *value_ids.entry((field, value)).or_insert(next);
            rows[i].push((field, id));
        }
    }
    Ok((rows, names))
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

impl BaselineReport {
    /// The human-readable comparison.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let f = |v: Option<f64>, d: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.d$}"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "baseline: batch logistic regression (smartcore) on {} of {} impressions before {} (event time), {} one-hot columns of {}; fitted in {:.1} s",
            self.trained_on,
            self.train_examples,
            self.split_ts,
            self.columns,
            self.fields.join(", "),
            self.fit_secs
        );
        if !self.dropped_fields.is_empty() {
            let _ = writeln!(s, "  left out: {}", self.dropped_fields.join(", "));
        }
        let _ = writeln!(
            s,
            "  on the {} later impressions:  logloss       NE      AUC  calibration",
            self.test_examples
        );
        let width = format!("  on the {} later impressions:", self.test_examples).len() - 4;
        for (name, m) in [
            ("online (progressive)", &self.online),
            ("batch baseline", &self.batch),
            ("base rate", &self.base_rate),
        ] {
            let _ = writeln!(
                s,
                "    {name:<width$} {:>8} {:>8} {:>8} {:>12}",
                f(m.logloss, 5),
                f(m.normalized_entropy, 4),
                f(m.auc, 4),
                f(m.calibration, 4)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Impressions whose click depends on the device only, then a file of them.
    fn fixture(dir: &Path, n: usize) -> (std::path::PathBuf, Vec<Served>) {
        use std::io::Write;
        let path = dir.join("events.jsonl");
        let mut file = std::fs::File::create(&path).unwrap();
        let mut served = Vec::new();
        for i in 0..n {
            let device = ["ios", "android", "web"][i % 3];
            // ios clicks 1 in 2, android 1 in 5, web never.
            let positive = match i % 3 {
                0 => (i / 3) % 2 == 0,
                1 => (i / 3) % 5 == 0,
                _ => false,
            };
            writeln!(
                file,
                r#"{{"type":"impression","id":"imp-{i}","ts":{},"user":"u{i}","item":"v1","ctx":{{"device":"{device}","position":{},"score":{}.5,"_p_true":0.1}}}}"#,
                1000 + i,
                i % 4,
                i
            )
            .unwrap();
            served.push(Served {
                id: format!("imp-{i}").into(),
                ts: 1000 + i as i64,
                positive,
                served: 0.2,
            });
        }
        (path, served)
    }

    #[test]
    fn the_batch_model_learns_what_the_dense_features_say() {
        let dir = tempfile::tempdir().unwrap();
        let (path, served) = fixture(dir.path(), 3000);
        let report = evaluate(&path, 1 << 20, served, &BaselineOptions::default()).unwrap();
        assert_eq!(report.train_examples, 1500);
        assert_eq!(report.test_examples, 1500);
        assert_eq!(report.split_ts, 2500);
        assert_eq!(report.fields, ["device", "position"]);
        assert_eq!(report.dropped_fields, ["score (continuous)"]);
        assert_eq!(report.columns, 3 + 4);
        // The device decides: the batch model ranks far better than a constant score.
        assert!(report.batch.auc.unwrap() > 0.8, "{report:?}");
        assert!(report.online.auc.unwrap() < 0.51);
        assert!(report.batch.logloss.unwrap() < report.base_rate.logloss.unwrap());
        let text = report.render();
        assert!(
            text.contains("batch baseline") && text.contains("online"),
            "{text}"
        );
    }

    #[test]
    fn training_rows_are_capped_evenly() {
        let dir = tempfile::tempdir().unwrap();
        let (path, served) = fixture(dir.path(), 600);
        let options = BaselineOptions {
            max_train_rows: 100,
            ..BaselineOptions::default()
        };
        let report = evaluate(&path, 1 << 20, served, &options).unwrap();
        assert_eq!(report.train_examples, 300);
        assert_eq!(report.trained_on, 100);
    }

    #[test]
    fn one_class_or_bad_fraction_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut served) = fixture(dir.path(), 60);
        let options = BaselineOptions {
            train_fraction: 1.0,
            ..BaselineOptions::default()
        };
        assert!(evaluate(&path, 1 << 20, served.clone(), &options).is_err());
        for s in &mut served {
            s.positive = false;
        }
        let err = evaluate(&path, 1 << 20, served, &BaselineOptions::default()).unwrap_err();
        assert!(err.to_string().contains("single class"), "{err}");
    }
}
