//! A private three-node RabbitMQ cluster for one test: three [`PrivateBroker`] nodes on free
//! loopback ports sharing one Erlang cookie, nodes 2 and 3 joined to node 1 with
//! `rabbitmqctl join_cluster`, each configured with what Relay ships in `deploy/rabbitmq`
//! (`advanced.config` and the cluster section of `rabbitmq.conf`), so the tests exercise the
//! configuration operators deploy. Nodes can be killed (`kill -9` of the Erlang VM) and
//! restarted with their data.
//!
//! `RELAY_TEST_CLUSTER_ADVANCED_CONFIG` names another `advanced.config` to use instead, e.g. a
//! file holding `[].` to see RabbitMQ's defaults (how the retry-tier stranding was reproduced).
//!
//! Starting a cluster takes 20–60 s on a loaded 2-core machine; the tests that need one form
//! their own nextest group (`.config/nextest.toml`) so that two never boot at once.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::broker::{NodeConfig, PrivateBroker, random_cookie};

/// Relay's shipped `advanced.config`.
pub const SHIPPED_ADVANCED_CONFIG: &str = include_str!("../../deploy/rabbitmq/advanced.config");

/// Relay's shipped `rabbitmq.conf`; its cluster section is applied to every node.
const SHIPPED_RABBITMQ_CONF: &str = include_str!("../../deploy/rabbitmq/rabbitmq.conf");

/// Environment variable naming an `advanced.config` to use instead of the shipped one.
pub const ADVANCED_CONFIG_ENV: &str = "RELAY_TEST_CLUSTER_ADVANCED_CONFIG";

/// How long a queue may take to elect a leader on the surviving nodes.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Three RabbitMQ nodes in one cluster; every node is killed and deleted on drop.
#[derive(Debug)]
pub struct PrivateCluster {
    nodes: Vec<PrivateBroker>,
}

/// One queue as `rabbitmqctl list_queues` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// Erlang node name of the leader (quorum queues); empty while there is none.
    #[serde(default, deserialize_with = "lenient_string")]
    pub leader: String,
    /// Erlang node names of the members (quorum queues; empty for others).
    #[serde(default, deserialize_with = "lenient_list")]
    pub members: Vec<String>,
    /// Every message the queue holds, including those its dead-letter worker has checked out.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub messages: u64,
    /// Messages ready for a consumer.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub messages_ready: u64,
    /// Messages delivered to a consumer and not yet acknowledged.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub messages_unacknowledged: u64,
}

impl QueueInfo {
    /// Messages held but neither ready nor unacknowledged: for a retry tier, expired
    /// messages its dead-letter worker has not yet forwarded.
    #[must_use]
    pub fn in_dead_letter_worker(&self) -> u64 {
        self.messages
            .saturating_sub(self.messages_ready + self.messages_unacknowledged)
    }
}

/// `rabbitmqctl` prints `""` or a number; a queue without a leader prints nothing useful.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    })
}

fn lenient_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    })
}

fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        _ => String::new(),
    })
}

/// The lines between `# --- cluster ---` and `# --- end cluster ---` of the shipped
/// `rabbitmq.conf` (the same section `deploy/local/cluster.sh` applies).
fn shipped_cluster_conf() -> String {
    let section: Vec<&str> = SHIPPED_RABBITMQ_CONF
        .lines()
        .skip_while(|line| !line.starts_with("# --- cluster ---"))
        .take_while(|line| !line.starts_with("# --- end cluster ---"))
        .collect();
    assert!(
        !section.is_empty(),
        "deploy/rabbitmq/rabbitmq.conf has no cluster section"
    );
    section.join("\n") + "\n"
}

impl PrivateCluster {
    /// Starts three nodes with Relay's shipped broker configuration (or the file named by
    /// `RELAY_TEST_CLUSTER_ADVANCED_CONFIG`), joins them, and waits until all three run.
    ///
    /// # Panics
    /// When a node does not start or a join fails.
    pub async fn start() -> Self {
        let advanced_config = match std::env::var(ADVANCED_CONFIG_ENV) {
            Ok(path) if !path.is_empty() => std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{ADVANCED_CONFIG_ENV}={path}: {e}")),
            _ => SHIPPED_ADVANCED_CONFIG.to_owned(),
        };
        let config = NodeConfig {
            cookie: Some(random_cookie()),
            advanced_config,
            extra_conf: shipped_cluster_conf(),
            ..NodeConfig::default()
        };
        let started = Instant::now();
        let (a, b, c) = tokio::join!(
            PrivateBroker::start_with(&config),
            PrivateBroker::start_with(&config),
            PrivateBroker::start_with(&config),
        );
        let cluster = Self {
            nodes: vec![a, b, c],
        };
        let seed = cluster.nodes[0].node().to_owned();
        // One at a time: concurrent joins to the same seed can race on its schema.
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"]).await;
            node.ctl(&["join_cluster", &seed]).await;
            node.start_app().await;
        }
        cluster.nodes[0]
            .ctl(&["await_online_nodes", "3", "--timeout", "120"])
            .await;
        eprintln!(
            "cluster {:?} up in {:.1?}",
            cluster.node_names(),
            started.elapsed()
        );
        cluster
    }

    /// Node `i` (0, 1 or 2).
    #[must_use]
    pub fn node(&self, i: usize) -> &PrivateBroker {
        &self.nodes[i]
    }

    /// The Erlang node names, in order.
    #[must_use]
    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(PrivateBroker::node).collect()
    }

    /// The index of the node named `name`.
    ///
    /// # Panics
    /// When no node has that name.
    #[must_use]
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.node() == name)
            .unwrap_or_else(|| panic!("{name} is not a node of this cluster"))
    }

    /// Every node's AMQP URL, in order.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateBroker::amqp_url).collect()
    }

    /// `kill -9` of node `i`'s Erlang VM.
    pub fn kill(&self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again after [`PrivateCluster::kill`] and waits until it accepts
    /// connections; it rejoins the cluster with its data.
    pub async fn restart(&self, i: usize) {
        self.nodes[i].restart().await;
    }

    /// A node that is running, for `rabbitmqctl` calls about the cluster.
    ///
    /// # Panics
    /// When every node is down.
    #[must_use]
    pub fn running_node(&self) -> &PrivateBroker {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("at least one node of the cluster runs")
    }

    /// Every queue whose name starts with `prefix`, as a running node reports them.
    pub async fn queues(&self, prefix: &str) -> Vec<QueueInfo> {
        let out = self
            .running_node()
            .ctl(&[
                "list_queues",
                "--quiet",
                "--formatter",
                "json",
                "name",
                "leader",
                "members",
                "messages",
                "messages_ready",
                "messages_unacknowledged",
            ])
            .await;
        let all: Vec<QueueInfo> = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("list_queues output is not JSON ({e}): {out}"));
        all.into_iter()
            .filter(|q| q.name.starts_with(prefix))
            .collect()
    }

    /// One queue's state.
    ///
    /// # Panics
    /// When the queue does not exist.
    pub async fn queue(&self, name: &str) -> QueueInfo {
        self.queues(name)
            .await
            .into_iter()
            .find(|q| q.name == name)
            .unwrap_or_else(|| panic!("queue {name} not found"))
    }

    /// The index of the node leading `queue`.
    pub async fn leader(&self, queue: &str) -> usize {
        let info = self.queue(queue).await;
        self.index_of(&info.leader)
    }

    /// Waits until `queue` is listed with a leader on a running node; returns that node's index.
    ///
    /// # Panics
    /// When none is elected within a minute.
    pub async fn wait_for_leader(&self, queue: &str) -> usize {
        let deadline = Instant::now() + ELECTION_TIMEOUT;
        loop {
            // Right after a kill the queue may be missing from the listing (its leader was on
            // the lost node) or its record may still name the dead leader.
            let info = self
                .queues(queue)
                .await
                .into_iter()
                .find(|q| q.name == queue);
            if let Some(info) = &info
                && let Some(i) = self.nodes.iter().position(|n| n.node() == info.leader)
                && self.nodes[i].is_running()
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "{queue} has no leader on a running node after {ELECTION_TIMEOUT:?}: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes node `i`'s member from quorum queue `queue` (`rabbitmq-queues delete_member`).
    pub async fn delete_member(&self, queue: &str, i: usize) {
        self.running_node()
            .tool(
                "rabbitmq-queues",
                &["delete_member", queue, self.nodes[i].node()],
            )
            .await;
    }

    /// Adds a member of quorum queue `queue` on node `i` (`rabbitmq-queues add_member`).
    pub async fn add_member(&self, queue: &str, i: usize) {
        self.running_node()
            .tool(
                "rabbitmq-queues",
                &["add_member", queue, self.nodes[i].node()],
            )
            .await;
    }

    /// Makes node `leader` lead quorum queue `queue`, with members on the nodes `members`
    /// (which must include `leader`): every other member is removed, so `leader` is the only
    /// one left and leads, then the others are added back as followers.
    ///
    /// # Panics
    /// When `members` lacks `leader`, or the queue ends up led elsewhere.
    pub async fn place(&self, queue: &str, leader: usize, members: &[usize]) {
        assert!(members.contains(&leader), "{leader} must be a member");
        for i in (0..self.nodes.len()).filter(|&i| i != leader) {
            let info = self.queue(queue).await;
            if info.members.iter().any(|m| m == self.nodes[i].node()) {
                self.delete_member(queue, i).await;
            }
        }
        assert_eq!(self.wait_for_leader(queue).await, leader);
        for &i in members.iter().filter(|&&i| i != leader) {
            self.add_member(queue, i).await;
        }
        let info = self.queue(queue).await;
        assert_eq!(info.leader, self.nodes[leader].node(), "{info:?}");
        assert_eq!(info.members.len(), members.len(), "{info:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_cluster_section_spreads_leaders() {
        let conf = shipped_cluster_conf();
        assert!(conf.contains("queue_leader_locator = balanced"), "{conf}");
        assert!(SHIPPED_ADVANCED_CONFIG.contains("dead_letter_worker_publisher_confirm_timeout"));
    }

    #[test]
    fn queue_counts_read_leniently() {
        let q: Vec<QueueInfo> = serde_json::from_str(
            r#"[{"name":"a","leader":"n1@h","members":["n1@h","n2@h"],"messages":5,
                 "messages_ready":2,"messages_unacknowledged":1},
                {"name":"b","leader":"","members":"","messages":"","messages_ready":"",
                 "messages_unacknowledged":""}]"#,
        )
        .unwrap();
        assert_eq!(q[0].in_dead_letter_worker(), 2);
        assert_eq!(q[1].messages, 0);
        assert_eq!(q[1].leader, "");
    }
}
