//! `v1a` signatures checked by an independent implementation (Python `cryptography`) against
//! the Standard Webhooks format and the JWKS rules; no broker needed.

use relay_shared::signing::{
    AsymmetricKey, Jwks, SignatureScheme, Signer, generate_asymmetric_key, generate_secret,
};
use tests::ed25519_check::{self, Message};

#[tokio::test]
async fn v1a_signatures_and_the_jwks_verify_with_an_independent_implementation() {
    let (new, old) = (generate_asymmetric_key(), generate_asymmetric_key());
    let secret = generate_secret();
    let keys = [new.clone(), old.clone()];
    let publics: Vec<_> = keys
        .iter()
        .map(|k| AsymmetricKey::parse(k).unwrap().public_key().clone())
        .collect();
    let jwks = serde_json::to_value(Jwks {
        keys: publics.iter().map(|p| p.to_jwk()).collect(),
    })
    .unwrap();

    let signer = Signer::new(SignatureScheme::Both, &[secret], &keys).unwrap();
    let bodies: [&[u8]; 3] = [
        br#"{"id":"evt_1","type":"order.created","data":{"total":100}}"#,
        "{\"data\":\"caf\u{e9} \u{1f980}\"}".as_bytes(),
        b"{}",
    ];
    let mut messages = Vec::new();
    let mut key_ids = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let id = format!("evt_{i}");
        let timestamp = 1_764_390_000 + i64::try_from(i).unwrap();
        let signed = signer.sign(&id, timestamp, body);
        key_ids.push(signed.key_ids.unwrap());
        messages.push(Message {
            id,
            timestamp,
            body: body.to_vec(),
            signature: signed.signature,
        });
    }
    // The same signature on a changed body must not verify.
    let mut tampered = messages[0].clone();
    tampered.body = br#"{"id":"evt_1","type":"order.created","data":{"total":1000}}"#.to_vec();
    messages.push(tampered);

    let whpk: Vec<String> = publics.iter().map(|p| p.to_whpk()).collect();
    let found = ed25519_check::check(&jwks, &whpk, &keys, &messages).await;

    let kids: Vec<String> = publics.iter().map(|p| p.kid().to_owned()).collect();
    assert_eq!(found.kids, kids);
    assert_eq!(found.thumbprints, kids, "kid is the RFC 7638 thumbprint");
    assert_eq!(
        found.public_keys,
        kids.iter().cloned().map(Some).collect::<Vec<_>>(),
        "whpk_ and JWK x are the same key"
    );
    for (i, message) in messages.iter().take(bodies.len()).enumerate() {
        assert_eq!(found.verified[i], kids, "message {i}: both keys verify");
        assert_eq!(
            key_ids[i],
            kids.join(" "),
            "webhook-key-id names them in order"
        );
        // ed25519 is deterministic: Python signing with the same whsk_ gives the same bytes.
        let v1a: Vec<&str> = message
            .signature
            .split(' ')
            .filter(|s| s.starts_with("v1a,"))
            .collect();
        assert_eq!(found.signed[i], v1a, "message {i}");
        assert!(message.signature.starts_with("v1,"), "both: v1 comes first");
    }
    assert!(
        found.verified[bodies.len()].is_empty(),
        "a changed body fails"
    );
}
