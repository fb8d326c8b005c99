//! Relay components as real OS processes, for the tests that kill or signal them.

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::system::System;

/// A `relay dispatch` process, killed when dropped.
#[derive(Debug)]
pub struct DispatcherProcess {
    child: Child,
    /// `http://127.0.0.1:PORT` of its ops routes.
    pub ops_url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl DispatcherProcess {
    /// Starts `relay dispatch` with `system`'s settings (plus `extra` overrides) and waits
    /// until it is ready (directory loaded, consuming).
    pub async fn start(system: &System, extra: &[(&str, &str)]) -> Self {
        Self::spawn(system, extra, Stdio::inherit()).await
    }

    /// Like [`DispatcherProcess::start`], with the process's log (its stderr) written to `log`.
    ///
    /// # Panics
    /// When `log` cannot be created.
    pub async fn start_logged(system: &System, extra: &[(&str, &str)], log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("create the dispatcher's log file");
        Self::spawn(system, extra, Stdio::from(file)).await
    }

    async fn spawn(system: &System, extra: &[(&str, &str)], stderr: Stdio) -> Self {
        let port = free_port();
        let mut command = Command::new(crate::bin_path("relay"));
        command
            .arg("dispatch")
            .env_clear()
            .envs(system.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RELAY__DISPATCH__LISTEN", format!("127.0.0.1:{port}"))
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command.spawn().expect("start relay dispatch");
        let process = Self {
            child,
            ops_url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = system
                .http
                .get(format!("{}/readyz", process.ops_url))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return process;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "dispatcher process not ready in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Sends `signal` (e.g. "KILL", "TERM") with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, up to `timeout`; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for DispatcherProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
