//! Relay components as real OS processes, for the tests that kill or signal them.

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::system::System;

/// A child process, killed when dropped.
#[derive(Debug)]
struct Running(Child);

impl Running {
    /// Starts `bin args…` with exactly the environment `env` (plus `listen_var` set to
    /// `listen`) and waits until `http://{listen}/readyz` answers 200.
    async fn start(
        bin: &str,
        args: &[&str],
        env: &[(String, String)],
        (listen_var, listen): (&str, &str),
        stderr: Stdio,
    ) -> Self {
        let child = Command::new(crate::bin_path(bin))
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(listen_var, listen)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let process = Self(child);
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(format!("http://{listen}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return process;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{bin} process not ready in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pid fits in i32")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("poll the child") {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `relay dispatch` process, killed when dropped.
#[derive(Debug)]
pub struct DispatcherProcess {
    process: Running,
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
        let listen = format!("127.0.0.1:{}", free_port());
        let mut env = system.env.clone();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let process = Running::start(
            "relay",
            &["dispatch"],
            &env,
            ("RELAY__DISPATCH__LISTEN", &listen),
            stderr,
        )
        .await;
        Self {
            process,
            ops_url: format!("http://{listen}"),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Sends `signal` (e.g. "KILL", "TERM") with kill(1).
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Waits for the process to exit, up to `timeout`; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout).await
    }
}

/// A `consumer-api` process, killed when dropped.
#[derive(Debug)]
pub struct ApiProcess {
    process: Running,
    env: Vec<(String, String)>,
    listen: String,
}

impl ApiProcess {
    /// Starts `consumer-api` with the settings `env` (`RELAY__…` pairs) on `listen`
    /// (`127.0.0.1:PORT`) and waits until it is ready.
    pub async fn start(env: &[(String, String)], listen: &str) -> Self {
        let process = Running::start(
            "consumer-api",
            &[],
            env,
            ("RELAY__API__LISTEN", listen),
            Stdio::inherit(),
        )
        .await;
        Self {
            process,
            env: env.to_vec(),
            listen: listen.to_owned(),
        }
    }

    /// Kills it with SIGKILL (no drain at all) and starts it again on the same address and
    /// store; returns once it is ready.
    ///
    /// # Panics
    /// When it does not die within 10 s.
    pub async fn kill_and_restart(&mut self) {
        self.process.signal("KILL");
        assert!(
            self.process
                .wait_exit(Duration::from_secs(10))
                .await
                .is_some(),
            "consumer-api survived SIGKILL"
        );
        *self = Self::start(&self.env, &self.listen).await;
    }

    /// Stops it with SIGTERM and waits for its drain.
    ///
    /// # Panics
    /// When it does not exit within `timeout`, or exits with a failure.
    pub async fn stop(mut self, timeout: Duration) {
        self.process.signal("TERM");
        let status = self.process.wait_exit(timeout).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "consumer-api did not stop cleanly within {timeout:?}: {status:?}"
        );
    }
}
