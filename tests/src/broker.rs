//! RabbitMQ for tests: a private node per test when the test needs to stop the broker, or the
//! shared broker that `deploy/local/test.sh` starts for everything else.
//!
//! A [`PrivateBroker`] is a real `rabbitmq-server` child process named `relaytest-…@localhost`,
//! listening on free loopback ports, with its data, logs, configuration and Erlang cookie in a
//! temporary directory of its own. It never touches `/var/lib/rabbitmq` or `~/.erlang.cookie`.
//! Starting one takes about five seconds (Erlang boot plus RabbitMQ's module scans), so tests
//! that only need *a* broker should use [`shared_amqp_url`] with their own topology prefix.
//!
//! The node runs with `RABBITMQ_ALLOW_INPUT`, which makes the start script `exec` the Erlang VM
//! (so the child is the VM itself) and gives the VM an input that is a pipe held by the test
//! process: if the test process dies without running destructors, the pipe closes and the node
//! halts on end of input instead of lingering.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{SocketAddr, TcpListener},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// Environment variable holding the URL of the broker shared by the whole test run.
pub const SHARED_URL_ENV: &str = "RELAY_TEST_AMQP_URL";

/// Optional override of the directory holding `rabbitmq-server` and `rabbitmqctl`.
pub const BIN_DIR_ENV: &str = "RELAY_TEST_RABBITMQ_BIN_DIR";

/// How long a node may take to accept AMQP connections after a start or `start_app`; a start
/// that takes longer is abandoned and tried again (see [`START_ATTEMPTS`]).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a killed cluster node may take to come back before it is killed and started
/// again: it boots while its peers carry the test's load and syncs its queues from them
/// (15-45 s seen on a loaded 2-core machine; now and then a boot stalls for minutes).
const RESTART_TIMEOUT: Duration = Duration::from_secs(90);

/// How long `rabbitmqctl` may take for one command (`stop_app` was seen taking over a
/// minute on the loaded machine).
const CTL_TIMEOUT: Duration = Duration::from_secs(180);

/// How many times a start (or a restart) is tried: a port picked as free can be taken
/// meanwhile, and on a loaded machine a boot now and then stalls before it logs anything.
const START_ATTEMPTS: u32 = 3;

/// Ports `rabbitmqctl` uses by default for its own distribution listener; never picked.
const CTL_DEFAULT_PORTS: std::ops::RangeInclusive<u16> = 35672..=35682;

/// Distinguishes the nodes one test process starts.
static NODE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The URL of the broker shared by the test run, from `RELAY_TEST_AMQP_URL`.
///
/// # Panics
/// When the variable is not set, with a message saying how to run the tests.
#[must_use]
pub fn shared_amqp_url() -> String {
    match std::env::var(SHARED_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{SHARED_URL_ENV} is not set: run the tests with ./deploy/local/test.sh (it starts a \
             private RabbitMQ and sets it), or point {SHARED_URL_ENV} at a broker you started, \
             e.g. amqp://guest:guest@127.0.0.1:5672/%2f from ./deploy/local/broker.sh"
        ),
    }
}

/// How a private node is configured beyond its ports and directories.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// The Erlang cookie; nodes of one cluster share it. A random one when `None`.
    pub cookie: Option<String>,
    /// Contents of `advanced.config`; `[].` when empty.
    pub advanced_config: String,
    /// Lines appended to `rabbitmq.conf`.
    pub extra_conf: String,
    /// Enables the management plugin, its HTTP API on a free loopback port
    /// ([`PrivateBroker::management_url`]), statistics collected every second.
    pub management: bool,
}

/// A RabbitMQ node of its own for one test; killed and deleted on drop.
#[derive(Debug)]
pub struct PrivateBroker {
    node: String,
    port: u16,
    management_port: Option<u16>,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    child: Mutex<Child>,
}

/// Why a start attempt did not give a running node.
enum StartFailure {
    /// The node exited; `port_taken` when its log says a port was in use (worth a retry).
    Exited { port_taken: bool, detail: String },
    /// The node did not accept AMQP connections in time.
    TimedOut { detail: String },
}

impl PrivateBroker {
    /// Starts a fresh node on free loopback ports and waits until it accepts AMQP connections.
    ///
    /// # Panics
    /// When RabbitMQ is not installed, or the node does not come up in three tries of 90 s;
    /// the message carries the tail of the node's log.
    pub async fn start() -> PrivateBroker {
        Self::start_with(&NodeConfig::default()).await
    }

    /// As [`PrivateBroker::start`], with `config`.
    ///
    /// # Panics
    /// As [`PrivateBroker::start`].
    pub async fn start_with(config: &NodeConfig) -> PrivateBroker {
        for attempt in 1..=START_ATTEMPTS {
            let broker = Self::spawn(config);
            match broker.wait_ready(START_TIMEOUT).await {
                Ok(()) => return broker,
                Err(StartFailure::Exited {
                    port_taken: true, ..
                }) if attempt < START_ATTEMPTS => {
                    // A port we saw free was taken before the node bound it: new ports.
                    drop(broker);
                }
                Err(StartFailure::TimedOut { .. }) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "private RabbitMQ node {} stalled while booting; starting another",
                        broker.node
                    );
                    drop(broker);
                }
                Err(StartFailure::Exited { detail, .. } | StartFailure::TimedOut { detail }) => {
                    panic!(
                        "private RabbitMQ node {} did not start: {detail}",
                        broker.node
                    )
                }
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    #[must_use]
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `http://guest:guest@127.0.0.1:PORT` of the management API, for a node started with
    /// [`NodeConfig::management`].
    ///
    /// # Panics
    /// When the node was started without it.
    #[must_use]
    pub fn management_url(&self) -> String {
        let port = self
            .management_port
            .expect("a node started with NodeConfig::management");
        format!("http://guest:guest@127.0.0.1:{port}")
    }

    /// The AMQP port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name, `relaytest-…@localhost`.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Stops the RabbitMQ application (`rabbitmqctl stop_app`): every client connection is
    /// closed by the broker and the AMQP port refuses connections; the node and its data stay.
    /// Returns once the port refuses connections.
    ///
    /// # Panics
    /// When `rabbitmqctl` fails or the port still accepts connections 10 s later.
    pub async fn stop_app(&self) {
        self.ctl(&["stop_app"]).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.port_open().await {
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} still accepts connections on port {} after stop_app",
                self.node,
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the RabbitMQ application again (`rabbitmqctl start_app`) and waits until it
    /// accepts AMQP connections. Durable queues and their persistent messages are back.
    ///
    /// # Panics
    /// When `rabbitmqctl` fails or the node does not accept connections within 90 s.
    pub async fn start_app(&self) {
        self.ctl(&["start_app"]).await;
        if let Err(StartFailure::Exited { detail, .. } | StartFailure::TimedOut { detail }) =
            self.wait_ready(START_TIMEOUT).await
        {
            panic!(
                "RabbitMQ node {} did not come back after start_app: {detail}",
                self.node
            );
        }
    }

    /// SIGKILLs the node's Erlang VM (a crash: no clean shutdown) and reaps it; its data stays.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the node's VM is running (not killed, not exited).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.exited().is_none()
    }

    /// Starts a killed (or exited) node again with the same name, ports and data, and waits
    /// until it accepts AMQP connections.
    ///
    /// # Panics
    /// When the node is still running, or does not come back in three tries of 90 s.
    pub async fn restart(&self) {
        assert!(
            !self.is_running(),
            "restart of node {} while it runs",
            self.node
        );
        for attempt in 1..=START_ATTEMPTS {
            let child = spawn_vm(&self.dir, &self.env);
            *self.child.lock().unwrap_or_else(PoisonError::into_inner) = child;
            match self.wait_ready(RESTART_TIMEOUT).await {
                Ok(()) => return,
                Err(StartFailure::Exited { detail, .. } | StartFailure::TimedOut { detail })
                    if attempt == START_ATTEMPTS =>
                {
                    panic!("RabbitMQ node {} did not restart: {detail}", self.node);
                }
                Err(_) => {
                    eprintln!(
                        "RabbitMQ node {} did not come back within {RESTART_TIMEOUT:?} \
                         (try {attempt}); killing and starting it again",
                        self.node
                    );
                    self.kill();
                }
            }
        }
    }

    /// Runs `rabbitmqctl -n NODE ARGS…` against this node and returns its standard output
    /// (e.g. `ctl(&["list_queues", "name", "messages"])`).
    ///
    /// # Panics
    /// When the command fails or takes more than 180 s.
    pub async fn ctl(&self, args: &[&str]) -> String {
        self.tool("rabbitmqctl", args).await
    }

    /// Runs RabbitMQ's command-line tool `tool` (`rabbitmqctl`, `rabbitmq-queues`, …) with
    /// `-n NODE ARGS…` against this node and returns its standard output.
    ///
    /// # Panics
    /// When the command fails or takes more than 180 s.
    pub async fn tool(&self, tool: &str, args: &[&str]) -> String {
        let mut command = tokio::process::Command::new(rabbitmq_bin(tool));
        command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(CTL_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(err)) => panic!("cannot run {tool} {args:?}: {err}"),
            Err(_) => panic!("{tool} {args:?} on {} took over {CTL_TIMEOUT:?}", self.node),
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{tool} {args:?} on {} failed ({}):\n{stdout}\n{}",
            self.node,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Creates the node's directory and files and spawns it; does not wait.
    fn spawn(config: &NodeConfig) -> PrivateBroker {
        let unique = format!(
            "{}-{}-{:04x}",
            std::process::id(),
            NODE_COUNTER.fetch_add(1, Ordering::Relaxed),
            random_u16()
        );
        let node = format!("relaytest-{unique}@localhost");
        let dir = std::env::temp_dir().join(format!("relaytest-{unique}"));
        let ports = free_ports(if config.management { 3 } else { 2 });
        let (port, dist_port, management_port) = (ports[0], ports[1], ports.get(2).copied());
        let env = node_files(&dir, &node, port, dist_port, management_port, config);
        let child = spawn_vm(&dir, &env);
        PrivateBroker {
            node,
            port,
            management_port,
            dir,
            env,
            child: Mutex::new(child),
        }
    }

    /// Waits until an AMQP handshake succeeds, the node exits, or `timeout` passes.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), StartFailure> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                let log = self.log_tail();
                return Err(StartFailure::Exited {
                    port_taken: port_was_taken(&log),
                    detail: format!("the node exited ({status}); {log}"),
                });
            }
            if self.port_open().await {
                let url = self.amqp_url();
                let connect =
                    lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
                if let Ok(Ok(connection)) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                {
                    let _ = connection.close(200, "ready".into()).await;
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::TimedOut {
                    detail: format!(
                        "no AMQP handshake on port {} within {timeout:?}; {}",
                        self.port,
                        self.log_tail()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The exit status if the node process has ended.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        child.try_wait().ok().flatten()
    }

    /// Whether something accepts TCP connections on the AMQP port.
    async fn port_open(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let connect = tokio::net::TcpStream::connect(addr);
        matches!(
            tokio::time::timeout(Duration::from_millis(500), connect).await,
            Ok(Ok(_))
        )
    }

    /// The last lines of the node's log and of its standard output, for failure messages.
    fn log_tail(&self) -> String {
        let mut out = String::new();
        for path in [
            self.dir.join("log").join(format!("{}.log", self.node)),
            self.dir.join("stdout.log"),
        ] {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            let _ = write!(
                out,
                "\n--- last lines of {} ---\n{}",
                path.display(),
                tail.join("\n")
            );
        }
        out
    }
}

/// Whether a node's log says a port was taken between our check and its bind: the AMQP
/// listener's `eaddrinuse`, or the prelaunch check of the distribution port (which stops the
/// node before any listener, with `dist_port_already_used`).
fn port_was_taken(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    [
        "eaddrinuse",
        "dist_port_already_used",
        "could not bind to distribution port",
    ]
    .iter()
    .any(|marker| log.contains(marker))
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // SIGKILL the VM (the child is the VM itself, see the module docs) and reap it, so the
        // directory is no longer written to when it is removed. epmd keeps running; it drops
        // the node's registration when the VM's connection to it closes.
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Spawns the node's VM in `dir` with its environment; does not wait.
fn spawn_vm(dir: &Path, env: &[(&'static str, String)]) -> Child {
    let stdout = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stdout.log"))
        .expect("open stdout.log");
    let stderr = stdout.try_clone().expect("clone stdout.log handle");
    Command::new(rabbitmq_bin("rabbitmq-server"))
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .current_dir(dir)
        // Held open for the node's life; see the module docs.
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|err| {
            let _ = fs::remove_dir_all(dir);
            panic!(
                "cannot run {}: {err}. Install RabbitMQ (apt-get install rabbitmq-server, or \
                 ./deploy/local/broker.sh does it) or set {BIN_DIR_ENV}",
                rabbitmq_bin("rabbitmq-server").display()
            )
        })
}

/// Writes the node's directories, configuration and cookie; returns its environment.
fn node_files(
    dir: &Path,
    node: &str,
    port: u16,
    dist_port: u16,
    management_port: Option<u16>,
    config: &NodeConfig,
) -> Vec<(&'static str, String)> {
    let home = dir.join("home");
    for sub in ["home", "mnesia", "log"] {
        fs::create_dir_all(dir.join(sub)).expect("create the node's directories");
    }
    let write = |name: &str, text: &str| {
        fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    };
    // The consistent-hash exchange (sharded ingress); the management listener only when asked
    // for, as it slows the boot.
    let management = match management_port {
        Some(p) => {
            write(
                "enabled_plugins",
                "[rabbitmq_consistent_hash_exchange,rabbitmq_management].\n",
            );
            format!(
                "management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {p}\n\
                 collect_statistics_interval = 1000\n"
            )
        }
        None => {
            write("enabled_plugins", "[rabbitmq_consistent_hash_exchange].\n");
            String::new()
        }
    };
    write(
        "rabbitmq.conf",
        &format!(
            "# Written by tests/src/broker.rs for a throwaway test node.\n\
             listeners.tcp.default = 127.0.0.1:{port}\n\
             loopback_users.guest = true\n\
             log.console = false\n\
             log.file.level = info\n\
             disk_free_limit.absolute = 10MB\n{management}{}",
            config.extra_conf
        ),
    );
    if config.advanced_config.trim().is_empty() {
        write("advanced.config", "[].\n");
    } else {
        write("advanced.config", &config.advanced_config);
    }
    // Replaces /etc/rabbitmq/rabbitmq-env.conf, which must not leak into test nodes.
    write("rabbitmq-env.conf", "");

    // A cookie of the node's own, found through HOME by the node and by rabbitmqctl alike.
    let cookie = config.cookie.clone().unwrap_or_else(random_cookie);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(home.join(".erlang.cookie"))
        .expect("create the node's Erlang cookie");
    file.write_all(cookie.as_bytes())
        .expect("write the node's Erlang cookie");

    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    let loopback_dist = "-kernel inet_dist_use_interface {127,0,0,1}".to_owned();
    vec![
        ("HOME", path(home)),
        ("RABBITMQ_NODENAME", node.to_owned()),
        ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".to_owned()),
        ("RABBITMQ_NODE_PORT", port.to_string()),
        ("RABBITMQ_DIST_PORT", dist_port.to_string()),
        ("RABBITMQ_MNESIA_BASE", path(dir.join("mnesia"))),
        ("RABBITMQ_LOG_BASE", path(dir.join("log"))),
        ("RABBITMQ_PID_FILE", path(dir.join("rabbitmq.pid"))),
        (
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            path(dir.join("enabled_plugins")),
        ),
        ("RABBITMQ_CONFIG_FILE", path(dir.join("rabbitmq.conf"))),
        (
            "RABBITMQ_ADVANCED_CONFIG_FILE",
            path(dir.join("advanced.config")),
        ),
        (
            "RABBITMQ_CONF_ENV_FILE",
            path(dir.join("rabbitmq-env.conf")),
        ),
        // `exec` the VM and let end of input halt it (module docs).
        ("RABBITMQ_ALLOW_INPUT", "true".to_owned()),
        // Distribution (node and CLI) on loopback only; the CLI on an ephemeral port so
        // concurrent rabbitmqctl calls never compete for its default 35672-35682 range.
        ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", loopback_dist.clone()),
        ("RABBITMQ_CTL_ERL_ARGS", loopback_dist),
        ("RABBITMQ_CTL_DIST_PORT_MIN", "0".to_owned()),
        ("RABBITMQ_CTL_DIST_PORT_MAX", "0".to_owned()),
        // If this node is the one that starts epmd, epmd listens on loopback only.
        ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
        ("ERL_CRASH_DUMP", path(dir.join("erl_crash.dump"))),
    ]
}

/// A random Erlang cookie.
pub(crate) fn random_cookie() -> String {
    (0..20)
        .map(|_| char::from(b'A' + (random_u16() % 26) as u8))
        .collect()
}

/// `n` distinct free ports on 127.0.0.1 (AMQP, Erlang distribution, management).
fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        if !CTL_DEFAULT_PORTS.contains(&port) {
            ports.push(port);
        }
        // Held until all are chosen so they differ.
        held.push(listener);
    }
    ports
}

/// A random number from the operating system.
fn random_u16() -> u16 {
    let mut bytes = [0_u8; 2];
    getrandom::fill(&mut bytes).expect("operating system randomness");
    u16::from_le_bytes(bytes)
}

/// The path of a RabbitMQ script.
///
/// Debian's `/usr/sbin/rabbitmq-*` wrappers switch to the `rabbitmq` user when run as root
/// (and would then use that user's cookie), so the real scripts in `/usr/lib/rabbitmq/bin`
/// are preferred; elsewhere the name is looked up on `PATH`.
fn rabbitmq_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir).join(name);
    }
    let debian = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_distribution_port_is_worth_a_retry() {
        // What RabbitMQ 3.10 prints when the distribution port was taken (Debian 12's node,
        // started with RABBITMQ_DIST_PORT on a port another process listened on).
        let prelaunch = "BOOT FAILED\n===========\nERROR: could not bind to distribution port \
            33327 on host localhost. It could be in use by another process or cannot be bound \
            to (e.g. due to a security policy)\n\nKernel pid terminated (application_controller) \
            ({application_start_failure,rabbitmq_prelaunch,{{shutdown,{failed_to_start_child,\
            prelaunch,{dist_port_already_used,33327,not_erlang,\"localhost\"}}}}})";
        assert!(port_was_taken(prelaunch));
        assert!(port_was_taken(
            "{listen_error, 35555, eaddrinuse} starting the AMQP listener"
        ));
        assert!(!port_was_taken(
            "BOOT FAILED: {error, enoent, \"rabbitmq.conf\"}"
        ));
    }

    async fn connect(url: &str) -> lapin::Result<lapin::Connection> {
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await
    }

    #[tokio::test]
    async fn private_broker_stops_and_starts_its_app() {
        let started = Instant::now();
        let broker = PrivateBroker::start().await;
        eprintln!("node {} up in {:?}", broker.node(), started.elapsed());
        assert!(
            broker
                .amqp_url()
                .ends_with(&format!(":{}/%2f", broker.port()))
        );

        let connection = connect(&broker.amqp_url())
            .await
            .expect("connect to a fresh node");
        assert!(connection.status().connected());

        let stopping = Instant::now();
        broker.stop_app().await;
        eprintln!("stop_app took {:?}", stopping.elapsed());
        assert!(
            connect(&broker.amqp_url()).await.is_err(),
            "connect must fail after stop_app"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while connection.status().connected() {
            assert!(
                Instant::now() < deadline,
                "stop_app must drop open connections"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let starting = Instant::now();
        broker.start_app().await;
        eprintln!("start_app took {:?}", starting.elapsed());
        let again = connect(&broker.amqp_url())
            .await
            .expect("connect after start_app");
        again.close(200, "bye".into()).await.expect("close");

        let dir = broker.dir.clone();
        let pid = broker.child.lock().unwrap().id();
        drop(broker);
        assert!(!dir.exists(), "drop removes the node's directory");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "drop kills and reaps the node"
        );
    }
}
