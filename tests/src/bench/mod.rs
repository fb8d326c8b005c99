//! `relay-bench`: Relay end to end against a bare baseline, in one invocation, on one broker.
//!
//! A private RabbitMQ node, a fast local sink, the real release binaries as child processes
//! (consumer-api with SQLite, D dispatchers, ingest) and a bare lapin→reqwest baseline on the
//! same broker, sink and payloads. Scenarios:
//!
//! - **a** fan-out 1, 500-byte events, through each driver (AMQP, HTTP batch, HTTP single),
//!   and the baseline;
//! - **b** fan-out 10 (ten subscriptions match each event), and the baseline posting 10 times;
//! - **c** open loop at 50 % of (a)'s maximum, for latency, and the baseline at the same rate;
//! - **d** dispatchers D = 1, 2, 3;
//! - **e** 10 % of events go to an endpoint answering 500.
//!
//! Results go to stdout, `target/relay-bench/<date>.json` and `docs/BENCHMARKS.md`.

mod baseline;
mod load;
mod relay;
mod sink;
mod stats;

use std::{
    fmt::Write as _,
    path::PathBuf,
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
    stats::{Latency, ProcStats, per_second},
};
use crate::broker::PrivateBroker;

/// Command-line options of `relay-bench`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "relay-bench",
    about = "Relay end to end against a bare RabbitMQ→HTTP baseline, in one run.\n\
             Build the binaries first: cargo build --release --bins"
)]
pub struct Options {
    /// Scenarios to run: a, b, c, d, e (comma separated) or all.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Small sizes: the whole run takes about two minutes.
    #[arg(long)]
    pub quick: bool,
    /// Events per run in (a) [default 100000; --quick 15000].
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
    /// Drivers of (a): amqp, batch, single.
    #[arg(long, default_value = "amqp,batch,single")]
    pub drivers: String,
    /// Drivers of (c): amqp, single.
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

#[derive(Debug, Clone, Copy)]
struct Spec {
    scenario: &'static str,
    system: System,
    driver: Driver,
    dispatchers: usize,
    fanout: usize,
    load: Load,
    fail_every: u64,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    scenario: String,
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
    /// Relay's processes (CPU seconds during the load only) and the broker.
    procs: Vec<ProcStats>,
    /// Relay / baseline of the row's headline figure, when there is a baseline.
    ratio: Option<f64>,
}

struct Bench {
    opts: Options,
    bins: PathBuf,
    amqp_url: String,
    broker: Option<PrivateBroker>,
    broker_pid: Option<u32>,
    sink: Sink,
    http: reqwest::Client,
    amqp: (lapin::Connection, lapin::Channel),
    run_id: String,
    counter: usize,
    rows: Vec<Row>,
}

/// Runs the benchmark as `opts` says; prints, writes the JSON and appends to BENCHMARKS.md.
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
    let broker_pid = broker.as_ref().and_then(|b| find_pid(b.node()));
    let sink = Sink::start(opts.sample).await?;
    let amqp = load::confirm_channel(&amqp_url)
        .await
        .context("connecting the AMQP driver")?;
    let mut bench = Bench {
        bins,
        amqp_url,
        broker,
        broker_pid,
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

impl Bench {
    async fn scenarios(&mut self) -> anyhow::Result<()> {
        let o = self.opts.clone();
        let closed = |n| Load::Closed(n);
        let spec = |scenario, system, driver, fanout, load| Spec {
            scenario,
            system,
            driver,
            dispatchers: 1,
            fanout,
            load,
            fail_every: 0,
        };
        let mut amqp_max: Option<f64> = None;
        if o.wants("a") {
            let n = o.pick(o.events, 100_000, 15_000);
            let base = self
                .run(spec("a", System::Baseline, Driver::Amqp, 1, closed(n)))
                .await?;
            for driver in o.drivers.split(',').filter_map(|d| Driver::parse(d.trim())) {
                let mut row = self
                    .run(spec("a", System::Relay, driver, 1, closed(n)))
                    .await?;
                row.ratio = Some(row.events_per_s / base.events_per_s.max(f64::MIN_POSITIVE));
                if driver == Driver::Amqp {
                    amqp_max = Some(row.events_per_s);
                }
                self.push(row);
            }
            self.push(base);
        }
        if o.wants("b") {
            let n = o.pick(o.fanout_events, 20_000, 3_000);
            let base = self
                .run(spec("b", System::Baseline, Driver::Amqp, 10, closed(n)))
                .await?;
            let mut row = self
                .run(spec("b", System::Relay, Driver::Amqp, 10, closed(n)))
                .await?;
            row.ratio = Some(row.deliveries_per_s / base.deliveries_per_s.max(f64::MIN_POSITIVE));
            self.push(row);
            self.push(base);
        }
        if o.wants("c") {
            let rate = o
                .rate
                .or(amqp_max.map(|m| (m * 0.5).round()))
                .unwrap_or(1000.0);
            let seconds = o.pick(o.latency_seconds, 60, 15);
            let open = Load::Open { rate, seconds };
            let base = self
                .run(spec("c", System::Baseline, Driver::Amqp, 1, open))
                .await?;
            for driver in o
                .latency_drivers
                .split(',')
                .filter_map(|d| Driver::parse(d.trim()))
            {
                let mut row = self.run(spec("c", System::Relay, driver, 1, open)).await?;
                row.ratio = Some(row.latency.p99_ms / base.latency.p99_ms.max(f64::MIN_POSITIVE));
                self.push(row);
            }
            self.push(base);
        }
        if o.wants("d") {
            let n = o.pick(o.scale_events, 20_000, 6_000);
            for d in 1..=3 {
                let mut s = spec("d", System::Relay, Driver::Amqp, 1, closed(n));
                s.dispatchers = d;
                let row = self.run(s).await?;
                self.push(row);
            }
        }
        if o.wants("e") {
            let n = o.pick(o.failing_events, 30_000, 8_000);
            let mut s = spec("e", System::Relay, Driver::Amqp, 1, closed(n));
            s.fail_every = 10;
            let row = self.run(s).await?;
            self.push(row);
        }
        Ok(())
    }

    fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// Prepares the system, applies the load, waits for the deliveries and measures.
    async fn run(&mut self, spec: Spec) -> anyhow::Result<Row> {
        self.counter += 1;
        let tag = format!("b{}{}{}", self.run_id, spec.scenario, self.counter);
        let label = format!(
            "{} {:?} {} D={} fan-out={}",
            spec.scenario,
            spec.system,
            spec.driver.name(),
            spec.dispatchers,
            spec.fanout
        );
        eprintln!("[{label}] preparing");
        self.sink.reset();
        let mut relay = None;
        let mut base = None;
        let target = match spec.system {
            System::Relay => {
                let mut subs: Vec<(String, Subscription)> = (0..spec.fanout)
                    .map(|k| {
                        let path = format!("/r{k}");
                        let url = self.sink.url(&path);
                        let sub = Subscription {
                            url,
                            event_types: vec!["bench.ok".into()],
                        };
                        (path, sub)
                    })
                    .collect();
                if spec.fail_every > 0 {
                    subs.push((
                        "/fail".into(),
                        Subscription {
                            url: self.sink.url("/fail"),
                            event_types: vec!["bench.fail".into()],
                        },
                    ));
                }
                let only: Vec<Subscription> = subs.iter().map(|(_, s)| s.clone()).collect();
                let mut extra: Vec<(String, String)> = vec![(
                    "RELAY__DISPATCH__PREFETCH".into(),
                    self.opts.prefetch.to_string(),
                )];
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
                    &only,
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
                relay = Some(started);
                target
            }
            System::Baseline => {
                let urls = (0..spec.fanout)
                    .map(|k| self.sink.url(&format!("/b{k}")))
                    .collect();
                let queue = format!("{tag}.baseline");
                let started =
                    Baseline::start(&self.amqp_url, &queue, urls, self.opts.prefetch).await?;
                base = Some(started);
                Target {
                    ingest_url: String::new(),
                    amqp: Some((self.amqp.1.clone(), String::new(), queue)),
                }
            }
        };

        let events = Events {
            run: tag.clone(),
            size: self.opts.size,
            fail_every: spec.fail_every,
        };
        let before: Vec<ProcStats> = self.proc_stats(relay.as_ref());
        let accepted = Arc::new(AtomicU64::new(0));
        let planned = match spec.load {
            Load::Closed(n) => n,
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Load::Open { rate, seconds } => (rate * seconds as f64) as u64,
        };
        let fanout = spec.fanout as u64;
        let healthy = |n: u64| {
            if spec.fail_every > 0 {
                n - n.div_ceil(spec.fail_every)
            } else {
                n
            }
        };
        let started = Instant::now();
        let progress = {
            let accepted = Arc::clone(&accepted);
            let label = label.clone();
            let expected = healthy(planned) * fanout;
            let sink = self.sink_progress();
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
        let sent = match spec.load {
            Load::Closed(n) => {
                load::closed_loop(spec.driver, &target, &self.http, &events, n, &accepted).await
            }
            Load::Open { rate, seconds } => {
                load::open_loop(
                    spec.driver,
                    &target,
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
        let after = self.proc_stats(relay.as_ref());
        let procs = after
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
        #[allow(clippy::cast_precision_loss)]
        let row = Row {
            scenario: spec.scenario.to_owned(),
            system: spec.system,
            driver: spec.driver,
            dispatchers: spec.dispatchers,
            fanout: spec.fanout,
            accepted_per_s: per_second(sent.accepted as f64, sent.seconds),
            expected,
            delivered,
            missing: expected.saturating_sub(delivered),
            duplicates: recording.ok.saturating_sub(delivered),
            failed_requests: recording.failed,
            seconds,
            deliveries_per_s: per_second(delivered as f64, seconds),
            events_per_s: per_second(delivered as f64 / fanout as f64, seconds),
            latency: Latency::of(&mut recording.latencies_us),
            procs,
            ratio: None,
            sent,
        };
        eprintln!(
            "\r[{label}] {:.1}s: {:.0} accepted/s, {:.0} deliveries/s, p50/p99 {:.1}/{:.1} ms, missing {}, duplicates {}      ",
            row.seconds,
            row.accepted_per_s,
            row.deliveries_per_s,
            row.latency.p50_ms,
            row.latency.p99_ms,
            row.missing,
            row.duplicates
        );
        if let Some(relay) = relay {
            let prefix = relay.prefix.clone();
            relay.stop(self.opts.keep_logs).await;
            self.delete_queues(&prefix).await;
        }
        if let Some(base) = base {
            base.stop().await;
        }
        Ok(row)
    }

    fn sink_progress(&self) -> impl Fn() -> u64 + Send + 'static {
        self.sink.requests_counter()
    }

    fn proc_stats(&self, relay: Option<&Relay>) -> Vec<ProcStats> {
        let mut out = relay.map(Relay::stats).unwrap_or_default();
        if let Some(pid) = self.broker_pid {
            out.push(ProcStats::read("rabbitmq", pid));
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
        if let Some(broker) = &self.broker {
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
        let targets = self.targets();
        let table = self.markdown_table();
        println!("\n{table}\n{targets}");

        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join("target").join("relay-bench");
        std::fs::create_dir_all(&dir)?;
        let json_path = dir.join(format!("{stamp}.json"));
        let json = serde_json::json!({
            "date": stamp,
            "command": command_line,
            "cores": cores,
            "cpu": cpu,
            "commit": commit,
            "quick": self.opts.quick,
            "total_seconds": total.as_secs_f64(),
            "rows": self.rows,
            "targets": targets,
        });
        std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
        eprintln!("wrote {}", json_path.display());

        if !self.opts.no_record {
            let md_path = root.join("docs").join("BENCHMARKS.md");
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
                 broker on the same machine\n- commit: {commit}\n- wall time: {:.0} s\n\n{table}\n\
                 {targets}\n",
                if self.opts.quick { " (quick)" } else { "" },
                total.as_secs_f64()
            );
            std::fs::write(&md_path, md)?;
            eprintln!("appended to {}", md_path.display());
        }
        Ok(())
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
                    "c" => format!("p99 {x:.2}×"),
                    _ => format!("{x:.2}×"),
                });
            let _ = writeln!(
                t,
                "| {} | {:?} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
                r.scenario,
                r.system,
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
             Ratio: (a) events/s vs baseline, (b) deliveries/s vs baseline, (c) p99 vs baseline.",
            self.opts.sample
        );
        t
    }

    fn targets(&self) -> String {
        let find = |s: &str, system: System, driver: Option<Driver>| {
            self.rows.iter().find(|r| {
                r.scenario == s && r.system == system && driver.is_none_or(|d| r.driver == d)
            })
        };
        let mark = |ok: bool| if ok { "met" } else { "MISSED" };
        let mut out = String::from("Targets:\n");
        let a = find("a", System::Relay, Some(Driver::Amqp));
        if let Some(a) = a {
            for r in self
                .rows
                .iter()
                .filter(|r| r.scenario == "a" && r.system == System::Relay)
            {
                let ratio = r.ratio.unwrap_or(0.0);
                let _ = writeln!(
                    out,
                    "- (a) {} events/s ≥ 0.8× baseline: {ratio:.2}× — {}",
                    r.driver.name(),
                    mark(ratio >= 0.8)
                );
            }
            if let Some(b) = find("b", System::Relay, None) {
                let x = b.deliveries_per_s / a.deliveries_per_s.max(f64::MIN_POSITIVE);
                let _ = writeln!(
                    out,
                    "- (b) deliveries/s ≥ 4× (a): {x:.2}× — {}",
                    mark(x >= 4.0)
                );
            }
            if let Some(e) = find("e", System::Relay, None) {
                let x = e.deliveries_per_s / a.deliveries_per_s.max(f64::MIN_POSITIVE);
                let _ = writeln!(
                    out,
                    "- (e) healthy deliveries/s ≥ 0.7× (a): {x:.2}× — {}",
                    mark(x >= 0.7)
                );
            }
        }
        for r in self
            .rows
            .iter()
            .filter(|r| r.scenario == "c" && r.system == System::Relay)
        {
            let _ = writeln!(
                out,
                "- (c) p99 ≤ 50 ms via {}: {:.1} ms — {}",
                r.driver.name(),
                r.latency.p99_ms,
                mark(r.latency.p99_ms <= 50.0)
            );
        }
        let peak = |prefix: &str, scenarios: &[&str]| {
            self.rows
                .iter()
                .filter(|r| r.system == System::Relay && scenarios.contains(&r.scenario.as_str()))
                .flat_map(|r| r.procs.iter())
                .filter(|p| p.name.starts_with(prefix))
                .map(|p| p.peak_rss_mib)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        };
        if let Some(d) = peak("dispatch", &["a", "b"]) {
            let _ = writeln!(
                out,
                "- dispatcher peak RSS ≤ 64 MiB in (a), (b): {d:.0} MiB — {}",
                mark(d <= 64.0)
            );
        }
        if let Some(i) = peak("ingest", &["a", "b", "c", "d", "e"]) {
            let _ = writeln!(
                out,
                "- ingest peak RSS ≤ 48 MiB: {i:.0} MiB — {}",
                mark(i <= 48.0)
            );
        }
        let lost: u64 = self.rows.iter().map(|r| r.missing).sum();
        let _ = writeln!(
            out,
            "- nothing lost: {lost} missing deliveries in all runs — {}",
            mark(lost == 0)
        );
        out
    }
}

fn short(name: &str) -> String {
    match name {
        "consumer-api" => "api".into(),
        "rabbitmq" => "mq".into(),
        n => n.replace("dispatch-", "d"),
    }
}
