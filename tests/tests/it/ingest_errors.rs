//! Every ingest rejection has its status and an application/problem+json body.

use serde_json::{Value, json};
use tests::{
    api::{PROBLEM_JSON, assert_problem},
    system::{PUBLISHER_KEY, System},
};

use crate::system;

async fn send(
    relay: &System,
    path: &str,
    key: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = relay
        .http
        .post(format!("{}{path}", relay.ingest_url))
        .header("content-type", content_type)
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status != 202 {
        assert_eq!(
            response.headers()["content-type"],
            PROBLEM_JSON,
            "status {status} without a problem body"
        );
    }
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn each_bad_request_gets_its_status_type_and_field() {
    let relay = system().await;
    let json_type = "application/json";
    let ok = br#"{"type":"a.b"}"#.to_vec();

    let (status, p) = send(&relay, "/v1/events", None, json_type, ok.clone()).await;
    assert_problem(status, &p, 401, "unauthorized");
    let (status, _) = send(
        &relay,
        "/v1/events",
        Some("wrong-key"),
        json_type,
        ok.clone(),
    )
    .await;
    assert_eq!(status, 401);

    let (status, p) = send(
        &relay,
        "/v1/events",
        Some(PUBLISHER_KEY),
        "text/plain",
        ok.clone(),
    )
    .await;
    assert_problem(status, &p, 415, "unsupported-media-type");

    let (status, p) = send(
        &relay,
        "/v1/events",
        Some(PUBLISHER_KEY),
        json_type,
        b"{\"type\":".to_vec(),
    )
    .await;
    assert_problem(status, &p, 400, "malformed-json");

    let cases = [
        (json!({"data": {}}), "type"),
        (json!({"type": 7}), "type"),
        (json!({"type": "Order Created"}), "type"),
        (json!({"type": "a.b", "id": "has spaces"}), "id"),
        (
            json!({"type": "a.b", "ordering_key": "has spaces"}),
            "ordering_key",
        ),
        (
            json!({"type": "a.b", "ordering_key": "k".repeat(129)}),
            "ordering_key",
        ),
        (
            json!({"type": "a.b", "occurred_at": "last tuesday"}),
            "occurred_at",
        ),
        (json!({"type": "a.b", "tpye": "typo"}), "tpye"),
    ];
    for (body, field) in cases {
        let (status, p) = send(
            &relay,
            "/v1/events",
            Some(PUBLISHER_KEY),
            json_type,
            body.to_string().into_bytes(),
        )
        .await;
        assert_problem(status, &p, 400, "invalid-field");
        assert_eq!(p["field"], field, "{body}: {p}");
        assert!(!p["detail"].as_str().unwrap().is_empty());
    }

    let limit = relay.settings.ingest.process.max_event_bytes;
    let huge = json!({"type": "a.b", "data": "x".repeat(limit)})
        .to_string()
        .into_bytes();
    let (status, p) = send(&relay, "/v1/events", Some(PUBLISHER_KEY), json_type, huge).await;
    assert_problem(status, &p, 413, "payload-too-large");

    let (status, p) = send(
        &relay,
        "/v1/events/batch",
        Some(PUBLISHER_KEY),
        json_type,
        b"[]".to_vec(),
    )
    .await;
    assert_problem(status, &p, 400, "invalid-batch-size");
    let bad_second = json!([{"type": "a.b"}, {"type": "BAD"}])
        .to_string()
        .into_bytes();
    let (status, p) = send(
        &relay,
        "/v1/events/batch",
        Some(PUBLISHER_KEY),
        json_type,
        bad_second,
    )
    .await;
    assert_eq!((status, p["field"].as_str()), (400, Some("[1].type")));
    let too_many: Vec<Value> = (0..=relay.settings.ingest.process.max_batch)
        .map(|_| json!({"type": "a"}))
        .collect();
    let (status, _) = send(
        &relay,
        "/v1/events/batch",
        Some(PUBLISHER_KEY),
        json_type,
        serde_json::to_vec(&too_many).unwrap(),
    )
    .await;
    assert_eq!(status, 400);

    // After all of that, a good event is still accepted.
    let (status, body) = send(&relay, "/v1/events", Some(PUBLISHER_KEY), json_type, ok).await;
    assert_eq!(status, 202);
    assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    relay.stop().await;
}

#[tokio::test]
async fn a_binary_with_bad_configuration_exits_naming_the_key() {
    let relay_bin = tests::bin_path("relay");
    let output = std::process::Command::new(&relay_bin)
        .arg("ingest")
        .env("RELAY__INGEST__LISTEN", "not-an-address")
        .output()
        .expect("run the relay binary");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ingest.listen"), "{stderr}");

    let output = std::process::Command::new(&relay_bin)
        .arg("ingest")
        .env_remove("RELAY__INGEST__PUBLISHER_KEYS")
        .output()
        .expect("run the relay binary");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ingest.publisher_keys"));
}

#[tokio::test]
async fn past_its_in_flight_limit_ingest_answers_503_and_recovers() {
    use tokio::io::AsyncWriteExt;

    let relay = tests::system::System::start_with(
        tests::system::Options::new(crate::shared_amqp_url())
            .set("RELAY__INGEST__MAX_INFLIGHT", "1"),
    )
    .await;
    // A producer that sends its headers and half its body, then stalls, holds the one slot.
    let addr = relay.ingest_url.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {PUBLISHER_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"type\":"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let (status, p) = send(
        &relay,
        "/v1/events",
        Some(PUBLISHER_KEY),
        "application/json",
        br#"{"type":"a.b"}"#.to_vec(),
    )
    .await;
    assert_problem(status, &p, 503, "overloaded");

    drop(stalled);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, _) = send(
        &relay,
        "/v1/events",
        Some(PUBLISHER_KEY),
        "application/json",
        br#"{"type":"a.b"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 202);
    relay.stop().await;
}
