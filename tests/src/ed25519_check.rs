//! An independent verifier for `v1a` signatures: Python's `cryptography` package (PyPI), given
//! the JWKS and the deliveries, checks each signature against the Standard Webhooks format and
//! the JWK thumbprints against RFC 7638 (`ed25519_check.py`). `deploy/local/test.sh` installs
//! the package when it is missing.

use std::process::Stdio;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const SCRIPT: &str = include_str!("ed25519_check.py");

/// One signed message to check.
#[derive(Debug, Clone)]
pub struct Message {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: i64,
    /// The body exactly as sent.
    pub body: Vec<u8>,
    /// `webhook-signature`.
    pub signature: String,
}

/// What the independent implementation found.
#[derive(Debug, Clone, Deserialize)]
pub struct Findings {
    /// The `kid`s of the JWKS, in order.
    pub kids: Vec<String>,
    /// RFC 7638 thumbprint of each JWKS key, in the same order.
    pub thumbprints: Vec<String>,
    /// For each `whpk_` key given, the `kid` of the JWKS key with the same bytes.
    pub public_keys: Vec<Option<String>>,
    /// For each message, the `kid`s whose key verified one of its `v1a` signatures.
    pub verified: Vec<Vec<String>>,
    /// For each message, its `v1a` signature made by Python with each `whsk_` key given.
    pub signed: Vec<Vec<String>>,
}

/// Runs the Python check.
///
/// # Panics
/// When `python3` or its `cryptography` package is missing, or the script fails.
pub async fn check(
    jwks: &Value,
    public_keys: &[String],
    signing_keys: &[String],
    messages: &[Message],
) -> Findings {
    let request = json!({
        "jwks": jwks,
        "public_keys": public_keys,
        "signing_keys": signing_keys,
        "messages": messages.iter().map(|m| json!({
            "id": m.id,
            "timestamp": m.timestamp,
            "body_b64": STANDARD.encode(&m.body),
            "signature": m.signature,
        })).collect::<Vec<_>>(),
    });
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (deploy/local/test.sh installs PyPI cryptography)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(&serde_json::to_vec(&request).expect("request serialises"))
        .await
        .expect("python3 reads its input");
    drop(stdin);
    let output = child.wait_with_output().await.expect("python3 finishes");
    assert!(
        output.status.success(),
        "the independent ed25519 check failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the check prints JSON")
}
