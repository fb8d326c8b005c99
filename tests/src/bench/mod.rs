//! `relay-bench`: Relay end to end against a bare baseline, in one invocation, on one broker.
//!
//! A private RabbitMQ node, a fast local sink, the real release binaries as child processes
//! (consumer-api with SQLite, D dispatchers, ingest) and the bare baseline process
//! (`relay-bench-bare`: HTTP front → quorum queue → POST → ack) on the same broker, sink and
//! payloads. Scenarios:
//!
//! - **a** fan-out 1, 500-byte events, through each driver (AMQP, HTTP batch, HTTP single),
//!   each against the baseline driven the same way;
//! - **b** fan-out 10 (ten subscriptions match each event), and the baseline posting 10 times;
//! - **c** open loop at 50 % of (a)'s maximum, for latency, and the baseline at the same rate;
//! - **d** dispatchers D = 1, 2, 3;
//! - **e** 10 % of events go to an endpoint answering 500;
//! - **k** 100,000 subscriptions (mixed exact, `*` and `#` filters, 1,000 consumers) of which
//!   10 match each event, against the same load with only those 10 subscriptions;
//! - **l** endpoints answering after 200 ms, 64 concurrent HTTP producers, fan-out 1 and 10;
//! - **i** fan-out 1 over AMQP, the event type with a JSON Schema (checked by the dispatcher)
//!   against the same load without one (events/s ratio);
//! - **j** fan-out 10 over AMQP, each subscription with a payload filter every event passes,
//!   against the same without filters (deliveries/s ratio);
//! - **s** fan-out 1 over AMQP, subscriptions signing `both` (HMAC and ed25519) against `v1`
//!   (ratio of the dispatcher's CPU µs per delivery);
//! - **f** fan-out 1 over AMQP with `amqp.ingress_shards` 1, 2 and 4 (events routed by id),
//!   on the private node and, with `--cluster`, on a private 3-node cluster: events/s and CPU
//!   µs per event against 1 shard (on 2 cores the figure that must hold is CPU per event
//!   staying within 15 %);
//! - **g** fan-out 1 over AMQP, events spread over 1,000 ordering keys, to an `"ordering":
//!   "key"` subscription (single-active-consumer ingress) against the same load to an
//!   unordered one (events/s ratio and p99); then, open loop at half the unordered rate, the
//!   unordered subscription's p99 beside an ordered one on the same events against alone
//!   (the issue's "unordered traffic unaffected: p99 within 2×");
//! - **h** fan-out 100 over AMQP, 20 of the subscriptions with a `rate_limit`: deliveries/s
//!   (all, and to the 80 unlimited until their last), the rate accuracy of each limited one
//!   (its busiest and its quietest 10 s window / `rate_limit × 10`, and its mean rate /
//!   `rate_limit`), and the dispatcher's CPU µs per delivery against (b)'s when both run.
//!
//! Every row has the CPU time per event of each process. Results go to stdout,
//! `target/relay-bench/<date>.json` with an SVG per scenario beside it (deliveries per
//! second over time and the latency CDF), and `docs/BENCHMARKS.md` (plots in `docs/bench/`).

pub mod bare;
mod baseline;
mod load;
mod plot;
mod relay;
mod sink;
mod stats;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;

use self::{
    baseline::Baseline,
    load::{Driver, Events, Sent, Target},
    relay::{Relay, Subscription},
    sink::Sink,
    stats::{Latency, ProcStats, Timeline, per_second},
};
use crate::{broker::PrivateBroker, cluster::PrivateCluster};

/// Command-line options of `relay-bench`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "relay-bench",
    about = "Relay end to end against a bare RabbitMQ→HTTP baseline, in one run.\n\
             Build the binaries first: cargo build --release --bins"
)]
pub struct Options {
    /// Scenarios to run: a, b, c, d, e, f, g, h, i, j, k, l, s (comma separated) or all.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Small sizes: the whole run takes about two minutes.
    #[arg(long)]
    pub quick: bool,
    /// Events per run in (a), (i), (j) and (s) [default 100000; --quick 15000].
    #[arg(long)]
    pub events: Option<u64>,
    /// Events in (b) [default 20000; --quick 3000].
    #[arg(long)]
    pub fanout_events: Option<u64>,
    /// Seconds of open-loop load in (c) [default 60; --quick 15].
    #[arg(long)]
    pub latency_seconds: Option<u64>,
    /// Events/s in (c) [default: 50 % of (a)'s AMQP end-to-end maximum, else 1000].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Events per run in (d) [default 20000; --quick 6000].
    #[arg(long)]
    pub scale_events: Option<u64>,
    /// Events in (e) [default 30000; --quick 8000].
    #[arg(long)]
    pub failing_events: Option<u64>,
    /// Subscriptions in the large run of (k) [default 100000; --quick 10000].
    #[arg(long)]
    pub k_subscriptions: Option<usize>,
    /// Consumers owning the subscriptions of (k) [default 1000; --quick 100].
    #[arg(long)]
    pub k_consumers: Option<usize>,
    /// Events per run in (k) [default 20000; --quick 3000].
    #[arg(long)]
    pub k_events: Option<u64>,
    /// Events in (l) at fan-out 1; a fifth of it at fan-out 10 [default 20000; --quick 3000].
    #[arg(long)]
    pub slow_events: Option<u64>,
    /// Events in (h) [default 5000; --quick 600].
    #[arg(long)]
    pub limit_events: Option<u64>,
    /// `rate_limit` of (h)'s limited subscriptions, requests per second [default 50].
    #[arg(long, default_value_t = 50.0)]
    pub limit_rate: f64,
    /// Events per run in (f) and (g) [default 30000; --quick 6000].
    #[arg(long)]
    pub shard_events: Option<u64>,
    /// Ordering keys of (g)'s events.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Also run (f) on a private 3-node cluster (three more RabbitMQ nodes on this machine).
    #[arg(long)]
    pub cluster: bool,
    /// Drivers of (a), each also run through the baseline: amqp, batch, single.
    #[arg(long, default_value = "amqp,batch,single")]
    pub drivers: String,
    /// Drivers of (c), each also run through the baseline: amqp, single.
    #[arg(long, default_value = "single,amqp")]
    pub latency_drivers: String,
    /// Event envelope size in bytes.
    #[arg(long, default_value_t = 500)]
    pub size: usize,
    /// Verify the signature of one delivery in this many.
    #[arg(long, default_value_t = 100)]
    pub sample: u64,
    /// Dispatcher prefetch (also the baseline consumer's).
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,
    /// Use this broker instead of starting a private node.
    #[arg(long)]
    pub amqp_url: Option<String>,
    /// Run every dispatcher under this command (e.g. "valgrind --tool=callgrind").
    #[arg(long)]
    pub dispatch_wrapper: Option<String>,
    /// Run ingest under this command.
    #[arg(long)]
    pub ingest_wrapper: Option<String>,
    /// Extra Relay settings KEY=VALUE (e.g. RELAY__DISPATCH__PREFETCH=512), repeatable.
    #[arg(long = "set")]
    pub settings: Vec<String>,
    /// Do not append to docs/BENCHMARKS.md.
    #[arg(long)]
    pub no_record: bool,
    /// Keep the Relay processes' logs.
    #[arg(long)]
    pub keep_logs: bool,
}

impl Options {
    fn pick(&self, explicit: Option<u64>, full: u64, quick: u64) -> u64 {
        explicit.unwrap_or(if self.quick { quick } else { full })
    }

    fn wants(&self, scenario: &str) -> bool {
        self.scenario == "all" || self.scenario.split(',').any(|s| s.trim() == scenario)
    }
}

/// Which system a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum System {
    Relay,
    Baseline,
}

/// How load is applied.
#[derive(Debug, Clone, Copy)]
enum Load {
    Closed(u64),
    Open { rate: f64, seconds: u64 },
}

/// The subscriptions of a scenario (k) run: `families` groups of ten filters that match
/// event type `k.f{family}.created`, owned by `consumers` consumers in turn.
#[derive(Debug, Clone, Copy)]
struct Directory {
    subscriptions: usize,
    consumers: usize,
}

impl Directory {
    fn families(self) -> usize {
        self.subscriptions.div_ceil(10)
    }

    /// Filter of subscription `i`: ten per family, four kinds (exact, `*`, `#` at the end,
    /// `#` at the start), each matching exactly its family's type.
    fn filter(i: usize) -> String {
        let family = i / 10;
        match i % 10 {
            0..=2 => format!("k.f{family}.created"),
            3..=5 => format!("k.f{family}.*"),
            6 | 7 => format!("k.f{family}.#"),
            _ => format!("#.f{family}.created"),
        }
    }
}

/// The event-contract feature a run measures against a run without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contract {
    /// None: the comparison's base.
    Plain,
    /// `bench.ok` has a JSON Schema every event satisfies.
    Schema,
    /// Every subscription has a payload filter every event passes.
    Filter,
    /// Every subscription signs with `both`.
    SignBoth,
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    scenario: &'static str,
    system: System,
    driver: Driver,
    dispatchers: usize,
    fanout: usize,
    load: Load,
    fail_every: u64,
    /// Closed-loop units in flight, when not the driver's default.
    in_flight: Option<usize>,
    /// Endpoints answer after [`sink::SLOW`].
    slow: bool,
    /// Scenario (k)'s subscriptions instead of `fanout` identical ones.
    directory: Option<Directory>,
    /// Scenarios (i), (j), (s).
    contract: Contract,
    /// `amqp.ingress_shards` (scenario f).
    shards: u16,
    /// On the private 3-node cluster (scenario f).
    cluster: bool,
    /// Ordering keys of the events, 0 for none (scenario g).
    keys: u64,
    /// The subscriptions are `"ordering": "key"`, the ingress single-active-consumer.
    ordered: bool,
    /// One `"ordering": "key"` subscription (path `/ord0`) beside the unordered ones; the
    /// row's latency is the unordered ones' (scenario g).
    ordered_beside: bool,
    /// `amqp.ordered_ingress` (single-active-consumer) even without `ordered`.
    ordered_ingress: bool,
    /// Scenario (h): the first `.0` subscriptions are limited to `.1` requests per second.
    limited: Option<(usize, f64)>,
    /// Relay's in-flight caps set to the baseline's concurrency (the prefetch per
    /// subscription, prefetch × fan-out in all) instead of its defaults (64, 512):
    /// `max_in_flight` and both `dispatch.max_inflight*` settings.
    caps_as_bare: bool,
}

impl Spec {
    fn new(
        scenario: &'static str,
        system: System,
        driver: Driver,
        fanout: usize,
        load: Load,
    ) -> Self {
        Spec {
            scenario,
            system,
            driver,
            dispatchers: 1,
            fanout,
            load,
            fail_every: 0,
            in_flight: None,
            slow: false,
            directory: None,
            contract: Contract::Plain,
            shards: 1,
            cluster: false,
            keys: 0,
            ordered: false,
            ordered_beside: false,
            ordered_ingress: false,
            limited: None,
            caps_as_bare: false,
        }
    }

    fn label(&self) -> String {
        let system = match self.system {
            System::Relay => "Relay",
            System::Baseline => "bare",
        };
        let mut label = format!("{system} {}", self.driver.name());
        if let Some(d) = self.directory {
            let _ = write!(label, " {} subscriptions", d.subscriptions);
        } else if self.fanout > 1 {
            let _ = write!(label, " fan-out {}", self.fanout);
        }
        if self.dispatchers > 1 {
            let _ = write!(label, " D={}", self.dispatchers);
        }
        if self.scenario == "f" {
            let _ = write!(label, " shards={}", self.shards);
        }
        if self.cluster {
            label.push_str(" 3-node cluster");
        }
        if self.caps_as_bare {
            label.push_str(" caps as bare");
        }
        if self.keys > 0 {
            let order = match (self.ordered, self.ordered_beside) {
                (true, _) => "ordered",
                (false, true) => "unordered beside ordered",
                (false, false) => "unordered",
            };
            let _ = write!(label, " {} keys {order}", self.keys);
        }
        match self.contract {
            // The base of (i), (j) and (s) says what it lacks.
            Contract::Plain => label.push_str(match self.scenario {
                "i" => " no schema",
                "j" => " no filters",
                "s" => " signing v1",
                _ => "",
            }),
            Contract::Schema => label.push_str(" schema"),
            Contract::Filter => label.push_str(" payload filters"),
            Contract::SignBoth => label.push_str(" signing both"),
        }
        label
    }
}

/// Scenario (k)'s directory figures.
#[derive(Debug, Clone, Serialize)]
pub struct DirectoryFigures {
    /// Subscriptions loaded.
    subscriptions: usize,
    /// Creating them through consumer-api, in seconds.
    create_seconds: f64,
    /// Dispatcher start → ready (snapshot fetched and indexed), in seconds.
    dispatch_ready_seconds: f64,
    /// Dispatcher RSS after the run, in MiB.
    dispatch_rss_mib: f64,
}

/// Scenario (h)'s rate-limit figures.
#[derive(Debug, Clone, Serialize)]
pub struct LimitFigures {
    /// Subscriptions limited.
    limited: usize,
    /// Their `rate_limit`, requests per second.
    rate_limit: f64,
    /// Per limited subscription, its busiest 10 s window / `rate_limit × 10`: the highest
    /// (the issue's "at most the limit within +10 %").
    busiest_window_max: f64,
    /// Per limited subscription, its quietest 10 s window while at least a window's worth
    /// (`rate_limit × 10`) of its deliveries were still to come / `rate_limit × 10`: the
    /// lowest (the issue's "at least 90 % of it when there is enough traffic").
    quietest_window_min: f64,
    /// Per limited subscription, its mean rate (first to last delivery) / `rate_limit`: the
    /// lowest.
    mean_rate_min: f64,
    /// Deliveries per second to the unlimited subscriptions, until their last.
    unlimited_deliveries_per_s: f64,
    /// The dispatcher's CPU µs per delivery.
    dispatch_us_per_delivery: f64,
    /// Deliveries per second to the limited subscriptions together, over the run (their
    /// limits add up to `limited × rate_limit`).
    timeline: Timeline,
}

/// The most arrivals in a window of `window_us` (of sorted `at`), and the fewest in one that
/// starts while at least `enough` arrivals are still to come (later there is not enough
/// traffic left to fill a window at the limit). The busiest window starts at an arrival, the
/// quietest just after one.
fn window_extremes(at: &[u64], window_us: u64, enough: usize) -> (usize, Option<usize>) {
    let up_to = |t: u64| at.partition_point(|a| *a <= t);
    let most = at
        .iter()
        .enumerate()
        .map(|(i, start)| at.partition_point(|a| *a < start + window_us) - i)
        .max()
        .unwrap_or(0);
    let fewest = at
        .iter()
        .enumerate()
        .filter(|(i, _)| at.len() - (i + 1) >= enough)
        .map(|(_, start)| up_to(start + window_us) - up_to(*start))
        .min();
    (most, fewest)
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    scenario: String,
    label: String,
    system: System,
    driver: Driver,
    dispatchers: usize,
    fanout: usize,
    /// Events sent / accepted.
    sent: Sent,
    /// Events accepted per second (until the last acceptance).
    accepted_per_s: f64,
    /// Distinct deliveries expected at the healthy endpoints.
    expected: u64,
    /// Distinct deliveries that arrived.
    delivered: u64,
    /// Expected deliveries that never arrived.
    missing: u64,
    /// Deliveries that arrived more than once.
    duplicates: u64,
    /// Requests to the failing endpoint.
    failed_requests: u64,
    /// From the first send to the last healthy delivery, in seconds.
    seconds: f64,
    /// Healthy deliveries per second.
    deliveries_per_s: f64,
    /// Events fully delivered per second (deliveries / fan-out).
    events_per_s: f64,
    latency: Latency,
    /// Each process's peak RSS and CPU seconds during the load.
    procs: Vec<ProcStats>,
    /// CPU µs per accepted event by process group (`ingest`, `dispatch`, `api`, `bare`,
    /// `mq`, `bench`) and `total`.
    cpu_us_per_event: BTreeMap<String, f64>,
    /// Relay / baseline of the row's headline figure, when there is a baseline.
    ratio: Option<f64>,
    /// Deliveries handed to a retry tier (Relay: deferred, circuit open, retry scheduled).
    retry_tier: Option<f64>,
    /// Attempt records the dispatchers dropped (`relay_attempt_records_dropped_total`: the
    /// delivery log's buffer was full).
    records_dropped: Option<f64>,
    /// Scenario (k) only.
    directory: Option<DirectoryFigures>,
    /// Scenario (h) only.
    limits: Option<LimitFigures>,
    /// Deliveries per second over time.
    timeline: Timeline,
    /// Latency CDF, `(ms, fraction)`.
    cdf: Vec<(f64, f64)>,
}

struct Bench {
    opts: Options,
    bins: PathBuf,
    amqp_url: String,
    broker: Option<PrivateBroker>,
    /// While (f) runs on it: the private cluster, which `amqp_url` and `amqp` then point to.
    cluster: Option<PrivateCluster>,
    /// Name and pid of each broker node's Erlang VM measured.
    broker_pids: Vec<(String, u32)>,
    sink: Sink,
    http: reqwest::Client,
    amqp: (lapin::Connection, lapin::Channel),
    run_id: String,
    counter: usize,
    rows: Vec<Row>,
}

/// Runs the benchmark as `opts` says; prints, writes the JSON and the plots, and appends
/// to BENCHMARKS.md.
///
/// # Errors
/// The binaries are not built, the broker or a process did not start.
pub async fn run(opts: Options, command_line: String) -> anyhow::Result<()> {
    let bins = relay::bin_dir()?;
    let started = Instant::now();
    let (broker, amqp_url) = match &opts.amqp_url {
        Some(url) => (None, url.clone()),
        None => {
            eprintln!("starting a private RabbitMQ node…");
            let broker = PrivateBroker::start().await;
            let url = broker.amqp_url();
            (Some(broker), url)
        }
    };
    let broker_pids = node_pid(broker.as_ref());
    let sink = Sink::start(opts.sample).await?;
    let amqp = load::confirm_channel(&amqp_url)
        .await
        .context("connecting the AMQP driver")?;
    let mut bench = Bench {
        bins,
        amqp_url,
        broker,
        cluster: None,
        broker_pids,
        sink,
        http: load::http_client(),
        amqp,
        run_id: format!("{:x}", stats::unix_micros() % 0xff_ffff),
        counter: 0,
        rows: Vec::new(),
        opts,
    };
    bench.scenarios().await?;
    let total = started.elapsed();
    bench.report(&command_line, total)?;
    drop(bench.broker.take());
    Ok(())
}

/// `rabbitmq` and the pid of the private node's Erlang VM, if there is one.
fn node_pid(broker: Option<&PrivateBroker>) -> Vec<(String, u32)> {
    broker
        .and_then(|b| find_pid(b.node()))
        .map(|pid| ("rabbitmq".to_owned(), pid))
        .into_iter()
        .collect()
}

/// The pid of the Erlang VM whose command line names `node`.
fn find_pid(node: &str) -> Option<u32> {
    // The VM is started with `-sname NAME`, without the host part.
    let name = node.split('@').next().unwrap_or(node);
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline);
            (text.contains("beam") && text.contains(name)).then_some(pid)
        })
}

/// `relay / baseline`, guarded against a zero baseline.
fn ratio(relay: f64, baseline: f64) -> f64 {
    relay / baseline.max(f64::MIN_POSITIVE)
}

/// What a run started: Relay or the baseline, and where producers send to.
struct Started {
    relay: Option<Relay>,
    base: Option<Baseline>,
    target: Target,
}

impl Bench {
    async fn scenarios(&mut self) -> anyhow::Result<()> {
        let o = self.opts.clone();
        let drivers = |list: &str| -> Vec<Driver> {
            list.split(',')
                .filter_map(|d| Driver::parse(d.trim()))
                .collect()
        };
        let mut amqp_max: Option<f64> = None;
        if o.wants("a") {
            let n = o.pick(o.events, 100_000, 15_000);
            for driver in drivers(&o.drivers) {
                let load = Load::Closed(n);
                let base = self
                    .run(Spec::new("a", System::Baseline, driver, 1, load))
                    .await?;
                let mut row = self
                    .run(Spec::new("a", System::Relay, driver, 1, load))
                    .await?;
                row.ratio = Some(ratio(row.events_per_s, base.events_per_s));
                if driver == Driver::Amqp {
                    amqp_max = Some(row.events_per_s);
                }
                self.rows.push(row);
                self.rows.push(base);
            }
        }
        if o.wants("b") {
            let load = Load::Closed(o.pick(o.fanout_events, 20_000, 3_000));
            let base = self
                .run(Spec::new("b", System::Baseline, Driver::Amqp, 10, load))
                .await?;
            let mut row = self
                .run(Spec::new("b", System::Relay, Driver::Amqp, 10, load))
                .await?;
            row.ratio = Some(ratio(row.deliveries_per_s, base.deliveries_per_s));
            self.rows.push(row);
            self.rows.push(base);
        }
        if o.wants("c") {
            let rate = o
                .rate
                .or(amqp_max.map(|m| (m * 0.5).round()))
                .unwrap_or(1000.0);
            let seconds = o.pick(o.latency_seconds, 60, 15);
            let open = Load::Open { rate, seconds };
            for driver in drivers(&o.latency_drivers) {
                let base = self
                    .run(Spec::new("c", System::Baseline, driver, 1, open))
                    .await?;
                let mut row = self
                    .run(Spec::new("c", System::Relay, driver, 1, open))
                    .await?;
                row.ratio = Some(ratio(row.latency.p99_ms, base.latency.p99_ms));
                self.rows.push(row);
                self.rows.push(base);
            }
        }
        if o.wants("d") {
            let n = o.pick(o.scale_events, 20_000, 6_000);
            for d in 1..=3 {
                let mut s = Spec::new("d", System::Relay, Driver::Amqp, 1, Load::Closed(n));
                s.dispatchers = d;
                let row = self.run(s).await?;
                self.rows.push(row);
            }
        }
        if o.wants("e") {
            let n = o.pick(o.failing_events, 30_000, 8_000);
            let mut s = Spec::new("e", System::Relay, Driver::Amqp, 1, Load::Closed(n));
            s.fail_every = 10;
            let row = self.run(s).await?;
            self.rows.push(row);
        }
        if o.wants("k") {
            let load = Load::Closed(o.pick(o.k_events, 20_000, 3_000));
            let consumers = o.k_consumers.unwrap_or(if o.quick { 100 } else { 1000 });
            let large = o
                .k_subscriptions
                .unwrap_or(if o.quick { 10_000 } else { 100_000 });
            let mut rows = Vec::new();
            for subscriptions in [10, large] {
                let mut s = Spec::new("k", System::Relay, Driver::Amqp, 10, load);
                s.directory = Some(Directory {
                    subscriptions,
                    consumers,
                });
                rows.push(self.run(s).await?);
            }
            let small = rows[0].events_per_s;
            for mut row in rows {
                row.ratio = Some(ratio(row.events_per_s, small));
                self.rows.push(row);
            }
        }
        if o.wants("h") {
            let load = Load::Closed(o.pick(o.limit_events, 5_000, 600));
            let mut s = Spec::new("h", System::Relay, Driver::Amqp, 100, load);
            s.limited = Some((20, o.limit_rate));
            let mut row = self.run(s).await?;
            // The limiter's cost: the dispatcher's CPU per delivery against (b)'s, when run.
            let per_delivery = |r: &Row| {
                #[allow(clippy::cast_precision_loss)]
                r.cpu_us_per_event
                    .get("dispatch")
                    .map(|us| us / r.fanout as f64)
            };
            let b = self
                .rows
                .iter()
                .find(|r| r.scenario == "b" && r.system == System::Relay);
            row.ratio = b
                .and_then(per_delivery)
                .zip(per_delivery(&row))
                .map(|(b, h)| ratio(h, b));
            self.rows.push(row);
        }
        if o.wants("i") || o.wants("j") || o.wants("s") {
            self.contract_scenarios().await?;
        }
        if o.wants("f") {
            self.shard_runs(false).await?;
            if o.cluster {
                self.on_cluster().await?;
                let runs = self.shard_runs(true).await;
                self.off_cluster().await?;
                runs?;
            }
        }
        if o.wants("g") {
            let load = Load::Closed(o.pick(o.shard_events, 30_000, 6_000));
            let spec = |ordered| {
                let mut s = Spec::new("g", System::Relay, Driver::Amqp, 1, load);
                s.keys = o.keys;
                s.ordered = ordered;
                s
            };
            let unordered = self.run(spec(false)).await?;
            let mut row = self.run(spec(true)).await?;
            row.ratio = Some(ratio(row.events_per_s, unordered.events_per_s));
            let rate = o
                .rate
                .unwrap_or((unordered.events_per_s * 0.5).round().max(1.0));
            self.rows.push(row);
            self.rows.push(unordered);
            // Unordered deliveries beside an ordered subscription against alone, at a rate
            // both sustain (latency, not throughput), both runs single-active-consumer.
            let open = Load::Open {
                rate,
                seconds: o.pick(o.latency_seconds, 60, 10),
            };
            let spec = |beside| {
                let mut s = Spec::new("g", System::Relay, Driver::Amqp, 1, open);
                s.keys = o.keys;
                s.ordered_beside = beside;
                s.ordered_ingress = true;
                s
            };
            let alone = self.run(spec(false)).await?;
            let mut beside = self.run(spec(true)).await?;
            beside.ratio = Some(ratio(beside.latency.p99_ms, alone.latency.p99_ms));
            self.rows.push(beside);
            self.rows.push(alone);
        }
        if o.wants("l") {
            let n = o.pick(o.slow_events, 20_000, 3_000);
            for (fanout, events) in [(1, n), (10, n / 5)] {
                let spec = |system| {
                    let mut s =
                        Spec::new("l", system, Driver::Single, fanout, Load::Closed(events));
                    s.in_flight = Some(64);
                    s.slow = true;
                    s
                };
                let base = self.run(spec(System::Baseline)).await?;
                let mut row = self.run(spec(System::Relay)).await?;
                row.ratio = Some(ratio(row.latency.p99_ms, base.latency.p99_ms));
                // The defaults cap a subscription at 64 requests in flight, where the bare
                // consumer has its prefetch (256) in flight: to a 200 ms endpoint that caps
                // the rate, and the backlog's wait is the p99. The same run with the caps
                // at the baseline's concurrency shows what Relay's path itself adds.
                let mut matched = spec(System::Relay);
                matched.caps_as_bare = true;
                let mut matched = self.run(matched).await?;
                matched.ratio = Some(ratio(matched.latency.p99_ms, base.latency.p99_ms));
                self.rows.push(row);
                self.rows.push(matched);
                self.rows.push(base);
            }
        }
        Ok(())
    }

    /// Scenario (f) on the current broker: 1, 2 and 4 ingress shards, each row's ratio its
    /// events/s to 1 shard's.
    async fn shard_runs(&mut self, cluster: bool) -> anyhow::Result<()> {
        let load = Load::Closed(self.opts.pick(self.opts.shard_events, 30_000, 6_000));
        let mut one_shard = None;
        for shards in [1, 2, 4] {
            let mut s = Spec::new("f", System::Relay, Driver::Amqp, 1, load);
            s.shards = shards;
            s.cluster = cluster;
            let mut row = self.run(s).await?;
            let base = *one_shard.get_or_insert(row.events_per_s);
            row.ratio = Some(ratio(row.events_per_s, base));
            self.rows.push(row);
        }
        Ok(())
    }

    /// Starts a private 3-node cluster and points the runs (Relay, the AMQP driver, the
    /// broker CPU figures) at it.
    async fn on_cluster(&mut self) -> anyhow::Result<()> {
        eprintln!("starting a private 3-node RabbitMQ cluster…");
        let cluster = PrivateCluster::start().await;
        let url = cluster.urls().swap_remove(0);
        self.amqp = load::confirm_channel(&url)
            .await
            .context("connecting the AMQP driver to the cluster")?;
        self.amqp_url = url;
        self.broker_pids = (0..3)
            .filter_map(|i| {
                let pid = find_pid(cluster.node(i).node())?;
                Some((format!("rabbitmq-{i}"), pid))
            })
            .collect();
        self.cluster = Some(cluster);
        Ok(())
    }

    /// Stops the cluster and points the runs back at the private node (or `--amqp-url`).
    async fn off_cluster(&mut self) -> anyhow::Result<()> {
        drop(self.cluster.take());
        self.amqp_url = match (&self.broker, &self.opts.amqp_url) {
            (Some(broker), _) => broker.amqp_url(),
            (None, url) => url.clone().unwrap_or_default(),
        };
        self.amqp = load::confirm_channel(&self.amqp_url)
            .await
            .context("connecting the AMQP driver")?;
        self.broker_pids = node_pid(self.broker.as_ref());
        Ok(())
    }

    /// Scenarios (i), (j) and (s): each feature against the same run without it, in turn, so
    /// the ratio compares runs of one invocation.
    async fn contract_scenarios(&mut self) -> anyhow::Result<()> {
        let o = self.opts.clone();
        let load = Load::Closed(o.pick(o.events, 100_000, 15_000));
        let cases = [
            ("i", 1, Contract::Schema),
            ("j", 10, Contract::Filter),
            ("s", 1, Contract::SignBoth),
        ];
        for (scenario, fanout, contract) in cases {
            if !o.wants(scenario) {
                continue;
            }
            let spec = |contract| {
                let mut s = Spec::new(scenario, System::Relay, Driver::Amqp, fanout, load);
                s.contract = contract;
                s
            };
            let plain = self.run(spec(Contract::Plain)).await?;
            let mut row = self.run(spec(contract)).await?;
            row.ratio = Some(match contract {
                Contract::Schema => ratio(row.events_per_s, plain.events_per_s),
                Contract::SignBoth => {
                    let dispatch = |r: &Row| r.cpu_us_per_event.get("dispatch").copied();
                    ratio(
                        dispatch(&row).unwrap_or(0.0),
                        dispatch(&plain).unwrap_or(0.0),
                    )
                }
                Contract::Filter | Contract::Plain => {
                    ratio(row.deliveries_per_s, plain.deliveries_per_s)
                }
            });
            self.rows.push(row);
            self.rows.push(plain);
        }
        Ok(())
    }

    /// The event types a Relay run creates first: (i)'s schema, which every event satisfies.
    fn event_types(spec: &Spec) -> Vec<serde_json::Value> {
        if spec.contract != Contract::Schema {
            return Vec::new();
        }
        vec![serde_json::json!({
            "name": "bench.ok",
            "schema": {
                "type": "object",
                "required": ["sent_us", "seq", "pad"],
                "properties": {
                    "sent_us": {"type": "integer", "minimum": 0},
                    "seq": {"type": "integer", "minimum": 0},
                    "pad": {"type": "string"}
                }
            }
        })]
    }

    /// The subscriptions of a Relay run, each with its sink path.
    fn subscriptions(&self, spec: &Spec) -> Vec<(String, Subscription)> {
        let sub = |path: String, filter: String, consumer: Option<String>| {
            let url = self.sink.url(&path);
            let extra = match spec.contract {
                Contract::Filter => Some(serde_json::json!({"filter": {
                    "data.seq": {"$gte": 0}, "data.pad": {"$exists": true}}})),
                Contract::SignBoth => Some(serde_json::json!({"signature_scheme": "both"})),
                Contract::Plain | Contract::Schema if spec.ordered => {
                    Some(serde_json::json!({"ordering": "key"}))
                }
                Contract::Plain | Contract::Schema if spec.caps_as_bare => {
                    Some(serde_json::json!({"max_in_flight": self.opts.prefetch}))
                }
                Contract::Plain | Contract::Schema => None,
            };
            let s = Subscription {
                url,
                event_types: vec![filter],
                consumer,
                extra,
            };
            (path, s)
        };
        if let Some(d) = spec.directory {
            return (0..d.subscriptions)
                .map(|i| {
                    let consumer = format!("c{}", i % d.consumers.max(1));
                    sub(format!("/k{i}"), Directory::filter(i), Some(consumer))
                })
                .collect();
        }
        let prefix = if spec.slow { "/slowr" } else { "/r" };
        let mut subs: Vec<_> = (0..spec.fanout)
            .map(|k| match spec.limited {
                Some((limited, rate)) if k < limited => {
                    let (path, mut s) = sub(format!("/lim{k}"), "bench.ok".into(), None);
                    s.extra = Some(serde_json::json!({"rate_limit": rate}));
                    (path, s)
                }
                _ => sub(format!("{prefix}{k}"), "bench.ok".into(), None),
            })
            .collect();
        if spec.ordered_beside {
            subs.push((
                sink::ORDERED_BESIDE.into(),
                Subscription {
                    url: self.sink.url(sink::ORDERED_BESIDE),
                    event_types: vec!["bench.ok".into()],
                    consumer: None,
                    extra: Some(serde_json::json!({"ordering": "key"})),
                },
            ));
        }
        if spec.fail_every > 0 {
            subs.push(sub("/fail".into(), "bench.fail".into(), None));
        }
        subs
    }

    /// Starts the system a run measures.
    async fn start(&mut self, spec: &Spec, tag: &str) -> anyhow::Result<Started> {
        match spec.system {
            System::Relay => {
                let subs = self.subscriptions(spec);
                let only: Vec<Subscription> = subs.iter().map(|(_, s)| s.clone()).collect();
                let mut extra: Vec<(String, String)> = vec![(
                    "RELAY__DISPATCH__PREFETCH".into(),
                    self.opts.prefetch.to_string(),
                )];
                if spec.shards > 1 {
                    extra.push((
                        "RELAY__AMQP__INGRESS_SHARDS".into(),
                        spec.shards.to_string(),
                    ));
                }
                if spec.ordered || spec.ordered_ingress {
                    extra.push(("RELAY__AMQP__ORDERED_INGRESS".into(), "true".into()));
                }
                if spec.caps_as_bare {
                    extra.push((
                        "RELAY__DISPATCH__MAX_INFLIGHT".into(),
                        (usize::from(self.opts.prefetch) * spec.fanout).to_string(),
                    ));
                    // The ceiling of a subscription's `max_in_flight` on each dispatcher.
                    extra.push((
                        "RELAY__DISPATCH__MAX_INFLIGHT_PER_SUBSCRIPTION".into(),
                        self.opts.prefetch.to_string(),
                    ));
                }
                for kv in &self.opts.settings {
                    if let Some((k, v)) = kv.split_once('=') {
                        extra.push((k.to_owned(), v.to_owned()));
                    }
                }
                let started = Relay::start(
                    &self.bins,
                    &self.amqp_url,
                    &format!("{tag}."),
                    spec.dispatchers,
                    relay::Setup {
                        event_types: &Self::event_types(spec),
                        subscriptions: &only,
                    },
                    &extra,
                    relay::Wrappers {
                        dispatch: self.opts.dispatch_wrapper.as_deref(),
                        ingest: self.opts.ingest_wrapper.as_deref(),
                    },
                )
                .await?;
                for ((path, _), secret) in subs.iter().zip(&started.secrets) {
                    self.sink.set_secret(path, secret);
                }
                let target = Target {
                    ingest_url: started.ingest_url.clone(),
                    amqp: Some((
                        self.amqp.1.clone(),
                        started.events_exchange.clone(),
                        String::new(),
                    )),
                };
                Ok(Started {
                    relay: Some(started),
                    base: None,
                    target,
                })
            }
            System::Baseline => {
                let prefix = if spec.slow { "/slowb" } else { "/b" };
                let urls: Vec<String> = (0..spec.fanout)
                    .map(|k| self.sink.url(&format!("{prefix}{k}")))
                    .collect();
                let queue = format!("{tag}.baseline");
                let base = Baseline::start(
                    &self.bins,
                    &self.amqp_url,
                    &queue,
                    &urls,
                    self.opts.prefetch,
                )
                .await?;
                let target = Target {
                    ingest_url: base.url.clone(),
                    amqp: Some((self.amqp.1.clone(), String::new(), queue)),
                };
                Ok(Started {
                    relay: None,
                    base: Some(base),
                    target,
                })
            }
        }
    }

    /// Prepares the system, applies the load, waits for the deliveries and measures.
    #[allow(clippy::too_many_lines)]
    async fn run(&mut self, spec: Spec) -> anyhow::Result<Row> {
        self.counter += 1;
        let tag = format!("b{}{}{}", self.run_id, spec.scenario, self.counter);
        let label = spec.label();
        eprintln!("[{} {label}] preparing", spec.scenario);
        self.sink.reset();
        let system = self.start(&spec, &tag).await?;
        if let (Some(relay), Some(_)) = (&system.relay, spec.limited) {
            // A new dispatcher sends to limited subscriptions only once it has heard the
            // others for three heartbeats (README "Protecting endpoints"): (h) measures the
            // limits kept, not that start.
            let deadline = Instant::now() + Duration::from_secs(15);
            #[allow(clippy::cast_precision_loss)]
            while relay
                .dispatch_metric("relay_dispatcher_rate_limits_ready", &[])
                .await
                < spec.dispatchers as f64
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let events = Events {
            run: tag.clone(),
            size: self.opts.size,
            fail_every: spec.fail_every,
            families: spec.directory.map_or(0, |d| d.families() as u64),
            keys: spec.keys,
        };
        let before = self.proc_stats(&system);
        let accepted = Arc::new(AtomicU64::new(0));
        let planned = match spec.load {
            Load::Closed(n) => n,
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Load::Open { rate, seconds } => (rate * seconds as f64) as u64,
        };
        // The ordered subscription beside the others gets every event too.
        let fanout = spec.fanout as u64 + u64::from(spec.ordered_beside);
        let healthy = |n: u64| {
            if spec.fail_every > 0 {
                n - n.div_ceil(spec.fail_every)
            } else {
                n
            }
        };
        let started = Instant::now();
        let started_us = stats::unix_micros();
        let progress = {
            let accepted = Arc::clone(&accepted);
            let label = format!("{} {label}", spec.scenario);
            let expected = healthy(planned) * fanout;
            let sink = self.sink.requests_counter();
            let base = sink();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                    eprint!(
                        "\r[{label}] {:>6.1}s accepted {:>7}/{planned} delivered {:>7}/{expected}   ",
                        started.elapsed().as_secs_f64(),
                        accepted.load(Ordering::Relaxed),
                        sink() - base
                    );
                }
            })
        };
        let target = &system.target;
        let sent = match spec.load {
            Load::Closed(n) => {
                let in_flight = spec.in_flight.unwrap_or(load::concurrency(spec.driver));
                load::closed_loop(
                    spec.driver,
                    target,
                    &self.http,
                    &events,
                    n,
                    in_flight,
                    &accepted,
                )
                .await
            }
            Load::Open { rate, seconds } => {
                load::open_loop(
                    spec.driver,
                    target,
                    &self.http,
                    &events,
                    rate,
                    Duration::from_secs(seconds),
                    &accepted,
                )
                .await
            }
        };
        let sent_events = match spec.load {
            Load::Closed(n) => n,
            // Only accepted events can be delivered: a refused one (503 while ingest is at its
            // in-flight limit, or a broker nack) was never Relay's to deliver.
            Load::Open { .. } => sent.accepted,
        };
        let expected = healthy(sent_events) * fanout;
        // Wait for the deliveries; give up after 30 s without progress.
        let mut last = (self.sink.distinct_ok(), Instant::now());
        loop {
            let now = self.sink.distinct_ok();
            if now as u64 >= expected {
                break;
            }
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(30) {
                eprintln!("\n[{label}] no progress for 30 s; counting the rest as missing");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Late duplicates have a moment to show up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress.abort();
        let mut recording = self.sink.snapshot();
        let procs: Vec<ProcStats> = self
            .proc_stats(&system)
            .into_iter()
            .map(|mut p| {
                if let Some(b) = before.iter().find(|b| b.name == p.name) {
                    p.cpu_seconds -= b.cpu_seconds;
                }
                p
            })
            .collect();
        let seconds = recording
            .last_ok
            .map_or(0.0, |t| t.saturating_duration_since(started).as_secs_f64());
        let delivered = recording.distinct_ok as u64;
        let latency = Latency::of(&mut recording.latencies_us);
        let mut row = Row {
            scenario: spec.scenario.to_owned(),
            label,
            system: spec.system,
            driver: spec.driver,
            dispatchers: spec.dispatchers,
            fanout: spec.fanout,
            #[allow(clippy::cast_precision_loss)]
            accepted_per_s: per_second(sent.accepted as f64, sent.seconds),
            expected,
            delivered,
            missing: expected.saturating_sub(delivered),
            duplicates: recording.ok.saturating_sub(delivered),
            failed_requests: recording.failed,
            seconds,
            #[allow(clippy::cast_precision_loss)]
            deliveries_per_s: per_second(delivered as f64, seconds),
            #[allow(clippy::cast_precision_loss)]
            events_per_s: per_second(delivered as f64 / fanout as f64, seconds),
            latency,
            cpu_us_per_event: cpu_per_event(&procs, sent.accepted),
            procs,
            ratio: None,
            retry_tier: None,
            records_dropped: None,
            directory: None,
            limits: None,
            timeline: Timeline::of(&recording.arrivals_us, started_us),
            cdf: stats::cdf(&recording.latencies_us),
            sent,
        };
        if let Some((limited, rate)) = spec.limited {
            let mut limits = limit_figures(&recording, &row, started, limited, rate);
            let all: Vec<u64> = recording
                .limited_arrivals_us
                .values()
                .flatten()
                .copied()
                .collect();
            limits.timeline = Timeline::of(&all, started_us);
            row.limits = Some(limits);
        }
        if let Some(relay) = &system.relay {
            row.retry_tier = Some(
                relay
                    .dispatch_metric(
                        "relay_deliveries_total",
                        &["\"deferred\"", "\"circuit_open\"", "\"retry_scheduled\""],
                    )
                    .await,
            );
            row.records_dropped = Some(
                relay
                    .dispatch_metric("relay_attempt_records_dropped_total", &[])
                    .await,
            );
            if let Some(d) = spec.directory {
                row.directory = Some(DirectoryFigures {
                    subscriptions: d.subscriptions,
                    create_seconds: relay.create_seconds,
                    dispatch_ready_seconds: relay.ready_seconds("dispatch-1").unwrap_or(0.0),
                    dispatch_rss_mib: row
                        .procs
                        .iter()
                        .find(|p| p.name == "dispatch-1")
                        .map_or(0.0, |p| p.rss_mib),
                });
            }
        }
        eprintln!(
            "\r[{} {}] {:.1}s: {:.0} accepted/s, {:.0} deliveries/s, p50/p99 {:.1}/{:.1} ms, missing {}, duplicates {}, {:.0} CPU µs/event      ",
            row.scenario,
            row.label,
            row.seconds,
            row.accepted_per_s,
            row.deliveries_per_s,
            row.latency.p50_ms,
            row.latency.p99_ms,
            row.missing,
            row.duplicates,
            row.cpu_us_per_event.get("total").copied().unwrap_or(0.0),
        );
        if let Some(relay) = system.relay {
            let prefix = relay.prefix.clone();
            relay.stop(self.opts.keep_logs).await;
            self.delete_queues(&prefix).await;
        }
        if let Some(base) = system.base {
            base.stop(&self.amqp.0).await;
        }
        Ok(row)
    }

    fn proc_stats(&self, system: &Started) -> Vec<ProcStats> {
        let mut out = system.relay.as_ref().map(Relay::stats).unwrap_or_default();
        if let Some(base) = &system.base {
            out.push(base.stats());
        }
        for (name, pid) in &self.broker_pids {
            out.push(ProcStats::read(name, *pid));
        }
        out.push(ProcStats::read("bench", std::process::id()));
        out
    }

    /// Deletes every queue of a finished Relay run so the broker does not carry its messages
    /// (nothing consumes the archive queue yet) into the next run.
    async fn delete_queues(&self, prefix: &str) {
        let mut names: Vec<String> = [
            "ingress",
            "archive",
            "invalid",
            "dead",
            "attempts",
            "redeliver",
        ]
        .iter()
        .map(|n| format!("{prefix}{n}"))
        .collect();
        let broker = match &self.cluster {
            Some(cluster) => Some(cluster.node(0)),
            None => self.broker.as_ref(),
        };
        if let Some(broker) = broker {
            let listed = broker.ctl(&["list_queues", "-q", "name"]).await;
            names = listed
                .lines()
                .map(str::trim)
                .filter(|n| n.starts_with(prefix))
                .map(str::to_owned)
                .collect();
        }
        for name in names {
            if let Ok(channel) = self.amqp.0.create_channel().await {
                let _ = channel
                    .queue_delete(
                        name.as_str().into(),
                        lapin::options::QueueDeleteOptions::default(),
                    )
                    .await;
                let _ = channel.close(200, "done".into()).await;
            }
        }
    }

    fn report(&self, command_line: &str, total: Duration) -> anyhow::Result<()> {
        let now = time::OffsetDateTime::now_utc();
        let stamp = format!(
            "{:04}-{:02}-{:02}T{:02}{:02}{:02}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let commit = std::process::Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default();
        let targets = self.targets();
        let table = self.markdown_table();
        let cpu_table = self.cpu_table();
        let k_table = format!("{}{}", self.directory_table(), self.limits_table());
        println!("\n{table}\n{cpu_table}\n{k_table}\n{targets}");

        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join("target").join("relay-bench");
        std::fs::create_dir_all(&dir)?;
        let json_path = dir.join(format!("{stamp}.json"));
        let json = serde_json::json!({
            "date": stamp,
            "command": command_line,
            "cores": cores,
            "cpu": cpu,
            "load_average_at_end": load,
            "commit": commit,
            "quick": self.opts.quick,
            "total_seconds": total.as_secs_f64(),
            "rows": self.rows,
            "targets": targets,
        });
        std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
        eprintln!("wrote {}", json_path.display());
        let plots = self.plots(&dir, &stamp)?;
        for (_, plot) in &plots {
            eprintln!("wrote {}", plot.display());
        }

        if !self.opts.no_record {
            let docs = root.join("docs");
            let pictures = docs.join("bench");
            std::fs::create_dir_all(&pictures)?;
            // The latest picture of each scenario, which BENCHMARKS.md embeds.
            for (scenario, plot) in &plots {
                std::fs::copy(plot, pictures.join(format!("{scenario}.svg")))?;
            }
            let md_path = docs.join("BENCHMARKS.md");
            let mut md = std::fs::read_to_string(&md_path).unwrap_or_else(|_| {
                String::from(
                    "# Benchmarks\n\nProduced by `cargo run --release -p tests --bin relay-bench` \
                     (after `cargo build --release --bins`). Each section is one invocation; \
                     compare ratios within a section, not absolute figures across runs.\n",
                )
            });
            let _ = write!(
                md,
                "\n## {stamp}{}\n\n- command: `{command_line}`\n- machine: {cores} cores, {cpu}; \
                 broker on the same machine; load average {load} at the end\n- commit: {commit}\n\
                 - wall time: {:.0} s\n\n{table}\n{cpu_table}\n{k_table}\n{targets}\n",
                if self.opts.quick { " (quick)" } else { "" },
                total.as_secs_f64()
            );
            std::fs::write(&md_path, md)?;
            eprintln!("appended to {}", md_path.display());
        }
        Ok(())
    }

    /// One SVG per scenario in `dir`, named `<stamp>-<scenario>.svg`.
    fn plots(&self, dir: &Path, stamp: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let mut scenarios: Vec<&str> = self.rows.iter().map(|r| r.scenario.as_str()).collect();
        scenarios.dedup();
        let mut written = Vec::new();
        for scenario in scenarios {
            let series: Vec<plot::Series<'_>> = self
                .rows
                .iter()
                .filter(|r| r.scenario == scenario)
                .map(|r| plot::Series {
                    label: r.label.clone(),
                    baseline: r.system == System::Baseline,
                    bin_s: r.timeline.bin_s,
                    per_s: &r.timeline.per_s,
                    cdf: &r.cdf,
                })
                .collect();
            let path = dir.join(format!("{stamp}-{scenario}.svg"));
            let title = format!("relay-bench ({scenario}), {stamp}");
            plot::scenario(&path, &title, &series)?;
            written.push((scenario.to_owned(), path));
        }
        Ok(written)
    }

    fn markdown_table(&self) -> String {
        let mut t = String::from(
            "| scen. | system | driver | D | fan-out | events | accepted/s | deliveries/s | events/s e2e | ratio | p50 ms | p95 ms | p99 ms | missing | dup | peak RSS MiB | CPU s |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let procs = |f: &dyn Fn(&ProcStats) -> String| {
                r.procs
                    .iter()
                    .filter(|p| p.name != "bench")
                    .map(|p| format!("{} {}", short(&p.name), f(p)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let ratio = r
                .ratio
                .map_or(String::from("—"), |x| match r.scenario.as_str() {
                    "c" | "l" => format!("p99 {x:.2}×"),
                    "g" if r.label.contains("beside") => format!("p99 {x:.2}× alone"),
                    "f" => format!("{x:.2}× 1 shard"),
                    _ => format!("{x:.2}×"),
                });
            let system = match (r.system, r.directory.as_ref()) {
                (System::Relay, Some(d)) => format!("Relay, {} subs", d.subscriptions),
                // What tells the rows of (f) and (g) apart: shards, cluster, ordering.
                (System::Relay, None) if matches!(r.scenario.as_str(), "f" | "g") => {
                    format!("Relay,{}", r.label.trim_start_matches("Relay amqp"))
                }
                (System::Relay, None) => "Relay".into(),
                (System::Baseline, _) => "Baseline".into(),
            };
            let _ = writeln!(
                t,
                "| {} | {system} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
                r.scenario,
                r.driver.name(),
                if r.system == System::Relay {
                    r.dispatchers.to_string()
                } else {
                    "—".into()
                },
                r.fanout,
                if r.sent.refused > 0 {
                    format!("{} (+{} refused)", r.sent.accepted, r.sent.refused)
                } else {
                    r.sent.accepted.to_string()
                },
                r.accepted_per_s,
                r.deliveries_per_s,
                r.events_per_s,
                ratio,
                r.latency.p50_ms,
                r.latency.p95_ms,
                r.latency.p99_ms,
                r.missing,
                r.duplicates,
                procs(&|p| format!("{:.0}", p.peak_rss_mib)),
                procs(&|p| format!("{:.1}", p.cpu_seconds)),
            );
        }
        let (ok, bad) = self.sink.signatures();
        let _ = writeln!(
            t,
            "\nSignatures verified on a 1-in-{} sample: {ok} valid, {bad} invalid. \
             Ratio: (a), (b) events/s and deliveries/s vs the baseline driven the same way; \
             (c), (l) p99 vs the baseline; (k) events/s vs the 10-subscription run; \
             (i) events/s, (j) deliveries/s and (s) dispatcher CPU µs per delivery vs the \
             same run without the feature; (f) events/s vs 1 shard on the same broker; (g) \
             ordered events/s vs unordered.",
            self.opts.sample
        );
        t
    }

    /// Scenario (h)'s rate accuracy and cost; empty without it.
    fn limits_table(&self) -> String {
        let rows: Vec<(&Row, &LimitFigures)> = self
            .rows
            .iter()
            .filter_map(|r| r.limits.as_ref().map(|l| (r, l)))
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        let mut t = String::from(
            "\n| (h) limited | rate_limit | busiest 10 s window / limit (max) | quietest 10 s window / limit (min) | mean rate / limit (min) | deliveries/s (all) | to the unlimited | dispatch CPU µs/delivery | vs (b) |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for (r, l) in rows {
            let _ = writeln!(
                t,
                "| {} | {} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} | {:.1} | {} |",
                l.limited,
                l.rate_limit,
                l.busiest_window_max,
                l.quietest_window_min,
                l.mean_rate_min,
                r.deliveries_per_s,
                l.unlimited_deliveries_per_s,
                l.dispatch_us_per_delivery,
                r.ratio
                    .map_or_else(|| "(b) not run".into(), |x| format!("{x:.2}×")),
            );
        }
        t
    }

    /// CPU µs per accepted event, by process, for every row.
    fn cpu_table(&self) -> String {
        let columns = ["ingest", "dispatch", "api", "bare", "mq", "bench", "total"];
        let mut t = String::from(
            "CPU µs per event (utime+stime during the load ÷ events accepted; `bare` is the \
             baseline process, `bench` the load generator and sink):\n\n\
             | scen. | run | ingest | dispatch | api | bare | mq | bench | total |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| {
                    r.cpu_us_per_event
                        .get(*c)
                        .map_or(String::from("—"), |v| format!("{v:.0}"))
                })
                .collect();
            let _ = writeln!(
                t,
                "| {} | {} | {} |",
                r.scenario,
                r.label,
                cells.join(" | ")
            );
        }
        t
    }

    /// Scenario (k)'s directory figures and scenario (l)'s retry-tier counts.
    fn directory_table(&self) -> String {
        let mut t = String::new();
        let k: Vec<&Row> = self.rows.iter().filter(|r| r.directory.is_some()).collect();
        if !k.is_empty() {
            t.push_str(
                "Directory (k):\n\n| subscriptions | created in s | dispatcher start → ready s | \
                 dispatcher RSS MiB after | peak RSS MiB | events/s |\n|---|---|---|---|---|---|\n",
            );
            for r in k {
                let Some(d) = &r.directory else { continue };
                let peak = r
                    .procs
                    .iter()
                    .find(|p| p.name == "dispatch-1")
                    .map_or(0.0, |p| p.peak_rss_mib);
                let _ = writeln!(
                    t,
                    "| {} | {:.1} | {:.2} | {:.0} | {peak:.0} | {:.0} |",
                    d.subscriptions,
                    d.create_seconds,
                    d.dispatch_ready_seconds,
                    d.dispatch_rss_mib,
                    r.events_per_s
                );
            }
        }
        let l: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.scenario == "l" && r.system == System::Relay)
            .collect();
        if !l.is_empty() {
            t.push_str(
                "\nSlow endpoints (l): hand-offs to a retry tier (deferred, circuit open, retry \
                 scheduled; a delivery deferred twice counts twice): ",
            );
            let parts: Vec<String> = l
                .iter()
                .map(|r| format!("{}: {:.0}", r.label, r.retry_tier.unwrap_or(0.0)))
                .collect();
            t.push_str(&parts.join(", "));
            t.push('\n');
        }
        t
    }

    #[allow(clippy::too_many_lines)]
    fn targets(&self) -> String {
        let relay = |s: &'static str| {
            self.rows
                .iter()
                .filter(move |r| r.scenario == s && r.system == System::Relay)
        };
        let mark = |ok: bool| if ok { "met" } else { "MISSED" };
        let mut out = String::from("Targets:\n");
        for r in relay("a") {
            let x = r.ratio.unwrap_or(0.0);
            let _ = writeln!(
                out,
                "- (a) {} events/s ≥ 0.8× baseline: {x:.2}× — {}",
                r.driver.name(),
                mark(x >= 0.8)
            );
        }
        for r in relay("b") {
            let x = r.ratio.unwrap_or(0.0);
            let _ = writeln!(
                out,
                "- (b) fan-out 10 deliveries/s ≥ 0.8× baseline: {x:.2}× — {}",
                mark(x >= 0.8)
            );
            if let Some(d) = r.procs.iter().find(|p| p.name.starts_with("dispatch")) {
                let _ = writeln!(
                    out,
                    "- (b) dispatcher peak RSS ≤ 64 MiB: {:.0} MiB — {}",
                    d.peak_rss_mib,
                    mark(d.peak_rss_mib <= 64.0)
                );
            }
        }
        for l in relay("h").filter_map(|r| r.limits.as_ref()) {
            let _ = writeln!(
                out,
                "- (h) every limited subscription's busiest 10 s window ≤ 1.1× its limit: {:.3}× — {}",
                l.busiest_window_max,
                mark(l.busiest_window_max <= 1.1)
            );
            let _ = writeln!(
                out,
                "- (h) and its quietest 10 s window with work waiting ≥ 0.9×: {:.3}× — {}",
                l.quietest_window_min,
                mark(l.quietest_window_min >= 0.9)
            );
        }
        let a = relay("a").find(|r| r.driver == Driver::Amqp);
        if let (Some(a), Some(e)) = (a, relay("e").next()) {
            let x = ratio(e.deliveries_per_s, a.deliveries_per_s);
            let _ = writeln!(
                out,
                "- (e) healthy deliveries/s ≥ 0.7× (a): {x:.2}× — {}",
                mark(x >= 0.7)
            );
        }
        for r in relay("c") {
            let _ = writeln!(
                out,
                "- (c) p99 ≤ 50 ms via {} at {:.0}/s: {:.1} ms — {}",
                r.driver.name(),
                r.accepted_per_s,
                r.latency.p99_ms,
                mark(r.latency.p99_ms <= 50.0)
            );
        }
        for r in relay("k").filter(|r| r.directory.as_ref().is_some_and(|d| d.subscriptions > 10)) {
            let x = r.ratio.unwrap_or(0.0);
            let d = r.directory.as_ref();
            let _ = writeln!(
                out,
                "- (k) {} subscriptions ≥ 0.9× the events/s with 10: {x:.2}× — {}; created in {:.1} s, dispatcher ready (snapshot loaded and indexed) in {:.2} s, dispatcher RSS {:.0} MiB",
                d.map_or(0, |d| d.subscriptions),
                mark(x >= 0.9),
                d.map_or(0.0, |d| d.create_seconds),
                d.map_or(0.0, |d| d.dispatch_ready_seconds),
                d.map_or(0.0, |d| d.dispatch_rss_mib),
            );
        }
        // The recorder path is consumer-api's CPU (the archive and attempt records); the
        // broker's share of the archive copy is inside `mq` and not separable in one run.
        for r in relay("a").filter(|r| r.driver == Driver::Amqp) {
            let api = r.cpu_us_per_event.get("api").copied().unwrap_or(0.0);
            let _ = writeln!(
                out,
                "- (a) amqp recorder path (consumer-api CPU µs/event) ≤ half of 2026-11-29's {RECORDER_US_BEFORE} µs: {api:.1} µs — {}",
                mark(api <= RECORDER_US_BEFORE / 2.0)
            );
        }
        // The feature's row of (i), (j), (s) holds the ratio; its base row has none.
        for r in relay("i").filter(|r| r.ratio.is_some()) {
            let x = r.ratio.unwrap_or(0.0);
            let _ = writeln!(
                out,
                "- (i) events/s with a schema ≥ 0.9× without: {x:.2}× — {}",
                mark(x >= 0.9)
            );
        }
        for r in relay("j").filter(|r| r.ratio.is_some()) {
            let x = r.ratio.unwrap_or(0.0);
            let _ = writeln!(
                out,
                "- (j) fan-out 10 deliveries/s with payload filters ≥ 0.9× without: {x:.2}× — {}",
                mark(x >= 0.9)
            );
        }
        for r in relay("s").filter(|r| r.ratio.is_some()) {
            let us = r.cpu_us_per_event.get("dispatch").copied().unwrap_or(0.0);
            let _ = writeln!(
                out,
                "- (s) dispatcher CPU per delivery signing both: {us:.0} µs, {:.2}× v1's (no target: recorded)",
                r.ratio.unwrap_or(0.0)
            );
        }
        // CPU per event as shards grow is what docs/SCALING.md extrapolates from.
        for cluster in [false, true] {
            let f: Vec<&Row> = relay("f")
                .filter(|r| r.label.contains("cluster") == cluster)
                .collect();
            let total = |r: &Row| r.cpu_us_per_event.get("total").copied().unwrap_or(0.0);
            let Some(one) = f.first().map(|r| total(r)) else {
                continue;
            };
            for r in &f[1..] {
                let x = ratio(total(r), one);
                let _ = writeln!(
                    out,
                    "- (f) {}: total CPU µs per event within 15 % of 1 shard's: {:.0} vs {one:.0} µs ({x:.2}×), events/s {:.2}× — {}",
                    r.label,
                    total(r),
                    r.ratio.unwrap_or(0.0),
                    mark((x - 1.0).abs() <= 0.15)
                );
            }
        }
        let unordered = relay("g").find(|r| r.ratio.is_none());
        for r in relay("g").filter(|r| r.label.contains("beside")) {
            let x = r.ratio.unwrap_or(0.0);
            let _ = writeln!(
                out,
                "- (g) unordered deliveries' p99 beside an ordered subscription ≤ 2× alone: {x:.2}× ({:.1} ms) — {}",
                r.latency.p99_ms,
                mark(x <= 2.0)
            );
        }
        for r in relay("g").filter(|r| r.ratio.is_some() && !r.label.contains("beside")) {
            let _ = writeln!(
                out,
                "- (g) {}: events/s {:.2}× unordered, p99 {:.1} ms vs {:.1} ms (no target: recorded)",
                r.label,
                r.ratio.unwrap_or(0.0),
                r.latency.p99_ms,
                unordered.map_or(0.0, |u| u.latency.p99_ms)
            );
        }
        for r in relay("l") {
            let x = r.ratio.unwrap_or(0.0);
            let tier = r.retry_tier.unwrap_or(0.0);
            let _ = writeln!(
                out,
                "- (l) {} p99 ≤ 2× baseline: {x:.2}× ({:.0} ms) — {}; through a retry tier: {tier:.0} — {}",
                r.label,
                r.latency.p99_ms,
                mark(x <= 2.0),
                mark(tier == 0.0)
            );
        }
        let peak = |prefix: &str| {
            self.rows
                .iter()
                .filter(|r| r.system == System::Relay)
                .flat_map(|r| r.procs.iter())
                .filter(|p| p.name.starts_with(prefix))
                .map(|p| p.peak_rss_mib)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        };
        if let Some(i) = peak("ingest") {
            let _ = writeln!(
                out,
                "- ingest peak RSS ≤ 48 MiB: {i:.0} MiB — {}",
                mark(i <= 48.0)
            );
        }
        let lost: u64 = self.rows.iter().map(|r| r.missing).sum();
        let dups: u64 = self.rows.iter().map(|r| r.duplicates).sum();
        let (_, bad) = self.sink.signatures();
        let _ = writeln!(
            out,
            "- nothing lost, no duplicates, signatures valid: {lost} missing, {dups} duplicates, {bad} bad signatures — {}",
            mark(lost == 0 && dups == 0 && bad == 0)
        );
        let dropped: f64 = self.rows.iter().filter_map(|r| r.records_dropped).sum();
        let _ = writeln!(
            out,
            "- every attempt recorded (delivery log): {dropped:.0} records dropped — {}",
            mark(dropped == 0.0)
        );
        out
    }
}

/// consumer-api CPU µs per event in (a) over AMQP in the full run of 2026-11-29 (050050Z):
/// the recorder path's cost the speed issue asks to halve.
const RECORDER_US_BEFORE: f64 = 35.0;

/// Scenario (h)'s figures from what the sink recorded.
fn limit_figures(
    recording: &sink::Recording,
    row: &Row,
    started: Instant,
    limited: usize,
    rate: f64,
) -> LimitFigures {
    let window_us = 10_000_000;
    #[allow(clippy::cast_precision_loss)]
    let per_window = rate * 10.0;
    let (mut busiest_max, mut quietest_min, mut mean_min) = (0.0_f64, f64::MAX, f64::MAX);
    for at in recording.limited_arrivals_us.values() {
        let mut at = at.clone();
        at.sort_unstable();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let (most, fewest) = window_extremes(&at, window_us, per_window as usize);
        #[allow(clippy::cast_precision_loss)]
        {
            busiest_max = busiest_max.max(most as f64 / per_window);
            if let Some(fewest) = fewest {
                quietest_min = quietest_min.min(fewest as f64 / per_window);
            }
        }
        if let (Some(first), Some(last)) = (at.first(), at.last())
            && last > first
        {
            #[allow(clippy::cast_precision_loss)]
            let mean = (at.len() - 1) as f64 / ((last - first) as f64 / 1e6) / rate;
            mean_min = mean_min.min(mean);
        }
    }
    let unlimited = (row.fanout - limited) as u64 * (row.expected / row.fanout as u64);
    let seconds = recording
        .last_unlimited
        .map_or(0.0, |t| t.saturating_duration_since(started).as_secs_f64());
    #[allow(clippy::cast_precision_loss)]
    let dispatch_us_per_delivery = row
        .cpu_us_per_event
        .get("dispatch")
        .map_or(0.0, |us| us / row.fanout as f64);
    LimitFigures {
        limited,
        rate_limit: rate,
        busiest_window_max: busiest_max,
        quietest_window_min: if quietest_min == f64::MAX {
            0.0
        } else {
            quietest_min
        },
        mean_rate_min: if mean_min == f64::MAX { 0.0 } else { mean_min },
        #[allow(clippy::cast_precision_loss)]
        unlimited_deliveries_per_s: per_second(unlimited as f64, seconds),
        dispatch_us_per_delivery,
        timeline: Timeline::default(),
    }
}

/// CPU µs per event by process group, and their total.
fn cpu_per_event(procs: &[ProcStats], events: u64) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if events == 0 {
        return out;
    }
    #[allow(clippy::cast_precision_loss)]
    let per = |seconds: f64| seconds * 1e6 / events as f64;
    for p in procs {
        let group = match p.name.as_str() {
            "consumer-api" => "api",
            n if n.starts_with("rabbitmq") => "mq",
            n if n.starts_with("dispatch") => "dispatch",
            n => n,
        };
        *out.entry(group.to_owned()).or_insert(0.0) += per(p.cpu_seconds);
    }
    let total = out.values().sum();
    out.insert("total".into(), total);
    out
}

fn short(name: &str) -> String {
    match name {
        "consumer-api" => "api".into(),
        n if n.starts_with("rabbitmq") => n.replace("rabbitmq", "mq"),
        n => n.replace("dispatch-", "d"),
    }
}

#[cfg(test)]
mod tests {
    use super::window_extremes;

    #[test]
    fn the_quietest_window_is_one_with_a_window_s_worth_still_to_come() {
        // 1 s windows over arrivals (µs): a burst of 4, a lull, 2 more.
        let at = [0, 100_000, 200_000, 300_000, 2_000_000, 3_500_000];
        // Busiest: the burst. Quietest with 2 still to come: (0.3 s, 1.3 s], after the
        // burst, with none; with 3 to come it must start at 0.2 s at the latest.
        assert_eq!(window_extremes(&at, 1_000_000, 2), (4, Some(0)));
        assert_eq!(window_extremes(&at, 1_000_000, 3), (4, Some(1)));
        // Steady arrivals every 100 ms: 10 in any full second.
        let steady: Vec<u64> = (0..50).map(|i| i * 100_000).collect();
        assert_eq!(window_extremes(&steady, 1_000_000, 10), (10, Some(10)));
        // Never a window's worth to come: no quietest.
        assert_eq!(window_extremes(&at, 1_000_000, 6), (4, None));
        assert_eq!(window_extremes(&[], 1_000_000, 1), (0, None));
    }
}
