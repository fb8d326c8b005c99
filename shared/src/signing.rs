//! Standard Webhooks signatures.
//!
//! Signed content is `{id}.{timestamp}.{body}`; the signature is `v1,` followed by
//! base64(HMAC-SHA256(key, content)), where the key is the base64-decoded secret without its
//! `whsec_` prefix. During a rotation every current secret signs, space separated.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of every secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a generated secret (Standard Webhooks asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// Why a secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The secret does not start with `whsec_`.
    #[error("secret must start with {SECRET_PREFIX}")]
    MissingPrefix,
    /// The part after the prefix is not base64.
    #[error("secret is not base64 after its {SECRET_PREFIX} prefix")]
    NotBase64,
    /// Too short to be a safe HMAC key.
    #[error("secret must decode to 24 to 64 bytes")]
    BadLength,
}

/// A decoded signing key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Decodes a `whsec_…` secret.
    ///
    /// # Errors
    /// A [`SecretError`] saying what is wrong with it.
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        let encoded = secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let raw = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if !(24..=64).contains(&raw.len()) {
            return Err(SecretError::BadLength);
        }
        Ok(Self(raw))
    }

    /// The `v1,…` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_key());
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

fn unreachable_key() -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this is only reached if that ever changes.
    unreachable!("HMAC-SHA256 accepts any key length")
}

/// A new random `whsec_…` secret.
pub fn generate_secret() -> String {
    format!(
        "{SECRET_PREFIX}{}",
        STANDARD.encode(crate::ids::random_bytes::<SECRET_BYTES>())
    )
}

/// The `webhook-signature` header value: one signature per key, space separated.
pub fn signature_header(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = String::with_capacity(keys.len() * 48);
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            header.push(' ');
        }
        header.push_str(&key.sign(msg_id, timestamp, body));
    }
    header
}

/// What a receiver does: true when any signature in `header` was made with `secret`.
/// Used by the tests and the benchmark sink; receivers should also bound the timestamp's age.
pub fn verify(secret: &str, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Ok(key) = SigningKey::parse(secret) else {
        return false;
    };
    let expected = key.sign(msg_id, timestamp, body);
    header
        .split(' ')
        .any(|sig| sig.as_bytes().ct_eq(expected.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(
            key.sign(ID, 1_649_367_553, BODY),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn rotation_header_carries_both_and_each_verifies() {
        let new = generate_secret();
        let keys = [
            SigningKey::parse(SECRET).unwrap(),
            SigningKey::parse(&new).unwrap(),
        ];
        let header = signature_header(&keys, ID, 1_649_367_553, BODY);
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify(SECRET, ID, 1_649_367_553, BODY, &header));
        assert!(verify(&new, ID, 1_649_367_553, BODY, &header));
        assert!(!verify(
            &generate_secret(),
            ID,
            1_649_367_553,
            BODY,
            &header
        ));
        assert!(!verify(SECRET, ID, 1_649_367_554, BODY, &header));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(
            SigningKey::parse("C2FVsBQIhrscChlQIMV").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert_eq!(
            SigningKey::parse("whsec_!!!").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(
            SigningKey::parse("whsec_AAAA").unwrap_err(),
            SecretError::BadLength
        );
        assert!(generate_secret().starts_with(SECRET_PREFIX));
    }
}
