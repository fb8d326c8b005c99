//! A TCP relay in front of a real broker that can go silent: every connection stays open but
//! no byte passes either way any more, as when a node hangs or the network between drops
//! packets. What a client then sees is a connection that looks up and never answers.

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
    frozen: watch::Sender<bool>,
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
        let (frozen, watching) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                connections.spawn(pump(client_read, server_write, watching.clone()));
                connections.spawn(pump(server_read, client_write, watching.clone()));
            }
        });
        Self {
            url: url.to_string(),
            frozen,
            _tasks: tasks,
        }
    }

    /// The broker's URL through the relay.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// From now on no byte passes; the connections stay open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// Copies `from` to `to` until either closes or the relay freezes, then holds both open.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            biased;
            _ = frozen.wait_for(|f| *f) => break,
            read = from.read(&mut buf) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *frozen.borrow() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Silent, not closed (this future keeps both halves): the peer must find out on its own.
    std::future::pending::<()>().await;
}
