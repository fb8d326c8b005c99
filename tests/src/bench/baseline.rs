//! Starting and stopping the bare baseline process (`relay-bench-bare`, see [`super::bare`]):
//! a quorum queue (as Relay's ingress), an HTTP front publishing to it with confirms, and a
//! consumer with the same prefetch POSTing to the sink.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use lapin::options::QueueDeleteOptions;

use super::stats::ProcStats;

/// A running baseline process.
#[derive(Debug)]
pub struct Baseline {
    /// The queue AMQP producers publish to (default exchange, routing key = queue name).
    pub queue: String,
    /// `http://127.0.0.1:PORT` of its HTTP front.
    pub url: String,
    child: Child,
}

impl Baseline {
    /// Starts `relay-bench-bare` from `bins` and waits until it consumes.
    ///
    /// # Errors
    /// It did not start or become ready within 30 s.
    pub async fn start(
        bins: &Path,
        amqp_url: &str,
        queue: &str,
        sink_urls: &[String],
        prefetch: u16,
    ) -> anyhow::Result<Baseline> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = Command::new(bins.join("relay-bench-bare"));
        command
            .args(["--amqp-url", amqp_url, "--queue", queue])
            .args(["--prefetch", &prefetch.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")]);
        for url in sink_urls {
            command.args(["--sink", url]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting relay-bench-bare")?;
        let mut base = Baseline {
            queue: queue.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = base.child.try_wait() {
                bail!("relay-bench-bare exited ({status})");
            }
            let answer = http.get(format!("{}/readyz", base.url)).send().await;
            if answer.is_ok_and(|r| r.status() == 200) {
                return Ok(base);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("relay-bench-bare not ready after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak RSS and CPU seconds so far.
    #[must_use]
    pub fn stats(&self) -> ProcStats {
        ProcStats::read("bare", self.child.id())
    }

    /// Stops the process and deletes the queue over `connection`.
    pub async fn stop(mut self, connection: &lapin::Connection) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel.close(200, "done".into()).await;
        }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
