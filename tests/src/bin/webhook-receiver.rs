//! A webhook receiver for trying Relay out: prints every delivery and checks its Standard
//! Webhooks signature when given the subscription's secret.
//!
//! `webhook-receiver [ADDR] [SECRET]` (default `127.0.0.1:9999`; the secret may also come
//! from `WEBHOOK_SECRET`).

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};

async fn receive(
    State(secret): State<Option<String>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let verdict = match (&secret, timestamp.parse::<i64>()) {
        (None, _) => "not checked (no secret given)",
        (Some(secret), Ok(ts))
            if relay_shared::signing::verify(secret, id, ts, &body, signature) =>
        {
            "valid"
        }
        _ => "INVALID",
    };
    println!(
        "webhook-id: {id}\nwebhook-timestamp: {timestamp}\nsignature: {verdict}\nbody: {}\n",
        String::from_utf8_lossy(&body)
    );
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9999".to_owned());
    let secret = args.next().or_else(|| std::env::var("WEBHOOK_SECRET").ok());
    let app = axum::Router::new()
        .fallback(post(receive))
        .with_state(secret);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("webhook-receiver listening on http://{addr}/");
    axum::serve(listener, app).await
}
