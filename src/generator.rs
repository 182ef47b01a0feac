//! The synthetic event generator behind `ctrflow gen`: seeded, deterministic impressions and
//! their feedback, in event-time order, drawn from a known ground-truth CTR model.
//!
//! # Ground truth
//!
//! Every impression's click probability is `p = sigmoid(logit)`, written out as the
//! `ctx._p_true` field (the Bayes-optimal prediction, for reference logloss), with
//!
//! ```text
//! logit = b0 + user_bias[u] + item_bias[i] + category_effect[c] + affinity(u, c)
//!       + device_effect[d] + item_device(i, d) + country_effect[n]
//!       + position_slope[d] * (position - 1) + 0.25 * cos(2π (hour - 14) / 24)
//! ```
//!
//! - users are Zipf-distributed (exponent [`USER_ZIPF_EXPONENT`]) over `u1..=u<users>`, items
//!   Zipf ([`ITEM_ZIPF_EXPONENT`]) over `v1..=v<items>`; the lower the number, the more popular;
//! - each item has one of [`CATEGORIES`]; `affinity(u, c)` is a per-(user, category) value
//!   hashed from the seed, so it takes no memory and a user×category cross can learn it;
//! - devices ios/android/web (35/45/20 %), [`COUNTRIES`] with a skewed mix, positions 1..=10
//!   uniformly, with a decay that is steeper on web (a position×device interaction), and an
//!   item×device interaction;
//! - the hour term (UTC hour of the impression's `ts`) moves CTR by about ±25 % over a day,
//!   peaking at 14:00 UTC and bottoming at 02:00 UTC;
//! - `b0` is calibrated at construction (bisection over a Monte-Carlo sample of the pre-drift
//!   traffic over a whole day) so that the average CTR is [`TARGET_CTR`].
//!
//! # Feedback
//!
//! With probability `p` the impression is clicked, after a delay that is log-normal with a
//! 5 s median (97 %) or a "came back later" log-normal with a 2 min median (3 %): about 0.3 %
//! of clicks arrive after 10 minutes and about 0.06 % after the 30-minute attribution window.
//! 30 % of clicks are followed by a like (median 15 s after the click). Without a click, the
//! user fast-skips (`dwell_ms` < 2000) with probability 35 %, slow-skips (dwell 2–60 s, not
//! decisive) with 20 %, and does nothing otherwise. Skip `ts` = impression `ts` + dwell.
//!
//! Impressions arrive as a Poisson process at `rate` per event-time second. Feedback waits
//! in a priority queue keyed by `(ts, seq)`, so the output is in non-decreasing `ts` order
//! and ties keep creation order (an impression always precedes its own feedback).
//!
//! # Drift
//!
//! From impression index `drift_at` on (`imp-<drift_at>` is the first drifted impression),
//! each selected [`DriftKind`] applies:
//! - [`DriftKind::FlipItems`] (concept drift): for 6 of the 20 categories (30 %, chosen by
//!   the seed), the item biases and the user×category affinities are negated: items that were
//!   good become bad and the other way round, while the input distribution stays the same;
//! - [`DriftKind::BaseCtr`] (concept drift): `ln 2` is added to every logit, roughly doubling
//!   the CTR;
//! - [`DriftKind::MixShift`] (data drift): the device mix moves to ios/android/web 20/30/50 %,
//!   and a new country, `VN`, appears with 12 % of the traffic (with its own, positive,
//!   effect), the other countries keeping their relative shares;
//! - [`DriftKind::FeedbackOutage`] (broken tracking): the impressions
//!   `drift_at..drift_at + OUTAGE_IMPRESSIONS` (about an hour at 25/s) get no click, like
//!   or skip events; the random draws are the same, so the rest of the stream is unchanged.
//!
//! # Determinism
//!
//! The same [`GenConfig`] gives the same bytes, on any platform, for a given build (the
//! random streams come from `rand`'s `StdRng` and `rand_distr`, whose algorithms may change
//! between their major versions).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::f64::consts::{LN_2, PI};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal, Normal, Zipf};

/// Average CTR that `b0` is calibrated to, over a whole day of pre-drift traffic.
pub const TARGET_CTR: f64 = 0.04;
/// Zipf exponent of user popularity.
pub const USER_ZIPF_EXPONENT: f64 = 1.0;
/// Zipf exponent of item popularity.
pub const ITEM_ZIPF_EXPONENT: f64 = 1.05;
/// The attribution window the feedback model is shaped around, in milliseconds.
pub const ATTRIBUTION_WINDOW_MS: i64 = 30 * 60 * 1000;
/// Skips with a dwell below this are fast skips (decisive negatives under the default labels).
pub const FAST_SKIP_MS: u32 = 2000;

/// Item categories.
pub const CATEGORIES: [&str; 20] = [
    "music",
    "sports",
    "news",
    "gaming",
    "comedy",
    "cooking",
    "travel",
    "fashion",
    "tech",
    "science",
    "movies",
    "pets",
    "fitness",
    "beauty",
    "education",
    "finance",
    "cars",
    "diy",
    "kids",
    "art",
];

/// Devices, in the order of the mix tables.
pub const DEVICES: [&str; 3] = ["ios", "android", "web"];

/// Countries: the first 15 from the start, the last one appears with [`DriftKind::MixShift`].
pub const COUNTRIES: [&str; 16] = [
    "US", "IN", "BR", "DE", "GB", "FR", "PL", "JP", "MX", "ID", "TR", "ES", "IT", "CA", "NG", "VN",
];

/// Number of countries present before a mix shift.
const BASE_COUNTRIES: usize = 15;
/// Traffic share of the new country after a mix shift.
const NEW_COUNTRY_SHARE: f64 = 0.12;

const DEVICE_MIX: [f64; 3] = [0.35, 0.45, 0.20];
const DEVICE_MIX_SHIFTED: [f64; 3] = [0.20, 0.30, 0.50];
const DEVICE_EFFECT: [f64; 3] = [0.10, 0.0, -0.20];
/// Logit change per position below the top, per device: web users scroll past more.
const POSITION_SLOPE: [f64; 3] = [-0.10, -0.11, -0.18];
/// Amplitude of the hour-of-day term in the logit: about ±25 % CTR.
const HOUR_AMPLITUDE: f64 = 0.25;
/// UTC hour of the CTR peak.
const PEAK_HOUR: f64 = 14.0;
const POSITIONS: u32 = 10;
/// Categories whose item biases and affinities flip with [`DriftKind::FlipItems`].
const FLIPPED_CATEGORIES: usize = 6;

const USER_BIAS_SD: f64 = 0.8;
const ITEM_BIAS_SD: f64 = 1.0;
const CATEGORY_SD: f64 = 0.3;
const AFFINITY_SD: f64 = 0.7;
const ITEM_DEVICE_SD: f64 = 0.25;
const COUNTRY_SD: f64 = 0.2;
const NEW_COUNTRY_EFFECT: f64 = 0.3;

const P_LATE_CLICK: f64 = 0.03;
const P_LIKE: f64 = 0.30;
const P_FAST_SKIP: f64 = 0.35;
const P_SLOW_SKIP: f64 = 0.20;

/// Impressions sampled to calibrate `b0`.
const CALIBRATION_SAMPLES: usize = 50_000;

/// A change injected into the ground truth or the traffic mix at `drift_at`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriftKind {
    /// Concept drift: item biases and user×category affinities flip sign in 30 % of the
    /// categories.
    FlipItems,
    /// Concept drift: `ln 2` added to every logit (about twice the CTR).
    BaseCtr,
    /// Data drift: the device mix moves to web (50 %) and a new country (`VN`) appears.
    MixShift,
    /// Broken tracking: no feedback events for the next [`OUTAGE_IMPRESSIONS`] impressions.
    FeedbackOutage,
}

/// Impressions without feedback under [`DriftKind::FeedbackOutage`].
pub const OUTAGE_IMPRESSIONS: u64 = 90_000;

/// Why a [`GenConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GenError {
    /// A setting is out of range.
    #[error("{field} {detail}")]
    InvalidConfig {
        /// The setting, as named on the command line.
        field: &'static str,
        /// The constraint and the value found.
        detail: String,
    },
}

impl From<GenError> for io::Error {
    fn from(e: GenError) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// What to generate, independent of any CLI.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Impressions to generate; feedback events come in addition.
    pub count: u64,
    /// Seed of every random choice, the ground truth included.
    pub seed: u64,
    /// Index of the first impression generated under drift, if any.
    pub drift_at: Option<u64>,
    /// What changes at `drift_at`.
    pub drift_kinds: Vec<DriftKind>,
    /// Number of distinct users.
    pub users: u32,
    /// Number of distinct items.
    pub items: u32,
    /// Impressions per event-time second (mean of a Poisson process).
    pub rate: f64,
    /// Event time of the start, epoch milliseconds.
    pub start_ts: i64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            count: 1_000_000,
            seed: 1,
            drift_at: None,
            drift_kinds: vec![
                DriftKind::FlipItems,
                DriftKind::BaseCtr,
                DriftKind::MixShift,
            ],
            users: 100_000,
            items: 50_000,
            rate: 25.0,
            start_ts: 1_763_800_000_000,
        }
    }
}

impl GenConfig {
    /// Checks every setting, reporting the first one out of range.
    pub fn validate(&self) -> Result<(), GenError> {
        let bad = |field, detail: String| Err(GenError::InvalidConfig { field, detail });
        if self.users == 0 {
            return bad("users", "must be at least 1, got 0".into());
        }
        if self.items == 0 {
            return bad("items", "must be at least 1, got 0".into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad(
                "event-rate",
                format!("must be a positive number, got {}", self.rate),
            );
        }
        if self.start_ts < 0 {
            return bad("start-ts", format!("must be >= 0, got {}", self.start_ts));
        }
        Ok(())
    }
}

/// `ctrflow gen` options; flatten into a subcommand with `#[command(flatten)]`.
#[derive(clap::Args, Debug, Clone)]
pub struct GenArgs {
    /// Impressions to generate (feedback events come in addition).
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Random seed; the same seed gives the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Index of the first impression under drift (`imp-<K>`); no drift if absent.
    #[arg(long, value_name = "K")]
    pub drift_at: Option<u64>,
    /// What drifts at --drift-at (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        num_args = 1..,
        default_values_t = [DriftKind::FlipItems, DriftKind::BaseCtr, DriftKind::MixShift]
    )]
    pub drift_kind: Vec<DriftKind>,
    /// Number of distinct users (Zipf-distributed).
    #[arg(long, default_value_t = 100_000)]
    pub users: u32,
    /// Number of distinct items (Zipf-distributed).
    #[arg(long, default_value_t = 50_000)]
    pub items: u32,
    /// Impressions per event-time second (25/s: 2M impressions cover about a day).
    #[arg(long, default_value_t = 25.0)]
    pub event_rate: f64,
    /// Event time of the first impression's clock, epoch milliseconds.
    #[arg(long, default_value_t = 1_763_800_000_000)]
    pub start_ts: i64,
    /// Output: a JSONL file, `-` for stdout, or `kafka://HOST:PORT/TOPIC` (keyed by user).
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
    /// With a Kafka output: messages per second of wall-clock time (as fast as possible
    /// when absent).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
}

impl GenArgs {
    /// The library configuration these options describe.
    pub fn config(&self) -> GenConfig {
        GenConfig {
            count: self.count,
            seed: self.seed,
            drift_at: self.drift_at,
            drift_kinds: self.drift_kind.clone(),
            users: self.users,
            items: self.items,
            rate: self.event_rate,
            start_ts: self.start_ts,
        }
    }

    /// Generates to `--out` (a file, or stdout for `-`).
    pub fn run(&self) -> io::Result<GenStats> {
        let config = self.config();
        if self.out.as_os_str() == "-" {
            write_jsonl(&config, io::stdout().lock())
        } else {
            let file = File::create(&self.out).map_err(|e| {
                io::Error::new(e.kind(), format!("creating {}: {e}", self.out.display()))
            })?;
            write_jsonl(&config, file)
        }
    }
}

/// Counts of what was generated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenStats {
    /// Impressions written.
    pub impressions: u64,
    /// Clicks written.
    pub clicks: u64,
    /// Likes written.
    pub likes: u64,
    /// Skips with `dwell_ms` < [`FAST_SKIP_MS`].
    pub fast_skips: u64,
    /// Skips with a longer dwell.
    pub slow_skips: u64,
    /// Impressions with no feedback at all.
    pub silent: u64,
    /// Clicks arriving more than [`ATTRIBUTION_WINDOW_MS`] after their impression.
    pub clicks_after_window: u64,
    /// Lines written (impressions and feedback).
    pub events: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Sum of the impressions' true click probabilities.
    pub sum_p_true: f64,
    /// Impressions per UTC hour of their `ts`.
    pub impressions_by_hour: [u64; 24],
    /// Clicks per UTC hour of their impression's `ts`.
    pub clicks_by_hour: [u64; 24],
    /// `ts` of the first and the last event written.
    pub ts_range: Option<(i64, i64)>,
}

impl GenStats {
    /// Clicks per impression.
    pub fn ctr(&self) -> f64 {
        self.clicks as f64 / self.impressions.max(1) as f64
    }

    /// Mean true click probability.
    pub fn mean_p_true(&self) -> f64 {
        self.sum_p_true / self.impressions.max(1) as f64
    }
}

/// The kind of an emitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `{"type":"impression",..}`.
    Impression,
    /// `{"type":"click",..}`.
    Click,
    /// `{"type":"like",..}`.
    Like,
    /// `{"type":"skip",..,"dwell_ms"}`.
    Skip,
}

/// What [`Generator::next_event`] just wrote, for producers that need a message key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emitted {
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// Kind of event.
    pub kind: EventKind,
    /// The user concerned: the message key is `u<user>`.
    pub user: u32,
    /// The impression number (`imp-<impression>`) the event is or answers.
    pub impression: u64,
}

/// A feedback event waiting for its time.
#[derive(Debug, Clone, Copy)]
struct Pending {
    ts: i64,
    seq: u64,
    impression: u64,
    user: u32,
    kind: EventKind,
    dwell_ms: u32,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.ts, self.seq) == (other.ts, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    // Reversed, so that `BinaryHeap` (a max-heap) pops the earliest `(ts, seq)` first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.ts, other.seq).cmp(&(self.ts, self.seq))
    }
}

/// Per-item ground truth.
#[derive(Debug, Clone, Copy)]
struct Item {
    category: u8,
    bias: f32,
    by_device: [f32; 3],
}

/// The hidden model: everything `p_true` depends on.
#[derive(Debug, Clone)]
struct Truth {
    b0: f64,
    user_bias: Vec<f32>,
    items: Vec<Item>,
    category_effect: [f64; CATEGORIES.len()],
    flipped: [bool; CATEGORIES.len()],
    country_effect: [f64; COUNTRIES.len()],
    affinity_salt: u64,
}

/// One impression's features, as drawn.
#[derive(Debug, Clone, Copy)]
struct Draw {
    user: u32,
    item: u32,
    device: usize,
    country: usize,
    position: u32,
    hour: u32,
}

impl Truth {
    /// The logit without `b0`.
    fn logit(&self, d: &Draw, flip: bool) -> f64 {
        let item = &self.items[(d.item - 1) as usize];
        let c = item.category as usize;
        let sign = if flip && self.flipped[c] { -1.0 } else { 1.0 };
        let affinity = AFFINITY_SD * hashed_normal(self.affinity_salt, d.user, c as u32);
        self.user_bias[(d.user - 1) as usize] as f64
            + sign * (item.bias as f64 + affinity)
            + self.category_effect[c]
            + DEVICE_EFFECT[d.device]
            + item.by_device[d.device] as f64
            + self.country_effect[d.country]
            + POSITION_SLOPE[d.device] * f64::from(d.position - 1)
            + HOUR_AMPLITUDE * (2.0 * PI * (f64::from(d.hour) - PEAK_HOUR) / 24.0).cos()
    }
}

/// Traffic mix: cumulative weights of devices and countries.
#[derive(Debug, Clone)]
struct Mix {
    devices: [f64; 3],
    countries: [f64; COUNTRIES.len()],
}

impl Mix {
    fn new(device_weights: [f64; 3], country_weights: &[f64; COUNTRIES.len()]) -> Self {
        Mix {
            devices: cumulative(device_weights),
            countries: cumulative(*country_weights),
        }
    }
}

fn cumulative<const N: usize>(weights: [f64; N]) -> [f64; N] {
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights.map(|w| {
        acc += w / total;
        acc
    })
}

fn pick(cdf: &[f64], u: f64) -> usize {
    cdf.iter().position(|&c| u < c).unwrap_or(cdf.len() - 1)
}

/// Samplers shared by the traffic and the calibration.
#[derive(Debug, Clone)]
struct Samplers {
    users: Zipf<f64>,
    items: Zipf<f64>,
    n_users: u32,
    n_items: u32,
}

impl Samplers {
    fn draw(&self, rng: &mut StdRng, mix: &Mix, hour: u32) -> Draw {
        // Zipf samples are whole numbers in [1, n] stored as floats; the clamp guards rounding.
        let user = (self.users.sample(rng) as u32).clamp(1, self.n_users);
        let item = (self.items.sample(rng) as u32).clamp(1, self.n_items);
        Draw {
            user,
            item,
            device: pick(&mix.devices, rng.random()),
            country: pick(&mix.countries, rng.random()),
            position: rng.random_range(1..=POSITIONS),
            hour,
        }
    }
}

/// Produces contract JSON lines, one event at a time, in event-time order.
///
/// ```
/// use ctrflow::generator::{GenConfig, Generator};
/// let mut g = Generator::new(&GenConfig { count: 100, ..GenConfig::default() })?;
/// let mut out = Vec::new();
/// while g.next_event(&mut out).is_some() {}
/// assert_eq!(g.stats().impressions, 100);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Generator {
    config: GenConfig,
    truth: Truth,
    samplers: Samplers,
    mix: Mix,
    shifted_mix: Mix,
    rng: StdRng,
    gap_ms: Exp<f64>,
    click_delay: LogNormal<f64>,
    late_click_delay: LogNormal<f64>,
    like_delay: LogNormal<f64>,
    fast_dwell: LogNormal<f64>,
    pending: BinaryHeap<Pending>,
    /// Time of the next impression, milliseconds since `start_ts`.
    clock_ms: f64,
    next_impression: u64,
    seq: u64,
    stats: GenStats,
}

impl Generator {
    /// Builds the ground truth for `config` (calibrating `b0`) and positions the stream at
    /// its first event.
    pub fn new(config: &GenConfig) -> Result<Self, GenError> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let std_normal = Normal::new(0.0, 1.0).expect("valid normal");
        let normal = |rng: &mut StdRng, sd: f64| sd * std_normal.sample(rng);

        // Categories have mildly unequal sizes.
        let category_cdf = cumulative(std::array::from_fn::<f64, { CATEGORIES.len() }, _>(|i| {
            1.0 / (1.0 + i as f64).sqrt()
        }));
        let user_bias = (0..config.users)
            .map(|_| normal(&mut rng, USER_BIAS_SD) as f32)
            .collect();
        let items = (0..config.items)
            .map(|_| Item {
                category: pick(&category_cdf, rng.random()) as u8,
                bias: normal(&mut rng, ITEM_BIAS_SD) as f32,
                by_device: std::array::from_fn(|_| normal(&mut rng, ITEM_DEVICE_SD) as f32),
            })
            .collect();
        let category_effect = std::array::from_fn(|_| normal(&mut rng, CATEGORY_SD));
        let mut country_effect: [f64; COUNTRIES.len()] =
            std::array::from_fn(|_| normal(&mut rng, COUNTRY_SD));
        country_effect[BASE_COUNTRIES] = NEW_COUNTRY_EFFECT;
        let mut flipped = [false; CATEGORIES.len()];
        let mut order: Vec<usize> = (0..CATEGORIES.len()).collect();
        for i in 0..FLIPPED_CATEGORIES {
            let j = rng.random_range(i..order.len());
            order.swap(i, j);
            flipped[order[i]] = true;
        }
        let mut truth = Truth {
            b0: 0.0,
            user_bias,
            items,
            category_effect,
            flipped,
            country_effect,
            affinity_salt: rng.random(),
        };

        // A skewed country mix (roughly Zipf), with the new country absent before the shift.
        let mut countries: [f64; COUNTRIES.len()] =
            std::array::from_fn(|i| 1.0 / (1.0 + i as f64).powf(0.9));
        countries[BASE_COUNTRIES] = 0.0;
        let base_total: f64 = countries.iter().sum();
        let mix = Mix::new(DEVICE_MIX, &countries);
        countries[BASE_COUNTRIES] = base_total * NEW_COUNTRY_SHARE / (1.0 - NEW_COUNTRY_SHARE);
        let drift_mix = config.drift_kinds.contains(&DriftKind::MixShift);
        let shifted_mix = if drift_mix {
            Mix::new(DEVICE_MIX_SHIFTED, &countries)
        } else {
            mix.clone()
        };

        let samplers = Samplers {
            users: Zipf::new(f64::from(config.users), USER_ZIPF_EXPONENT).expect("users >= 1"),
            items: Zipf::new(f64::from(config.items), ITEM_ZIPF_EXPONENT).expect("items >= 1"),
            n_users: config.users,
            n_items: config.items,
        };
        truth.b0 = calibrate_b0(&truth, &samplers, &mix, &mut rng);

        let ln_ms = |secs: f64| (secs * 1000.0).ln();
        Ok(Generator {
            config: config.clone(),
            truth,
            samplers,
            mix,
            shifted_mix,
            gap_ms: Exp::new(config.rate / 1000.0).expect("rate > 0"),
            click_delay: LogNormal::new(ln_ms(5.0), 1.0).expect("valid"),
            late_click_delay: LogNormal::new(ln_ms(120.0), 1.3).expect("valid"),
            like_delay: LogNormal::new(ln_ms(15.0), 1.0).expect("valid"),
            fast_dwell: LogNormal::new(ln_ms(0.9), 0.5).expect("valid"),
            rng,
            pending: BinaryHeap::new(),
            clock_ms: 0.0,
            next_impression: 0,
            seq: 0,
            stats: GenStats::default(),
        })
    }

    /// The configuration generated from.
    pub fn config(&self) -> &GenConfig {
        &self.config
    }

    /// The calibrated intercept of the ground-truth logit.
    pub fn b0(&self) -> f64 {
        self.truth.b0
    }

    /// Counts so far.
    pub fn stats(&self) -> &GenStats {
        &self.stats
    }

    /// Appends the next event as one JSON line (with its `\n`) to `out`, or returns `None`
    /// once every impression and all of its feedback has been written.
    pub fn next_event(&mut self, out: &mut Vec<u8>) -> Option<Emitted> {
        let more_impressions = self.next_impression < self.config.count;
        let next_impression_ts = self.config.start_ts + self.clock_ms as i64;
        let emitted = match self.pending.peek() {
            // Pending feedback was created before the next impression, so it wins ties.
            Some(p) if !more_impressions || p.ts <= next_impression_ts => {
                let p = self.pending.pop().expect("peeked");
                self.write_feedback(&p, out);
                Emitted {
                    ts: p.ts,
                    kind: p.kind,
                    user: p.user,
                    impression: p.impression,
                }
            }
            _ if more_impressions => self.impression(next_impression_ts, out),
            _ => return None,
        };
        self.stats.events += 1;
        self.stats.ts_range = Some(match self.stats.ts_range {
            Some((first, _)) => (first, emitted.ts),
            None => (emitted.ts, emitted.ts),
        });
        Some(emitted)
    }

    /// Appends up to `max_events` lines to `out`; returns how many (0 when done).
    pub fn next_batch(&mut self, out: &mut Vec<u8>, max_events: usize) -> usize {
        let mut n = 0;
        while n < max_events && self.next_event(out).is_some() {
            n += 1;
        }
        n
    }

    /// Draws, writes and schedules the feedback of the next impression.
    fn impression(&mut self, ts: i64, out: &mut Vec<u8>) -> Emitted {
        let n = self.next_impression;
        self.next_impression += 1;
        self.clock_ms += self.gap_ms.sample(&mut self.rng);
        let drifted = self.config.drift_at.is_some_and(|k| n >= k);
        let kinds = &self.config.drift_kinds;
        let flip = drifted && kinds.contains(&DriftKind::FlipItems);
        let boost = if drifted && kinds.contains(&DriftKind::BaseCtr) {
            LN_2
        } else {
            0.0
        };
        let mix = if drifted {
            &self.shifted_mix
        } else {
            &self.mix
        };
        let hour = ((ts / 1000) % 86_400 / 3600) as u32;
        let d = self.samplers.draw(&mut self.rng, mix, hour);
        let p = sigmoid(self.truth.b0 + boost + self.truth.logit(&d, flip));
        let category = self.truth.items[(d.item - 1) as usize].category as usize;

        out.extend_from_slice(b"{\"type\":\"impression\",\"id\":\"imp-");
        push_u64(out, n);
        out.extend_from_slice(b"\",\"ts\":");
        push_u64(out, ts as u64);
        out.extend_from_slice(b",\"user\":\"u");
        push_u64(out, d.user.into());
        out.extend_from_slice(b"\",\"item\":\"v");
        push_u64(out, d.item.into());
        out.extend_from_slice(b"\",\"ctx\":{\"device\":\"");
        out.extend_from_slice(DEVICES[d.device].as_bytes());
        out.extend_from_slice(b"\",\"country\":\"");
        out.extend_from_slice(COUNTRIES[d.country].as_bytes());
        out.extend_from_slice(b"\",\"position\":");
        push_u64(out, d.position.into());
        out.extend_from_slice(b",\"hour\":");
        push_u64(out, hour.into());
        out.extend_from_slice(b",\"category\":\"");
        out.extend_from_slice(CATEGORIES[category].as_bytes());
        out.extend_from_slice(b"\",\"_p_true\":");
        push_probability(out, p);
        out.extend_from_slice(b"}}\n");
        self.stats.impressions += 1;
        self.stats.sum_p_true += p;
        self.stats.impressions_by_hour[hour as usize] += 1;

        let base = Pending {
            ts,
            seq: 0,
            impression: n,
            user: d.user,
            kind: EventKind::Click,
            dwell_ms: 0,
        };
        if self.rng.random_bool(p) {
            let late = self.rng.random_bool(P_LATE_CLICK);
            let delay = if late {
                self.late_click_delay.sample(&mut self.rng)
            } else {
                self.click_delay.sample(&mut self.rng)
            };
            let click_ts = ts + (delay as i64).max(100);
            self.stats.clicks += 1;
            self.stats.clicks_by_hour[hour as usize] += 1;
            if click_ts - ts > ATTRIBUTION_WINDOW_MS {
                self.stats.clicks_after_window += 1;
            }
            self.schedule(Pending {
                ts: click_ts,
                ..base
            });
            if self.rng.random_bool(P_LIKE) {
                let delay = (self.like_delay.sample(&mut self.rng) as i64).max(500);
                self.stats.likes += 1;
                self.schedule(Pending {
                    ts: click_ts + delay,
                    kind: EventKind::Like,
                    ..base
                });
            }
        } else {
            let u: f64 = self.rng.random();
            let dwell_ms = if u < P_FAST_SKIP {
                self.stats.fast_skips += 1;
                (self.fast_dwell.sample(&mut self.rng) as u32).clamp(150, FAST_SKIP_MS - 1)
            } else if u < P_FAST_SKIP + P_SLOW_SKIP {
                // Log-uniform over 2–60 s.
                self.stats.slow_skips += 1;
                let lo = f64::from(FAST_SKIP_MS).ln();
                (self.rng.random_range(lo..60_000f64.ln()).exp() as u32).max(FAST_SKIP_MS)
            } else {
                self.stats.silent += 1;
                0
            };
            if dwell_ms > 0 {
                self.schedule(Pending {
                    ts: ts + i64::from(dwell_ms),
                    kind: EventKind::Skip,
                    dwell_ms,
                    ..base
                });
            }
        }
        Emitted {
            ts,
            kind: EventKind::Impression,
            user: d.user,
            impression: n,
        }
    }

    fn schedule(&mut self, mut p: Pending) {
        if let Some(k) = self.config.drift_at
            && (k..k.saturating_add(OUTAGE_IMPRESSIONS)).contains(&p.impression)
            && self.config.drift_kinds.contains(&DriftKind::FeedbackOutage)
        {
            return;
        }
        p.seq = self.seq;
        self.seq += 1;
        self.pending.push(p);
    }

    fn write_feedback(&mut self, p: &Pending, out: &mut Vec<u8>) {
        out.extend_from_slice(match p.kind {
            EventKind::Click => b"{\"type\":\"click\",\"id\":\"imp-",
            EventKind::Like => b"{\"type\":\"like\",\"id\":\"imp-",
            EventKind::Skip => b"{\"type\":\"skip\",\"id\":\"imp-",
            EventKind::Impression => unreachable!("impressions are never pending"),
        });
        push_u64(out, p.impression);
        out.extend_from_slice(b"\",\"ts\":");
        push_u64(out, p.ts as u64);
        if p.kind == EventKind::Skip {
            out.extend_from_slice(b",\"dwell_ms\":");
            push_u64(out, p.dwell_ms.into());
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Generates everything `config` describes into `writer` as JSONL (buffered here), and
/// returns the counts.
pub fn write_jsonl<W: Write>(config: &GenConfig, writer: W) -> io::Result<GenStats> {
    let mut generator = Generator::new(config)?;
    let mut writer = BufWriter::with_capacity(1 << 20, writer);
    let mut buf = Vec::with_capacity(1 << 16);
    let mut bytes = 0u64;
    while generator.next_batch(&mut buf, 256) > 0 {
        writer.write_all(&buf)?;
        bytes += buf.len() as u64;
        buf.clear();
    }
    writer.flush()?;
    let mut stats = generator.stats.clone();
    stats.bytes = bytes;
    Ok(stats)
}

/// Finds `b0` so that the mean of `sigmoid(b0 + logit)` over a sample of pre-drift traffic,
/// spread evenly over the hours of a day, is [`TARGET_CTR`].
fn calibrate_b0(truth: &Truth, samplers: &Samplers, mix: &Mix, rng: &mut StdRng) -> f64 {
    let logits: Vec<f64> = (0..CALIBRATION_SAMPLES)
        .map(|k| truth.logit(&samplers.draw(rng, mix, (k % 24) as u32), false))
        .collect();
    let mean_ctr =
        |b0: f64| logits.iter().map(|l| sigmoid(b0 + l)).sum::<f64>() / logits.len() as f64;
    let (mut lo, mut hi) = (-20.0, 10.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if mean_ctr(mid) < TARGET_CTR {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A standard-normal-ish value (Irwin–Hall of four uniforms) hashed from `(salt, a, b)`.
fn hashed_normal(salt: u64, a: u32, b: u32) -> f64 {
    let h = splitmix64(salt ^ (u64::from(a) << 32 | u64::from(b)));
    let sum: f64 = (0..4)
        .map(|k| ((h >> (16 * k)) & 0xffff) as f64 / 65_536.0)
        .sum();
    // Four U(0,1) have mean 2 and variance 1/3.
    (sum - 2.0) * 3f64.sqrt()
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Writes `p` in [0, 1] as a plain decimal with 6 significant digits, trailing zeros trimmed.
fn push_probability(out: &mut Vec<u8>, p: f64) {
    if p.is_nan() || p <= 0.0 {
        out.push(b'0');
        return;
    }
    let mut exp = p.log10().floor() as i32;
    let mut mantissa = (p * 10f64.powi(5 - exp)).round() as u64;
    if mantissa >= 1_000_000 {
        mantissa /= 10;
        exp += 1;
    }
    if exp >= 0 {
        out.push(b'1');
        return;
    }
    while mantissa.is_multiple_of(10) {
        mantissa /= 10;
    }
    out.extend_from_slice(b"0.");
    for _ in 0..(-exp - 1) {
        out.push(b'0');
    }
    push_u64(out, mantissa);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{self, CtxValue, Event, FeedbackKind};
    use std::collections::HashMap;

    fn generate(config: &GenConfig) -> (Vec<u8>, GenStats) {
        let mut out = Vec::new();
        let stats = write_jsonl(config, &mut out).unwrap();
        (out, stats)
    }

    fn small(count: u64, seed: u64) -> GenConfig {
        GenConfig {
            count,
            seed,
            users: 5_000,
            items: 2_000,
            ..GenConfig::default()
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, _) = generate(&small(5_000, 7));
        let (b, _) = generate(&small(5_000, 7));
        let (c, _) = generate(&small(5_000, 8));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_line_decodes_in_ts_order_and_answers_an_earlier_impression() {
        let config = GenConfig {
            drift_at: Some(10_000),
            ..small(20_000, 3)
        };
        let (out, stats) = generate(&config);
        let mut last_ts = i64::MIN;
        let mut seen: HashMap<String, i64> = HashMap::new();
        let (mut imps, mut clicks, mut likes, mut fast, mut slow) = (0, 0, 0, 0, 0);
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let event = event::decode(line, event::DEFAULT_MAX_EVENT_BYTES)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
            assert!(event.ts() >= last_ts, "out of order at {event:?}");
            last_ts = event.ts();
            match event {
                Event::Impression(i) => {
                    imps += 1;
                    assert!(i.user.starts_with('u') && i.item.starts_with('v'));
                    for key in ["device", "country", "category"] {
                        assert!(matches!(i.ctx_get(key), Some(CtxValue::Str(_))), "{key}");
                    }
                    let Some(CtxValue::Num(pos)) = i.ctx_get("position") else {
                        panic!("position")
                    };
                    assert!((1.0..=10.0).contains(pos));
                    let Some(CtxValue::Num(hour)) = i.ctx_get("hour") else {
                        panic!("hour")
                    };
                    assert_eq!(*hour as i64, i.ts / 1000 % 86_400 / 3600);
                    let Some(CtxValue::Num(p)) = i.ctx_get("_p_true") else {
                        panic!("_p_true")
                    };
                    assert!(*p > 0.0 && *p < 1.0);
                    assert!(seen.insert(i.id.into_owned(), i.ts).is_none(), "id reused");
                }
                Event::Feedback(f) => {
                    let imp_ts = seen[f.id.as_ref()];
                    assert!(f.ts > imp_ts, "feedback not after its impression");
                    match f.kind {
                        FeedbackKind::Click => clicks += 1,
                        FeedbackKind::Like => likes += 1,
                        FeedbackKind::Skip { dwell_ms } => {
                            assert_eq!(f.ts - imp_ts, i64::from(dwell_ms));
                            if dwell_ms < FAST_SKIP_MS {
                                fast += 1
                            } else {
                                slow += 1
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(
            (imps, clicks, likes, fast, slow),
            (
                stats.impressions,
                stats.clicks,
                stats.likes,
                stats.fast_skips,
                stats.slow_skips
            )
        );
        assert_eq!(imps, 20_000);
        assert_eq!(stats.events, imps + clicks + likes + fast + slow);
        assert_eq!(stats.bytes, out.len() as u64);
    }

    #[test]
    fn average_ctr_is_between_3_and_5_percent() {
        let (_, stats) = generate(&GenConfig {
            count: 200_000,
            ..GenConfig::default()
        });
        assert!((0.03..=0.05).contains(&stats.ctr()), "ctr {}", stats.ctr());
        assert!((0.03..=0.05).contains(&stats.mean_p_true()));
        let fast = stats.fast_skips as f64 / stats.impressions as f64;
        assert!((0.3..0.4).contains(&fast), "fast skips {fast}");
        assert!((stats.clicks_after_window as f64) < 0.01 * stats.clicks as f64);
    }

    #[test]
    fn ctr_peaks_in_the_afternoon() {
        // 200k impressions at 2/s cover about 28 hours.
        let (_, stats) = generate(&GenConfig {
            count: 200_000,
            rate: 2.0,
            ..GenConfig::default()
        });
        let ctr = |hours: [usize; 3]| {
            let c: u64 = hours.iter().map(|&h| stats.clicks_by_hour[h]).sum();
            let i: u64 = hours.iter().map(|&h| stats.impressions_by_hour[h]).sum();
            c as f64 / i as f64
        };
        let (peak, trough) = (ctr([13, 14, 15]), ctr([1, 2, 3]));
        assert!(peak >= 1.3 * trough, "peak {peak} trough {trough}");
    }

    #[test]
    fn drift_changes_the_ctr_and_the_mix() {
        let config = GenConfig {
            count: 100_000,
            drift_at: Some(50_000),
            drift_kinds: vec![DriftKind::BaseCtr, DriftKind::MixShift],
            ..GenConfig::default()
        };
        let mut g = Generator::new(&config).unwrap();
        let mut out = Vec::new();
        let mut before = (0u64, 0u64, 0u64);
        while g.stats().impressions < 50_000 {
            out.clear();
            if let Some(e) = g.next_event(&mut out)
                && e.kind == EventKind::Impression
            {
                before.0 += out.windows(9).any(|w| w == b"\"web\",\"co") as u64;
                before.1 += out.windows(4).any(|w| w == b"\"VN\"") as u64;
            }
        }
        before.2 = g.stats().sum_p_true as u64;
        let (mut web, mut vn) = (0u64, 0u64);
        while g.stats().impressions < 100_000 {
            out.clear();
            if let Some(e) = g.next_event(&mut out)
                && e.kind == EventKind::Impression
            {
                web += out.windows(9).any(|w| w == b"\"web\",\"co") as u64;
                vn += out.windows(4).any(|w| w == b"\"VN\"") as u64;
            }
        }
        let after_clicks = g.stats().sum_p_true as u64 - before.2;
        assert_eq!(before.1, 0, "the new country appears only after the drift");
        assert!((0.17..0.23).contains(&(before.0 as f64 / 50_000.0)));
        assert!((0.47..0.53).contains(&(web as f64 / 50_000.0)));
        assert!((0.10..0.14).contains(&(vn as f64 / 50_000.0)));
        assert!(after_clicks as f64 > 1.5 * before.2 as f64);
    }

    #[test]
    fn feedback_outage_silences_a_span_of_impressions() {
        let config = GenConfig {
            drift_at: Some(1000),
            drift_kinds: vec![DriftKind::FeedbackOutage],
            ..small(OUTAGE_IMPRESSIONS + 3000, 2)
        };
        let mut g = Generator::new(&config).unwrap();
        let (mut before, mut during, mut after) = (0u64, 0u64, 0u64);
        let mut out = Vec::new();
        while let Some(e) = g.next_event(&mut out) {
            if e.kind != EventKind::Impression {
                match e.impression {
                    n if n < 1000 => before += 1,
                    n if n < 1000 + OUTAGE_IMPRESSIONS => during += 1,
                    _ => after += 1,
                }
            }
            out.clear();
        }
        assert_eq!(during, 0);
        assert!(before > 300 && after > 600, "{before} {after}");
    }

    #[test]
    fn flip_items_negates_item_effects_in_some_categories() {
        let config = GenConfig {
            drift_at: Some(0),
            drift_kinds: vec![DriftKind::FlipItems],
            ..small(1, 5)
        };
        let g = Generator::new(&config).unwrap();
        assert_eq!(g.truth.flipped.iter().filter(|&&f| f).count(), 6);
        let item = (0..g.truth.items.len())
            .find(|&i| g.truth.flipped[g.truth.items[i].category as usize])
            .unwrap() as u32
            + 1;
        let d = Draw {
            user: 1,
            item,
            device: 0,
            country: 0,
            position: 1,
            hour: 0,
        };
        let item = g.truth.items[(item - 1) as usize];
        let aff = AFFINITY_SD * hashed_normal(g.truth.affinity_salt, 1, item.category.into());
        let delta = g.truth.logit(&d, false) - g.truth.logit(&d, true);
        assert!((delta - 2.0 * (f64::from(item.bias) + aff)).abs() < 1e-9);
    }

    #[test]
    fn probabilities_have_six_significant_digits() {
        for p in [
            0.0312,
            0.5,
            1e-7,
            0.123456789,
            0.9999999,
            0.00099999999,
            0.04,
        ] {
            let mut out = Vec::new();
            push_probability(&mut out, p);
            let s = std::str::from_utf8(&out).unwrap();
            let back: f64 = s.parse().unwrap();
            assert!((back - p).abs() <= 5e-6 * p, "{p} -> {s}");
            let digits = s.trim_start_matches(['0', '.']).len();
            assert!(digits <= 6, "{p} -> {s}");
        }
        let mut out = Vec::new();
        push_probability(&mut out, 0.0312);
        assert_eq!(out, b"0.0312");
    }

    #[test]
    fn bad_configs_are_refused() {
        for config in [
            GenConfig {
                users: 0,
                ..GenConfig::default()
            },
            GenConfig {
                rate: f64::NAN,
                ..GenConfig::default()
            },
            GenConfig {
                rate: 0.0,
                ..GenConfig::default()
            },
        ] {
            assert!(Generator::new(&config).is_err());
        }
    }
}
