//! A TCP relay in front of a real broker that can go silent: every connection stays open but
//! no byte passes either way any more, as when a node hangs or the network between drops
//! packets. What a client then sees is a connection that looks up and never answers. It can
//! also go silent one way only: the client's frames still reach the broker, which acts on
//! them, but nothing it answers comes back (a publish stored whose confirm is lost). Or it can
//! close every connection and refuse new ones for a while: a broker that went away and comes
//! back on the same address.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

/// The relay; dropping it closes every connection through it.
#[derive(Debug)]
pub struct FreezingProxy {
    url: String,
    silence: watch::Sender<Silence>,
    refusing: watch::Sender<bool>,
    _tasks: JoinSet<()>,
}

impl FreezingProxy {
    /// Relays a free loopback port to the broker of `amqp_url`.
    ///
    /// # Panics
    /// `amqp_url` has no host and port, or no loopback port can be bound.
    pub async fn start(amqp_url: &str) -> Self {
        let mut url = url::Url::parse(amqp_url).expect("an AMQP URL");
        let target = format!(
            "{}:{}",
            url.host_str().expect("a broker host"),
            url.port().expect("a broker port")
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let local: SocketAddr = listener.local_addr().expect("local address");
        url.set_port(Some(local.port())).expect("set the port");
        let (silence, watching) = watch::channel(Silence::None);
        let (refusing, mut refused) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => break,
                    },
                    changed = refused.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        if *refused.borrow() {
                            connections.abort_all();
                        }
                        continue;
                    }
                };
                // Refused: closed at once, as by a broker that is not there.
                if *refused.borrow() {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                connections.spawn(pump(
                    client_read,
                    server_write,
                    watching.clone(),
                    Silence::BothWays,
                ));
                connections.spawn(pump(
                    server_read,
                    client_write,
                    watching.clone(),
                    Silence::Answers,
                ));
            }
        });
        Self {
            url: url.to_string(),
            silence,
            refusing,
            _tasks: tasks,
        }
    }

    /// The broker's URL through the relay.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes every connection and, until [`FreezingProxy::accept`], closes new ones at once:
    /// a broker that went away, on the same address.
    pub fn refuse(&self) {
        self.refusing.send_replace(true);
    }

    /// Relays new connections again (after [`FreezingProxy::refuse`]).
    pub fn accept(&self) {
        self.refusing.send_replace(false);
    }

    /// From now on no byte passes; the connections stay open.
    pub fn freeze(&self) {
        self.silence.send_replace(Silence::BothWays);
    }

    /// From now on the broker's bytes no longer reach the clients, while theirs still reach
    /// it; the connections stay open.
    pub fn hold_answers(&self) {
        self.silence.send_replace(Silence::Answers);
    }
}

/// Which way bytes no longer pass, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Silence {
    None,
    /// From the broker to the clients.
    Answers,
    /// Both ways.
    BothWays,
}

/// Copies `from` to `to` until either closes or the relay falls silent at `stop_at` (or
/// more), then holds both open.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut silence: watch::Receiver<Silence>,
    stop_at: Silence,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            biased;
            _ = silence.wait_for(|s| *s >= stop_at) => break,
            read = from.read(&mut buf) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *silence.borrow() >= stop_at || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Silent, not closed (this future keeps both halves): the peer must find out on its own.
    std::future::pending::<()>().await;
}
