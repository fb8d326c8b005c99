//! The real Relay under test: the release binaries `consumer-api`, `relay dispatch` (×D) and
//! `relay ingest` started as child processes on free loopback ports, with their own topology
//! prefix and SQLite file, logs in a temporary directory.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};

use super::stats::ProcStats;

/// Publisher key the benchmark's ingest accepts.
pub const PUBLISHER_KEY: &str = "pk_bench_publisher_key";
/// Admin key of the benchmark's consumer-api.
pub const ADMIN_KEY: &str = "ak_bench_admin_key_0123456789";
/// Directory key the bench's dispatchers present to consumer-api.
pub const DIRECTORY_KEY: &str = "dk_bench_directory_key_0123456789";

/// One child process.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    base_url: String,
    spawned: Instant,
    /// From spawn to the first 200 on `/readyz`.
    ready_after: Option<Duration>,
}

/// A subscription to create before the dispatchers start: sink path and event type filters.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Full URL of the endpoint.
    pub url: String,
    /// Event type filters.
    pub event_types: Vec<String>,
    /// Owning consumer, if any.
    pub consumer: Option<String>,
    /// More fields of the creation body (`filter`, `signature_scheme`), if any.
    pub extra: Option<Value>,
}

/// A running Relay.
#[derive(Debug)]
pub struct Relay {
    /// `http://127.0.0.1:PORT` of ingest.
    pub ingest_url: String,
    /// The `events` exchange AMQP producers publish to.
    pub events_exchange: String,
    /// Topology prefix (unique per run).
    pub prefix: String,
    /// Secrets of the created subscriptions, in order.
    pub secrets: Vec<String>,
    /// How long creating the subscriptions took, in seconds.
    pub create_seconds: f64,
    procs: Vec<Proc>,
    dir: PathBuf,
    /// Some process runs under a wrapper (a profiler).
    wrapped: bool,
}

/// How long a process may take to become ready (a dispatcher loads the whole directory
/// first: 100,000 subscriptions take a while on a busy machine).
const READY_WAIT: Duration = Duration::from_secs(180);

/// Creates one subscription; returns its secret.
async fn create(
    http: &reqwest::Client,
    api_url: &str,
    sub: &Subscription,
) -> anyhow::Result<String> {
    let mut body = json!({ "url": sub.url, "event_types": sub.event_types });
    if let Some(consumer) = &sub.consumer {
        body["consumer"] = json!(consumer);
    }
    if let Some(Value::Object(extra)) = &sub.extra {
        for (k, v) in extra {
            body[k] = v.clone();
        }
    }
    let response = http
        .post(format!("{api_url}/v1/subscriptions"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if status != 201 {
        bail!("creating a subscription answered {status}: {body}");
    }
    Ok(body["secret"]
        .as_str()
        .context("secret in the answer")?
        .to_owned())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where `relay` and `consumer-api` are: next to this executable (target/release).
///
/// # Errors
/// They are not built.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("own executable path")?;
    let dir = exe.parent().context("executable directory")?.to_path_buf();
    for name in ["relay", "consumer-api"] {
        if !dir.join(name).exists() {
            bail!(
                "{} is not built; run `cargo build --release --bins` first",
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

/// Whether the compiled defaults know a `[security]` section (SSRF allow-list).
fn has_security_section() -> bool {
    include_str!("../../../shared/src/defaults.toml")
        .lines()
        .any(|l| l.trim() == "[security]")
}

/// What a run creates in consumer-api before the dispatchers and ingest start.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// Bodies of `POST /v1/event-types`, created first.
    pub event_types: &'a [Value],
    /// The subscriptions.
    pub subscriptions: &'a [Subscription],
}

impl Relay {
    /// Starts consumer-api, creates the `setup`'s event types and subscriptions, then starts
    /// `dispatchers` dispatchers and ingest, and waits until all are ready and every dispatcher
    /// loaded the subscriptions.
    ///
    /// # Errors
    /// A process did not start or become ready within 30 s.
    pub async fn start(
        bins: &Path,
        amqp_url: &str,
        prefix: &str,
        dispatchers: usize,
        setup: Setup<'_>,
        extra_env: &[(String, String)],
        wrappers: Wrappers<'_>,
    ) -> anyhow::Result<Relay> {
        let dir = std::env::temp_dir().join(format!("relay-bench-{prefix}"));
        std::fs::create_dir_all(&dir)?;
        let mut env: Vec<(String, String)> = vec![
            ("RELAY__AMQP__URL".into(), amqp_url.into()),
            ("RELAY__AMQP__PREFIX".into(), prefix.into()),
            ("RELAY__INGEST__PUBLISHER_KEYS".into(), PUBLISHER_KEY.into()),
            ("RELAY__API__ADMIN_KEY".into(), ADMIN_KEY.into()),
            ("RELAY__API__DIRECTORY_KEYS".into(), DIRECTORY_KEY.into()),
            (
                "RELAY__DISPATCH__DIRECTORY_KEY".into(),
                DIRECTORY_KEY.into(),
            ),
            (
                "RELAY__API__DATABASE_URL".into(),
                format!("sqlite://{}", dir.join("relay.db").display()),
            ),
            ("RELAY__LOG__LEVEL".into(), "warn".into()),
            ("RELAY__LOG__FORMAT".into(), "json".into()),
        ];
        if has_security_section() {
            env.push((
                "RELAY__SECURITY__ALLOWED_NETWORKS".into(),
                "127.0.0.0/8".into(),
            ));
            env.push(("RELAY__SECURITY__ALLOW_HTTP".into(), "true".into()));
        }
        env.extend(extra_env.iter().cloned());
        let http = reqwest::Client::new();
        let mut relay = Relay {
            ingest_url: String::new(),
            events_exchange: format!("{prefix}events"),
            prefix: prefix.to_owned(),
            secrets: Vec::new(),
            create_seconds: 0.0,
            procs: Vec::new(),
            dir,
            wrapped: wrappers.dispatch.is_some() || wrappers.ingest.is_some(),
        };

        let api_port = free_port()?;
        let api_url = format!("http://127.0.0.1:{api_port}");
        relay.spawn(
            "consumer-api",
            &bins.join("consumer-api"),
            &[],
            &env,
            &[("RELAY__API__LISTEN", format!("127.0.0.1:{api_port}"))],
            &api_url,
        )?;
        relay.wait_ready(&http).await?;
        // Before the dispatchers and ingest start, so they load the catalogue with it.
        for event_type in setup.event_types {
            let response = http
                .post(format!("{api_url}/v1/event-types"))
                .bearer_auth(ADMIN_KEY)
                .json(event_type)
                .send()
                .await?;
            let status = response.status();
            if status != 201 {
                bail!(
                    "creating an event type answered {status}: {}",
                    response.text().await?
                );
            }
        }
        let creating = Instant::now();
        relay.secrets = stream::iter(setup.subscriptions)
            .map(|sub| create(&http, &api_url, sub))
            .buffered(16)
            .try_collect()
            .await?;
        relay.create_seconds = creating.elapsed().as_secs_f64();

        env.push(("RELAY__DISPATCH__DIRECTORY_URL".into(), api_url.clone()));
        env.push(("RELAY__INGEST__CATALOGUE_URL".into(), api_url.clone()));
        env.push(("RELAY__INGEST__CATALOGUE_KEY".into(), DIRECTORY_KEY.into()));
        for i in 1..=dispatchers {
            let port = free_port()?;
            relay.spawn(
                &format!("dispatch-{i}"),
                &bins.join("relay"),
                &wrapped(wrappers.dispatch, &["dispatch"]),
                &env,
                &[("RELAY__DISPATCH__LISTEN", format!("127.0.0.1:{port}"))],
                &format!("http://127.0.0.1:{port}"),
            )?;
        }
        let ingest_port = free_port()?;
        relay.ingest_url = format!("http://127.0.0.1:{ingest_port}");
        let ingest_url = relay.ingest_url.clone();
        relay.spawn(
            "ingest",
            &bins.join("relay"),
            &wrapped(wrappers.ingest, &["ingest"]),
            &env,
            &[("RELAY__INGEST__LISTEN", format!("127.0.0.1:{ingest_port}"))],
            &ingest_url,
        )?;
        relay.wait_ready(&http).await?;
        Ok(relay)
    }

    fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        own_env: &[(&str, String)],
        base_url: &str,
    ) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        // A wrapped process: `args` starts with the wrapper command, then a `{}` for the program.
        let mut command = match args.iter().position(|a| *a == "{}") {
            Some(at) => {
                let mut c = Command::new(args[0]);
                c.args(&args[1..at]).arg(program).args(&args[at + 1..]);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        };
        let child = command
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(own_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            base_url: base_url.to_owned(),
            spawned: Instant::now(),
            ready_after: None,
        });
        Ok(())
    }

    /// Waits until every process answers 200 on `/readyz`.
    async fn wait_ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        for proc in self.procs.iter_mut().filter(|p| p.ready_after.is_none()) {
            loop {
                if let Ok(Some(status)) = proc.child.try_wait() {
                    bail!(
                        "{} exited ({status}); log: {}",
                        proc.name,
                        tail(&self.dir.join(format!("{}.log", proc.name)))
                    );
                }
                let answer = http.get(format!("{}/readyz", proc.base_url)).send().await;
                if answer.is_ok_and(|r| r.status() == 200) {
                    proc.ready_after = Some(proc.spawned.elapsed());
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("{} not ready after {} s", proc.name, READY_WAIT.as_secs());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Seconds from spawn to ready of the first process named `name`.
    #[must_use]
    pub fn ready_seconds(&self, name: &str) -> Option<f64> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.ready_after)
            .map(|d| d.as_secs_f64())
    }

    /// The sum over every dispatcher of the samples of `metric` whose labels contain one of
    /// `labels` (all samples when `labels` is empty), from their `/metrics`.
    pub async fn dispatch_metric(&self, metric: &str, labels: &[&str]) -> f64 {
        let http = reqwest::Client::new();
        let mut sum = 0.0;
        for proc in self.procs.iter().filter(|p| p.name.starts_with("dispatch")) {
            let Ok(answer) = http.get(format!("{}/metrics", proc.base_url)).send().await else {
                continue;
            };
            let text = answer.text().await.unwrap_or_default();
            sum += text
                .lines()
                .filter(|l| {
                    l.strip_prefix(metric)
                        .is_some_and(|rest| rest.starts_with(['{', ' ']))
                })
                .filter(|l| labels.is_empty() || labels.iter().any(|want| l.contains(want)))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        sum
    }

    /// Peak RSS and CPU seconds of every process so far.
    #[must_use]
    pub fn stats(&self) -> Vec<ProcStats> {
        self.procs
            .iter()
            .map(|p| ProcStats::read(&p.name, p.child.id()))
            .collect()
    }

    /// SIGTERM to every process, SIGKILL after 5 s (60 s for a wrapped one: a profiler
    /// writes its data at the end); removes the directory unless `keep`.
    pub async fn stop(mut self, keep: bool) {
        for proc in &self.procs {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(proc.child.id().to_string())
                .status();
        }
        let grace = if self.wrapped {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(5)
        };
        let deadline = tokio::time::Instant::now() + grace;
        for proc in &mut self.procs {
            while matches!(proc.child.try_wait(), Ok(None))
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
        self.procs.clear();
        if keep {
            eprintln!("  logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for proc in &mut self.procs {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }
}

/// Commands to run processes under (profilers), split on whitespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wrappers<'a> {
    /// For every dispatcher.
    pub dispatch: Option<&'a str>,
    /// For ingest.
    pub ingest: Option<&'a str>,
}

/// `wrapper… {} args…`, or just `args`.
fn wrapped<'a>(wrapper: Option<&'a str>, args: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = wrapper
        .map(|w| w.split_whitespace().collect())
        .unwrap_or_default();
    if !out.is_empty() {
        out.push("{}");
    }
    out.extend_from_slice(args);
    out
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
