//! consumer-api's HTTP surface against a real consumer-api process (in-process `run`, port 0,
//! its own SQLite file) with the broker down: changes succeed without it, every rejection is
//! a problem, the one cursor rule of every list, and the route table.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};
use tests::{
    api::{Api, problem},
    system::ADMIN_KEY,
};

#[tokio::test]
async fn subscriptions_lifecycle_without_a_broker() {
    let api = Api::start(&[]).await;

    let started = Instant::now();
    let created = api
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": "https://example.com/hook", "event_types": ["order.*"], "consumer": "acme"})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a down broker must not hold the request"
    );
    let created = (created.headers, created.body);
    let id = created.1["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("sub_"));
    assert_eq!(
        created.0["location"],
        format!("/v1/subscriptions/{id}").as_str()
    );
    assert!(created.1["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created.1["enabled"], true);
    assert_eq!(created.1["description"], Value::Null);

    let got = api
        .call(Method::GET, &format!("/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(got.status, 200);
    assert!(got.body.get("secret").is_none());
    assert_eq!(got.body["consumer"], "acme");

    let secret = api
        .call(Method::GET, &format!("/v1/subscriptions/{id}/secret"), None)
        .await;
    assert_eq!(
        (secret.status, &secret.body["secret"]),
        (200, &created.1["secret"])
    );

    let updated = api
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"enabled": false, "consumer": null})),
        )
        .await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(
        (&updated.body["enabled"], &updated.body["consumer"]),
        (&json!(false), &Value::Null)
    );

    // ULIDs are ordered across milliseconds only.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let second = api
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": "http://127.0.0.1:9/x", "event_types": ["#"]})),
        )
        .await;
    assert_eq!(second.status, 201);

    let page = api
        .call(Method::GET, "/v1/subscriptions?limit=1", None)
        .await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body["data"][0]["id"], id.as_str());
    assert_eq!(
        (&page.body["next_cursor"], &page.body["has_more"]),
        (&json!(id), &json!(true))
    );
    let page = api
        .call(
            Method::GET,
            &format!("/v1/subscriptions?limit=1&after={id}"),
            None,
        )
        .await;
    assert_eq!(page.body["data"][0]["id"], second.body["id"]);
    assert_eq!(
        (&page.body["next_cursor"], &page.body["has_more"]),
        (&second.body["id"], &json!(false))
    );

    let directory = api.call(Method::GET, "/v1/directory", None).await;
    assert_eq!(directory.status, 200);
    let entries = directory.body["data"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["revision"], 2);
    assert_eq!(entries[0]["enabled"], false);
    assert_eq!(entries[0]["secrets"], json!([created.1["secret"]]));
    assert_eq!(
        (&directory.body["next_cursor"], &directory.body["has_more"]),
        (&second.body["id"], &json!(false))
    );

    let deleted = api
        .call(Method::DELETE, &format!("/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(deleted.status, 204);
    let gone = api
        .call(Method::GET, &format!("/v1/subscriptions/{id}"), None)
        .await;
    gone.assert_problem(404, "not-found");
    let again = api
        .call(Method::DELETE, &format!("/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(again.status, 404);

    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"relay_api_control_notifications_total{outcome="failed"} 4"#),
        "{metrics}"
    );
    assert!(metrics.contains("relay_amqp_connected 0"), "{metrics}");
    // HTTP requests are measured once, under the shared names.
    assert!(
        metrics.contains(
            r#"relay_http_requests_total{route="/v1/subscriptions/{id}",status="204"} 1"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("relay_api_http_request"), "{metrics}");
    api.stop().await;
}

#[tokio::test]
async fn every_rejection_is_a_problem() {
    let api = Api::start(&[]).await;
    let url = |path: &str| format!("{}{path}", api.base);

    let response = api.http.get(url("/v1/subscriptions")).send().await.unwrap();
    problem(response, 401, "unauthorized").await;
    let response = api
        .http
        .get(url("/v1/directory"))
        .bearer_auth("wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let response = api.http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = api.http.get(url("/readyz")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503, "the broker is down");
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert!(
        body["reasons"][0].as_str().unwrap().starts_with("broker:"),
        "{body}"
    );

    let response = api
        .request(Method::POST, "/v1/subscriptions", ADMIN_KEY)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);

    let response = tests::api::answer(
        api.request(Method::POST, "/v1/subscriptions", ADMIN_KEY)
            .header("content-type", "application/json")
            .body("{\"url\":")
            .send()
            .await
            .unwrap(),
    )
    .await;
    response.assert_problem(400, "malformed-json");

    let response = api
        .request(Method::POST, "/v1/subscriptions", ADMIN_KEY)
        .header("content-type", "application/json")
        .body(vec![b' '; consumer_api::extract::MAX_BODY_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);

    let cases = [
        (json!({"url": "ftp://x", "event_types": ["a"]}), "url"),
        (
            json!({"url": "https://x", "event_types": ["a", "B"]}),
            "event_types[1]",
        ),
        (
            json!({"url": "https://x", "event_types": ["a"], "extra": 1}),
            "extra",
        ),
        (json!({"url": "https://x"}), "event_types"),
    ];
    for (body, field) in cases {
        let problem = api
            .call(Method::POST, "/v1/subscriptions", Some(body))
            .await;
        assert_eq!(problem.assert_problem(400, "invalid-field")["field"], field);
    }

    for (path, field) in [
        ("/v1/subscriptions?limit=501", "limit"),
        ("/v1/subscriptions?limit=", "limit"),
        ("/v1/directory?limit=5001", "limit"),
        ("/v1/events?after=x", "after"),
        ("/v1/subscriptions?colour=red", "colour"),
    ] {
        let problem = api.call(Method::GET, path, None).await;
        assert_eq!(
            (problem.status, problem.body["field"].as_str()),
            (400, Some(field)),
            "{path}"
        );
    }
    let answer = api
        .call(Method::GET, "/v1/directory?limit=5000", None)
        .await;
    assert_eq!(answer.status, 200);

    let problem = api
        .call(
            Method::PATCH,
            "/v1/subscriptions/sub_nope",
            Some(json!({"enabled": true})),
        )
        .await;
    problem.assert_problem(404, "not-found");

    let problem = api.call(Method::GET, "/v2/nothing", None).await;
    problem.assert_problem(404, "not-found");
    let problem = api.call(Method::PUT, "/v1/subscriptions", None).await;
    problem.assert_problem(405, "method-not-allowed");
    api.stop().await;
}

/// Sends `head` and then `body` in chunks over a raw connection (what clients may do that
/// reqwest will not), and reads the answer: status, lower-case headers, body.
async fn raw(api: &Api, head: &str, chunks: &[Vec<u8>]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        // The server may answer and close before the whole body is sent.
        if stream.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn every_error_is_a_problem_even_before_routing() {
    let api = Api::start(&[]).await;

    // Ids that do not decode name nothing: 404, as a problem, on every kind of path.
    for (method, path) in [
        (Method::GET, "/v1/events/%FF"),
        (Method::GET, "/v1/consumers/%FF"),
        (Method::DELETE, "/v1/consumers/acme/keys/%FF"),
        (Method::GET, "/v1/subscriptions/%FF"),
        (Method::GET, "/v1/subscriptions/%FF/attempts"),
        (Method::GET, "/v2/nothing"),
    ] {
        eprintln!("{method} {path}");
        api.call(method, path, None)
            .await
            .assert_problem(404, "not-found");
    }

    // A method the route does not have: 405, a problem, and `Allow`.
    let answer = api.call(Method::PUT, "/v1/subscriptions", None).await;
    answer.assert_problem(405, "method-not-allowed");
    let allow = answer.headers["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");

    // The scheme of `Authorization` is case-insensitive (RFC 9110).
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = api
            .http
            .get(format!("{}/v1/subscriptions", api.base))
            .header("authorization", format!("{scheme} {ADMIN_KEY}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }

    // Too long a target, too many headers, too large a header section: problems too.
    let long = format!("/v1/subscriptions?after={}", "a".repeat(9000));
    let answer = api.call(Method::GET, &long, None).await;
    answer.assert_problem(414, "uri-too-long");
    let mut request = api.request(Method::GET, "/v1/subscriptions", ADMIN_KEY);
    for i in 0..150 {
        request = request.header(format!("x-filler-{i}"), "x");
    }
    let answer = tests::api::answer(request.send().await.unwrap()).await;
    answer.assert_problem(431, "headers-too-large");
    let answer = tests::api::answer(
        api.request(Method::GET, "/v1/subscriptions", ADMIN_KEY)
            .header("x-large", "y".repeat(40 * 1024))
            .send()
            .await
            .unwrap(),
    )
    .await;
    answer.assert_problem(431, "headers-too-large");

    // A chunked body (no Content-Length) over the limit: 413, a problem.
    let chunk = {
        let data = vec![b' '; 16 * 1024];
        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
        chunk.extend_from_slice(&data);
        chunk.extend_from_slice(b"\r\n");
        chunk
    };
    let head = format!(
        "POST /v1/subscriptions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let (status, headers, body) = raw(&api, &head, &vec![chunk; 5]).await;
    assert_eq!(status, 413, "{headers}{body}");
    assert!(
        headers.contains("content-type: application/problem+json"),
        "{headers}"
    );
    assert!(
        body.contains("urn:relay:problem:payload-too-large"),
        "{body}"
    );
    api.stop().await;
}

/// The methods a router answers on `path`: what its `405` lists in `Allow` for a method no
/// route has (`HEAD` left out: axum answers it wherever there is a `GET`).
async fn routed_methods(api: &Api, path: &str) -> BTreeSet<String> {
    let probe = Method::from_bytes(b"PROBE").unwrap();
    let answer = api.call(probe, path, None).await;
    assert_eq!(
        answer.status, 405,
        "{path} is not routed: {:?}",
        answer.body
    );
    answer.headers["allow"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty() && m != "HEAD")
        .collect()
}

/// Both are built from one table (`utoipa-axum`'s `OpenApiRouter`); this proves it for every
/// documented path: a route added beside the table, or an operation documented but not
/// routed, changes a path's methods on one side only.
#[tokio::test]
async fn the_router_and_the_openapi_document_list_the_same_operations() {
    let api = Api::start(&[]).await;
    let doc = api.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(doc.status, 200);
    let paths = doc.body["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{paths:?}");
    for (path, item) in paths {
        let documented: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| {
                [
                    "get", "put", "post", "delete", "patch", "options", "head", "trace",
                ]
                .contains(&k.as_str())
            })
            .map(|k| k.to_ascii_uppercase())
            .collect();
        assert!(!documented.is_empty(), "{path}");
        // Every `{param}` as a value that no extractor runs on (the method is refused first).
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        assert_eq!(
            routed_methods(&api, &concrete).await,
            documented,
            "{path}: the router's methods (left) differ from the document's (right)"
        );
    }
    api.stop().await;
}

#[tokio::test]
async fn redrive_takes_exactly_one_of_ids_or_subscription_id_as_its_schema_says() {
    let api = Api::start(&[]).await;
    let doc = api.call(Method::GET, "/openapi.json", None).await;
    let schema = &doc.body["components"]["schemas"]["RedriveRequest"];
    let required: Vec<&Value> = schema["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("no oneOf: {schema}"))
        .iter()
        .map(|v| &v["required"])
        .collect();
    assert_eq!(
        required,
        [&json!(["ids"]), &json!(["subscription_id"])],
        "{schema}"
    );
    for body in [
        json!({}),
        json!({"ids": ["dl_x"], "subscription_id": "sub_x"}),
        json!({"ids": null, "subscription_id": "sub_x"}),
        json!({"ids": []}),
        json!({"subscription_id": null}),
    ] {
        let answer = api
            .call(Method::POST, "/v1/dead-letters/redrive", Some(body.clone()))
            .await;
        assert!(
            answer.status == 400
                && [
                    "urn:relay:problem:invalid-field",
                    "urn:relay:problem:malformed-json"
                ]
                .contains(&answer.problem_type()),
            "{body}: {} {:?}",
            answer.status,
            answer.body
        );
    }
    api.stop().await;
}
