//! A broker session kept alive: connect (bounded), declare the topology, hand out channels,
//! notice the loss of the connection, back off and reconnect. Readiness and the
//! `relay_amqp_connected` gauge follow it.
//!
//! With several node URLs (`amqp.urls`, a cluster) the first node that answers is used; when
//! its connection is lost the next nodes are tried first, so a process moves to a survivor at
//! once instead of waiting for the lost node, and backs off only after every node failed.

use std::{sync::Arc, time::Duration};

use crate::{
    amqp::{self, AmqpError, Backoff},
    config::AmqpSettings,
    ops::Readiness,
    shutdown::Shutdown,
    topology::Topology,
};
use futures_util::StreamExt;
use lapin::{Connection, Event};
use prometheus::IntGauge;
use tokio::sync::watch;

/// Readiness condition name for the broker.
pub const READY_BROKER: &str = "broker";

/// A live connection, with the topology already declared on it.
pub type Session = Arc<Connection>;

/// Keeps a connection open until `close`, publishing each new session on the returned watch
/// (`None` while disconnected), then closes it. A process triggers `close` last, after its
/// drain, so work still in flight at SIGTERM can settle (ack, confirm) on the session.
pub fn keep_connected(
    settings: AmqpSettings,
    name: &'static str,
    readiness: Readiness,
    connected: IntGauge,
    mut shutdown: Shutdown,
) -> watch::Receiver<Option<Session>> {
    let (tx, rx) = watch::channel(None);
    readiness.not_ready(READY_BROKER, "connecting");
    let topology = Topology::from_settings(&settings);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(settings.reconnect_max_backoff);
        let mut nodes = Nodes::new(&settings);
        while !shutdown.is_triggered() {
            let Some(opened) = shutdown
                .unless_stopped(open_any(&settings, &mut nodes, name, &topology))
                .await
            else {
                break;
            };
            match opened {
                Ok((connection, node)) => {
                    backoff.reset();
                    let connection = Arc::new(connection);
                    tracing::info!(connection = name, node, "connected to the broker");
                    readiness.ready(READY_BROKER);
                    connected.set(1);
                    tx.send_replace(Some(connection.clone()));
                    let reason = tokio::select! {
                        reason = lost(&connection) => reason,
                        () = shutdown.wait() => String::from("shutting down"),
                    };
                    tx.send_replace(None);
                    connected.set(0);
                    readiness.not_ready(READY_BROKER, format!("reconnecting: {reason}"));
                    if shutdown.is_triggered() {
                        amqp::close_connection(&connection, "shutting down").await;
                        break;
                    }
                    tracing::warn!(connection = name, node, reason, "broker connection lost");
                    nodes.lost();
                }
                Err(e) => {
                    readiness.not_ready(READY_BROKER, format!("cannot connect: {e}"));
                    tracing::warn!(connection = name, error = %e, "cannot connect to the broker");
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.wait() => break,
            }
        }
    });
    rx
}

/// The broker nodes to try, in order, and where the next round starts.
#[derive(Debug)]
struct Nodes {
    urls: Vec<String>,
    /// Index of the node connected last (or to try first).
    current: usize,
}

impl Nodes {
    fn new(settings: &AmqpSettings) -> Self {
        Self {
            urls: settings.node_urls().into_iter().map(String::from).collect(),
            current: 0,
        }
    }

    /// Every node once, starting with `current`.
    fn round(&self) -> impl Iterator<Item = (usize, &str)> {
        let n = self.urls.len();
        (0..n).map(move |k| {
            let i = (self.current + k) % n;
            (i, self.urls[i].as_str())
        })
    }

    /// The connection to `current` was lost: start the next round with the node after it.
    fn lost(&mut self) {
        self.current = (self.current + 1) % self.urls.len();
    }
}

/// Tries every node once (see [`Nodes::round`]); the first that connects and takes the
/// topology wins. Returns the connection and the node's `host:port`.
async fn open_any(
    settings: &AmqpSettings,
    nodes: &mut Nodes,
    name: &str,
    topology: &Topology,
) -> Result<(Connection, String), AmqpError> {
    let round: Vec<(usize, String)> = nodes.round().map(|(i, u)| (i, u.to_owned())).collect();
    let mut failures = Vec::new();
    for (index, url) in round {
        let node = amqp::node_label(&url);
        match open(settings, &url, name, topology).await {
            Ok(connection) => {
                nodes.current = index;
                return Ok((connection, node));
            }
            Err(e) => {
                tracing::debug!(connection = name, node, error = %e, "node unavailable");
                failures.push((node, e));
            }
        }
    }
    Err(match failures.len() {
        1 => failures.remove(0).1,
        _ => AmqpError::NoNode(
            failures
                .iter()
                .map(|(node, e)| format!("{node}: {e}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    })
}

async fn open(
    settings: &AmqpSettings,
    url: &str,
    name: &str,
    topology: &Topology,
) -> Result<Connection, AmqpError> {
    let connection = amqp::connect(settings, url, name).await?;
    let created = is_new(&connection, topology).await;
    let channel = connection.create_channel().await?;
    tokio::time::timeout(settings.connect_timeout, topology.declare(&channel))
        .await
        .map_err(|_| AmqpError::Timeout(settings.connect_timeout))??;
    amqp::close_channel(&channel, "topology declared").await;
    if created && !settings.new_topology_settle.is_zero() {
        // A quorum queue killed within about 2 s of its creation can lose what it confirmed:
        // take no traffic until the new queues are durable.
        tracing::info!(
            connection = name,
            settle = ?settings.new_topology_settle,
            "created the topology; waiting before taking traffic"
        );
        tokio::time::sleep(settings.new_topology_settle).await;
    }
    Ok(connection)
}

/// Whether the topology has yet to be created: the (first) ingress queue does not exist (a passive
/// declaration fails, which closes that throwaway channel). Any failure counts as new, which
/// only costs a wait.
async fn is_new(connection: &Connection, topology: &Topology) -> bool {
    let Ok(channel) = connection.create_channel().await else {
        return true;
    };
    let found = amqp::passive_declare(&channel, &topology.ingress_queues()[0])
        .await
        .is_ok();
    if found {
        amqp::close_channel(&channel, "checked").await;
    }
    !found
}

/// Resolves when the connection reports an error or stops being connected.
async fn lost(connection: &Connection) -> String {
    let mut events = connection.events_listener();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = events.next() => match event {
                // A channel-level error (one channel closed by the broker, e.g. a passive
                // declare of a missing queue) also arrives here; only a dead connection counts.
                Some(Event::Error(e)) if !connection.status().connected() => return e.to_string(),
                Some(Event::Error(e)) => tracing::debug!(error = %e, "channel error; connection still up"),
                Some(_) => {}
                None => return String::from("connection closed"),
            },
            _ = tick.tick() => {
                if !connection.status().connected() {
                    return String::from("connection closed");
                }
            }
        }
    }
}

/// Waits for the next connected session, or `None` on shutdown.
pub async fn next_session(
    sessions: &mut watch::Receiver<Option<Session>>,
    shutdown: &mut Shutdown,
) -> Option<Session> {
    tokio::select! {
        session = sessions.wait_for(Option::is_some) => session.ok().and_then(|s| s.clone()),
        () = shutdown.wait() => None,
    }
}

/// After work on a session ended: waits for that session to be replaced (or half a second,
/// if the session itself is still up and only the work's channel failed), so the work can be
/// set up again. `false` once shutdown has started.
pub async fn await_replacement(
    sessions: &mut watch::Receiver<Option<Session>>,
    shutdown: &mut Shutdown,
) -> bool {
    if shutdown.is_triggered() {
        return false;
    }
    tokio::select! {
        _ = sessions.changed() => true,
        () = tokio::time::sleep(Duration::from_millis(500)) => true,
        () = shutdown.wait() => false,
    }
}

/// Keeps readiness condition `name` following `channels`: ready while a channel is open,
/// until `shutdown`.
pub async fn follow_channel(
    mut channels: watch::Receiver<Option<lapin::Channel>>,
    readiness: Readiness,
    name: &'static str,
    mut shutdown: Shutdown,
) {
    loop {
        if channels.borrow_and_update().is_some() {
            readiness.ready(name);
        } else {
            readiness.not_ready(name, "no publishing channel");
        }
        tokio::select! {
            changed = channels.changed() => if changed.is_err() { break },
            () = shutdown.wait() => break,
        }
    }
    readiness.not_ready(name, "shutting down");
}

/// Keeps one confirm-mode channel open per session, published on the returned watch (`None`
/// while there is none); a channel the broker closed on its own is replaced.
pub fn confirm_channels(
    mut sessions: watch::Receiver<Option<Session>>,
    mut shutdown: Shutdown,
) -> watch::Receiver<Option<lapin::Channel>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        while let Some(session) = next_session(&mut sessions, &mut shutdown).await {
            let Some(opened) = shutdown
                .unless_stopped(amqp::confirm_channel(&session))
                .await
            else {
                break;
            };
            match opened {
                Ok(channel) => {
                    tx.send_replace(Some(channel.clone()));
                    let mut tick = tokio::time::interval(Duration::from_millis(250));
                    loop {
                        tokio::select! {
                            _ = sessions.changed() => break,
                            _ = tick.tick() => if !channel.status().connected() { break },
                            () = shutdown.wait() => break,
                        }
                    }
                    tx.send_replace(None);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a publishing channel");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tx.send_replace(None);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(urls: &[&str]) -> Nodes {
        Nodes {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            current: 0,
        }
    }

    fn order(nodes: &Nodes) -> Vec<usize> {
        nodes.round().map(|(i, _)| i).collect()
    }

    #[test]
    fn a_lost_node_is_tried_last() {
        let mut n = nodes(&["amqp://a", "amqp://b", "amqp://c"]);
        assert_eq!(order(&n), [0, 1, 2], "the first node first");
        n.lost();
        assert_eq!(order(&n), [1, 2, 0], "after losing a, b first and a last");
        n.current = 2;
        n.lost();
        assert_eq!(order(&n), [0, 1, 2]);
    }

    #[test]
    fn one_url_is_a_round_of_one() {
        let mut n = nodes(&["amqp://a"]);
        n.lost();
        assert_eq!(order(&n), [0]);
    }
}
