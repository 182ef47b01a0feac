//! Cluster mode: `ctrflow run` as one timely computation over several processes
//! (`--processes P --process I --hostfile H`), each with `--workers N` threads.
//!
//! # Topology
//!
//! Worker `w` of process `p` is peer `p * N + w` of `P * N`; Kafka partitions are assigned
//! over all peers (partition `k` to peer `k % (P * N)`), and the dataflow's exchanges
//! (the label join by impression id, the drift shards, the aggregates) route records
//! over all peers, across processes through timely's TCP allocator. The hostfile lists one
//! `host:port` per line, process `i` on line `i` (timely's `-h`); blank lines and lines
//! starting with `#` are skipped.
//!
//! # What goes through the dataflow
//!
//! Within a process the workers share memory as they do without a cluster (the FTRL
//! table, [`crate::run::RunStatus`]). Across processes, what they must agree on travels
//! through a small dataflow of its own, [`Link`], built only when `P > 1`, so a single
//! process runs exactly as before:
//!
//! - **The model.** Each process keeps its own replica. Every `cluster.sync_interval_ms`
//!   the process's first worker scans its replica against a baseline (the table as it
//!   stood at the last exchange), sends the changed coordinates' `(Δz, Δn)` to the first
//!   worker of every other process, and moves the baseline; a receiver adds them to its
//!   replica and its baseline, so they are not sent back. FTRL's `z` and `n` are sums
//!   over examples, so adding deltas is learning the other processes' examples, late.
//!   The cost is staleness: a process scores with the other processes' updates of up to
//!   one interval plus the transfer ago (at 100 ms and 100k events/s, about 10k of the
//!   other process's examples), and learns on weights that miss them, like a Hogwild
//!   worker with a long delay. The scan reads `2^bits + 1` words per interval in which
//!   something was learned (32 MiB at `bits = 22`; measured in a release build: see the
//!   README's cluster section); an idle process skips it.
//! - **Event time and shutdown.** Each worker sends its watermark, whether its
//!   partitions are idle, the newest event time it read and whether it stopped reading
//!   to the first worker of every other process, when they change (at most every
//!   [`STATUS_EVERY`], at once for a stop), which stores them beside the local workers'
//!   ([`PeerStatus`]). A worker whose partitions are idle follows the slowest peer still
//!   reading, in any process; a stop anywhere (SIGTERM to one process) stops every
//!   process, and all advance to the same final time once every peer has stopped.
//!
//! # Not in this slice
//!
//! - **Checkpoints:** `[state] dir` with `--processes > 1` is refused: a checkpoint is one
//!   RocksDB write by one process, and a consistent cut over processes is not built yet.
//! - **Entity features** (`features.entity`) are counted per process: a process's store
//!   sees the events its workers process (routed by impression id), about `1/P` of an
//!   entity's events. Scores stay valid; the counters are partial.
//! - **Drift response** (`drift.response`) swaps a process's serving model for a
//!   challenger, which the other processes would not do: refused with `--processes > 1`.
//!   SGD has no additive state to exchange: `model.optimizer = "sgd"` is refused too.
//! - Drift detectors run on their shards as without a cluster; the metrics over time
//!   and drift metrics are kept by peer 0 (process 0).

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;

use crate::config::PipelineConfig;
use crate::model::Model;
use crate::model::ftrl::FtrlModel;

/// Cluster settings (`[cluster]`; used by `run` with `--processes > 1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// How often each process sends the model deltas it learned to the others: the
    /// staleness of the other processes' updates (see the module docs).
    #[serde(default = "default_sync_interval_ms")]
    pub sync_interval_ms: u64,
}

const fn default_sync_interval_ms() -> u64 {
    100
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            sync_interval_ms: default_sync_interval_ms(),
        }
    }
}

impl ClusterConfig {
    /// Every problem with these settings, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=60_000).contains(&self.sync_interval_ms) {
            problems.push(format!(
                "cluster.sync_interval_ms must be in 1..=60000, got {}",
                self.sync_interval_ms
            ));
        }
        problems
    }
}

/// Where this process stands in the cluster: `processes` processes of `workers` threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Worker threads per process.
    pub workers: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// This process's index, `0..processes`.
    pub process: usize,
    /// Every process's `host:port`, by index (empty for one process).
    pub addresses: Vec<String>,
}

impl Topology {
    /// One process of `workers` threads (no networking).
    pub fn single(workers: usize) -> Self {
        Self {
            workers: workers.max(1),
            processes: 1,
            process: 0,
            addresses: Vec::new(),
        }
    }

    /// The topology the command line asks for; every bad combination is an error naming
    /// the option and the fix.
    pub fn from_options(
        workers: usize,
        processes: usize,
        process: usize,
        hostfile: Option<&Path>,
    ) -> Result<Self, String> {
        if workers == 0 {
            return Err("--workers must be at least 1, got 0".to_owned());
        }
        if processes == 0 {
            return Err("--processes must be at least 1, got 0".to_owned());
        }
        if process >= processes {
            return Err(format!(
                "--process {process} is out of range for --processes {processes}: give each process an index in 0..{processes}"
            ));
        }
        let Some(hostfile) = hostfile else {
            if processes > 1 {
                return Err(format!(
                    "--processes {processes} needs --hostfile FILE: one host:port per line, process i on line i, the same file for every process"
                ));
            }
            return Ok(Self::single(workers));
        };
        if processes == 1 {
            return Err(
                "--hostfile is only used with --processes > 1: drop it, or give --processes"
                    .to_owned(),
            );
        }
        let addresses = read_hostfile(hostfile)?;
        if addresses.len() != processes {
            return Err(format!(
                "--hostfile {} lists {} address(es), --processes is {processes}: list exactly one host:port per process",
                hostfile.display(),
                addresses.len()
            ));
        }
        Ok(Self {
            workers,
            processes,
            process,
            addresses,
        })
    }

    /// Whether this is one process of several.
    pub fn is_cluster(&self) -> bool {
        self.processes > 1
    }

    /// All workers of all processes.
    pub fn peers(&self) -> usize {
        self.workers * self.processes
    }

    /// The global index of this process's first worker.
    pub fn first(&self) -> usize {
        self.process * self.workers
    }

    /// The global indices of the first workers of the other processes: where this
    /// process's model deltas and worker status go.
    pub fn others(&self) -> Vec<u32> {
        (0..self.processes)
            .filter(|&p| p != self.process)
            .map(|p| (p * self.workers) as u32)
            .collect()
    }

    /// The timely configuration: threads in one process, or a cluster over TCP.
    pub fn timely_config(&self) -> timely::Config {
        if !self.is_cluster() {
            return timely::Config::process(self.workers);
        }
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.addresses.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    }

    /// What this topology cannot run with `config` (see "Not in this slice" above).
    pub fn check(&self, config: &PipelineConfig) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.is_cluster() {
            return problems;
        }
        let p = self.processes;
        if config.state.is_durable() {
            problems.push(format!(
                "state.dir is set ({}) but --processes is {p}: checkpoints are not consistent across processes yet; set state.dir = \"\" (CTRFLOW__STATE__DIR=\"\") or run one process",
                config.state.dir.display()
            ));
        }
        if config.model.optimizer != crate::model::Optimizer::Ftrl {
            problems.push(format!(
                "model.optimizer must be \"ftrl\" with --processes {p}: processes exchange FTRL's additive (z, n) deltas"
            ));
        }
        if config.drift.response.enabled {
            problems.push(format!(
                "drift.response.enabled = true is not supported with --processes {p}: a promoted challenger would serve in one process only; set it to false"
            ));
        }
        problems.extend(config.cluster.validate());
        problems
    }
}

/// The addresses of a hostfile: one `host:port` per line, blank and `#` lines skipped.
fn read_hostfile(path: &Path) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--hostfile {}: {e}", path.display()))?;
    let mut addresses = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let port = line
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
            return Err(format!(
                "--hostfile {} line {}: {line:?} is not host:port (for example 10.0.0.5:2101)",
                path.display(),
                n + 1
            ));
        }
        addresses.push(line.to_owned());
    }
    Ok(addresses)
}

/// One worker's state as the other processes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The worker's global index.
    pub peer: u32,
    /// The time its input stands at.
    pub watermark: u64,
    /// All its partitions are idle (or it has none).
    pub idle: bool,
    /// The newest event time it read (`i64::MIN`: none).
    pub newest: i64,
    /// It stopped reading; `watermark` and `newest` are final.
    pub stopped: bool,
}

/// What travels between processes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Message {
    /// A worker's status.
    Status(PeerStatus),
    /// Model deltas `(coordinate, Δz, Δn)` and the number of examples they learned.
    Model {
        /// The examples learned since the last exchange (the first chunk carries them).
        updates: u64,
        /// Changed coordinates.
        deltas: Vec<(u32, f32, f32)>,
    },
}

/// How often a worker sends a changed status at most (a stop goes at once).
pub const STATUS_EVERY: Duration = Duration::from_millis(2);

/// Model deltas per message.
const CHUNK: usize = 1 << 16;

/// The link's input: its time counts the batches sent, and means nothing else.
type LinkInput = InputHandle<u64, CapacityContainerBuilder<Vec<(u32, Message)>>>;

/// This process's replica and the baseline of the last exchange (first worker only).
struct Replica {
    model: FtrlModel,
    baseline: Vec<u64>,
    /// Updates received from other processes, so as not to send them back as ours.
    received: u64,
    /// The local update count at the last exchange.
    sent: u64,
    /// The model version when the table was last scanned, plus the updates received
    /// since: while the version stays there, nothing was learned here and the scan is
    /// skipped (an idle process costs nothing). Workers publish their update counts
    /// after each batch, so a batch in progress is caught by the next interval's scan.
    scanned: u64,
}

/// One worker's end of the cluster dataflow (see the module docs).
pub struct Link {
    input: Option<LinkInput>,
    probe: ProbeHandle<u64>,
    targets: Vec<u32>,
    replica: Option<Rc<RefCell<Replica>>>,
    interval: Duration,
    last_sync: Instant,
    last_status: Option<(PeerStatus, Instant)>,
    deltas: Vec<(u32, f32, f32)>,
    id: usize,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Builds the cluster dataflow on `worker` (every worker of every process builds it).
    /// The process's first worker exchanges the model; `on_status` gets the other
    /// processes' workers' status there.
    pub fn build(
        worker: &mut Worker,
        topology: &Topology,
        config: &PipelineConfig,
        model: &Model,
        mut on_status: impl FnMut(&PeerStatus) + 'static,
    ) -> Self {
        let first = worker.index() == topology.first();
        let replica = match model {
            Model::Ftrl(m) if first => {
                // Already on: `run` turns it on before any worker learns.
                m.track_changes();
                let baseline = (0..m.raw_len()).map(|i| m.raw(i)).collect();
                Some(Rc::new(RefCell::new(Replica {
                    model: m.clone(),
                    baseline,
                    received: 0,
                    sent: m.version(),
                    scanned: m.version(),
                })))
            }
            _ => None,
        };
        let mut input = LinkInput::new();
        let probe = ProbeHandle::new();
        let id = worker.next_dataflow_index();
        let receiver = replica.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            input
                .to_stream(scope)
                .exchange(|(target, _)| u64::from(*target))
                .inspect(move |(_, message)| match message {
                    Message::Status(status) => on_status(status),
                    Message::Model { updates, deltas } => {
                        if let Some(replica) = &receiver {
                            let mut r = replica.borrow_mut();
                            let r = &mut *r;
                            r.model.add_delta(&mut r.baseline, deltas);
                            r.model.add_version(*updates);
                            r.received += updates;
                            r.scanned += updates;
                            tracing::trace!(
                                coordinates = deltas.len(),
                                updates,
                                "Model deltas received."
                            );
                        }
                    }
                })
                .probe_with(&probe);
        });
        Self {
            input: Some(input),
            probe,
            targets: topology.others(),
            replica,
            interval: Duration::from_millis(config.cluster.sync_interval_ms),
            last_sync: Instant::now(),
            last_status: None,
            deltas: Vec::new(),
            id,
        }
    }

    /// Sends this worker's status when it changed, and (first worker) the model deltas
    /// when the interval is up. Call once per poll round; cheap when there is nothing to send.
    pub fn tick(&mut self, status: PeerStatus) {
        let Some(input) = self.input.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut sent = false;
        let due = match self.last_status {
            None => true,
            Some((last, at)) => {
                last != status
                    && (status.stopped != last.stopped || now.duration_since(at) >= STATUS_EVERY)
            }
        };
        if due {
            for &t in &self.targets {
                input.send((t, Message::Status(status)));
            }
            self.last_status = Some((status, now));
            sent = true;
        }
        if let Some(replica) = &self.replica
            && now.duration_since(self.last_sync) >= self.interval
        {
            self.last_sync = now;
            let mut r = replica.borrow_mut();
            let r = &mut *r;
            let version = r.model.version();
            self.deltas.clear();
            let scan = Instant::now();
            if version != r.scanned {
                r.scanned = version;
                r.model.delta_since(&mut r.baseline, &mut self.deltas);
            }
            let scan_secs = scan.elapsed().as_secs_f64();
            let local = version.saturating_sub(r.received);
            let mut updates = local.saturating_sub(r.sent);
            r.sent = local;
            tracing::trace!(
                coordinates = self.deltas.len(),
                updates,
                scan_secs,
                "Model deltas sent."
            );
            for chunk in self.deltas.chunks(CHUNK) {
                for &t in &self.targets {
                    input.send((
                        t,
                        Message::Model {
                            updates,
                            deltas: chunk.to_vec(),
                        },
                    ));
                }
                updates = 0;
                sent = true;
            }
        }
        if sent {
            // Moving the time ships the batch: an exchange channel holds what it was given
            // until its sender finishes the time (a flush alone does not).
            let next = *input.time() + 1;
            input.advance_to(next);
        }
    }

    /// Closes this worker's end; [`done`](Self::done) once every peer's is closed and
    /// everything sent was received.
    pub fn close(&mut self) {
        self.input.take();
    }

    /// Whether the cluster dataflow has finished on this worker.
    pub fn done(&self) -> bool {
        self.probe.done()
    }

    /// The dataflow's identifier, to drop it at the end.
    pub fn id(&self) -> usize {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostfile(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn bad_combinations_name_the_option_and_the_fix() {
        let err = |w, n, p, h: Option<&Path>| Topology::from_options(w, n, p, h).unwrap_err();
        assert!(err(0, 1, 0, None).contains("--workers"));
        assert!(err(1, 0, 0, None).contains("--processes must be at least 1"));
        assert!(err(1, 2, 2, None).contains("--process 2 is out of range"));
        assert!(err(1, 2, 0, None).contains("needs --hostfile"));
        let two = hostfile("127.0.0.1:2101\n\n# comment\n127.0.0.1:2102\n");
        assert!(err(1, 1, 0, Some(two.path())).contains("--hostfile is only used"));
        assert!(err(1, 3, 0, Some(two.path())).contains("lists 2 address(es), --processes is 3"));
        let bad = hostfile("127.0.0.1:2101\nlocalhost\n");
        assert!(err(1, 2, 0, Some(bad.path())).contains("line 2"));
        assert!(err(1, 2, 0, Some(Path::new("/nonexistent/hosts"))).contains("/nonexistent/hosts"));
    }

    #[test]
    fn peers_are_numbered_across_processes() {
        let two = hostfile("127.0.0.1:2101\n127.0.0.1:2102\n127.0.0.1:2103\n");
        let t = Topology::from_options(2, 3, 1, Some(two.path())).unwrap();
        assert_eq!(t.peers(), 6);
        assert_eq!(t.first(), 2);
        assert_eq!(t.others(), vec![0, 4]);
        assert_eq!(t.addresses.len(), 3);
        let single = Topology::from_options(4, 1, 0, None).unwrap();
        assert_eq!(single, Topology::single(4));
        assert!(single.others().is_empty());
    }

    #[test]
    fn a_cluster_refuses_what_it_cannot_keep_consistent() {
        let two = hostfile("127.0.0.1:2101\n127.0.0.1:2102\n");
        let t = Topology::from_options(1, 2, 0, Some(two.path())).unwrap();
        let mut config = PipelineConfig::default();
        assert!(t.check(&config).is_empty());
        config.state.dir = "/tmp/state".into();
        config.drift.response.enabled = true;
        let problems = t.check(&config);
        assert!(problems[0].starts_with("state.dir is set"), "{problems:?}");
        assert!(
            problems[1].starts_with("drift.response.enabled"),
            "{problems:?}"
        );
        assert!(Topology::single(2).check(&config).is_empty());
    }

    /// Two replicas exchanging deltas end where one model learning both streams would
    /// (up to f32 rounding), and a received delta is not sent back; with a full scan and
    /// with the page bitmap.
    #[test]
    fn replicas_exchanging_deltas_learn_each_others_examples() {
        exchange(false);
        exchange(true);
    }

    fn exchange(tracked: bool) {
        use ctrflow_dataflows::record::Feature;
        let config = crate::model::ModelConfig {
            bits: 10,
            ..Default::default()
        };
        let (a, b) = (
            FtrlModel::new(&config).unwrap(),
            FtrlModel::new(&config).unwrap(),
        );
        if tracked {
            a.track_changes();
            b.track_changes();
        }
        let zero = vec![0u64; a.raw_len()];
        let (mut base_a, mut base_b) = (zero.clone(), zero);
        let x = |i: u32| {
            [Feature {
                index: i,
                value: 1.0,
            }]
        };
        a.handle().predict_and_update(&x(3), true);
        b.handle().predict_and_update(&x(7), false);
        let (mut da, mut db) = (Vec::new(), Vec::new());
        a.delta_since(&mut base_a, &mut da);
        b.delta_since(&mut base_b, &mut db);
        assert_eq!(da.len(), 2, "the feature and the bias: {da:?}");
        b.add_delta(&mut base_b, &da);
        a.add_delta(&mut base_a, &db);
        for i in [3usize, 7] {
            assert_eq!(a.raw(i), b.raw(i), "coordinate {i}");
            assert_ne!(a.raw(i), 0);
        }
        let bias = a.raw_len() - 1;
        let (za, zb) = (
            f32::from_bits(a.raw(bias) as u32),
            f32::from_bits(b.raw(bias) as u32),
        );
        assert!((za - zb).abs() < 1e-6, "{za} vs {zb}");
        // Nothing new was learned: nothing to send, received deltas included.
        da.clear();
        b.delta_since(&mut base_b, &mut da);
        assert!(da.is_empty(), "{da:?}");
        // Garbage is ignored, never stored.
        a.add_delta(&mut base_a, &[(u32::MAX, 1.0, 1.0), (3, f32::NAN, 0.0)]);
        assert_eq!(a.raw(3), b.raw(3));
    }
}
