//! Serving HTTP/1.1 connections: the application on hyper, with the parser's own limits set
//! far above the application's, so that an oversized request target or header section is
//! answered by the application (414, 431) as a problem, and with a graceful shutdown that
//! lets requests in flight finish. Beyond the parser's limits (a request target over 64 KiB,
//! over [`MAX_HEADERS`] headers or a head over [`MAX_HEAD_BYTES`]) hyper answers by itself,
//! without a body.

use std::time::Duration;

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use relay_shared::shutdown::Shutdown;
use tokio::net::TcpListener;

/// Most headers the parser accepts (the application refuses more than
/// [`crate::http::MAX_HEADER_COUNT`] itself).
pub const MAX_HEADERS: usize = 1024;
/// Largest request head the parser buffers.
pub const MAX_HEAD_BYTES: usize = 1 << 20;
/// How long a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown`, then waits for the requests in flight.
pub async fn serve(listener: TcpListener, app: Router, mut shutdown: Shutdown) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
