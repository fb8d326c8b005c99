//! Standard Webhooks signatures, symmetric (`v1`) and asymmetric (`v1a`).
//!
//! Signed content is `{id}.{timestamp}.{body}`.
//! - `v1`: base64(HMAC-SHA256(key, content)), where the key is the base64-decoded `whsec_…`
//!   secret without its prefix.
//! - `v1a`: base64(ed25519 signature of content), with the key pair serialised as `whsk_` +
//!   base64(32-byte seed) for the signing key and `whpk_` + base64(32-byte public key), as the
//!   specification and its reference libraries do. Public keys are also published as a JWKS
//!   (RFC 8037 `OKP`/`Ed25519`), each with the RFC 7638 thumbprint as its `kid`.
//!
//! During a rotation every current key signs; all signatures go in one header, space separated.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use ed25519_dalek::{Signer as _, Verifier as _};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// A decoded signing key, keyed into its HMAC state once: each signature then starts from a
/// copy of that state instead of hashing the key's pads again.
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

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
        Ok(Self(
            Hmac::<Sha256>::new_from_slice(&raw).unwrap_or_else(|_| unreachable_key()),
        ))
    }

    /// The `v1,…` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(V1_LEN);
        self.sign_into(msg_id, timestamp, body, &mut out);
        out
    }

    /// Appends the `v1,…` signature of one message to `out`, without allocating when `out`
    /// has room.
    fn sign_into(&self, msg_id: &str, timestamp: i64, body: &[u8], out: &mut String) {
        let mut mac = self.0.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(itoa::Buffer::new().format(timestamp).as_bytes());
        mac.update(b".");
        mac.update(body);
        out.push_str("v1,");
        STANDARD.encode_string(mac.finalize().into_bytes(), out);
    }
}

/// Length of one `v1,…` signature: the prefix and 32 bytes in padded base64.
const V1_LEN: usize = 3 + 44;

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
    let mut header = String::with_capacity(keys.len() * (V1_LEN + 1));
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            header.push(' ');
        }
        key.sign_into(msg_id, timestamp, body, &mut header);
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

/// Which signatures a subscription's deliveries carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureScheme {
    /// HMAC-SHA256 with the `whsec_` secret (the default; what every receiver library checks).
    #[default]
    V1,
    /// ed25519 with the subscription's `whsk_` key; receivers verify with the public key.
    V1a,
    /// Both, so a receiver can move from `v1` to `v1a` without a gap.
    Both,
}

impl SignatureScheme {
    /// Whether deliveries carry `v1,…` signatures.
    pub const fn signs_v1(self) -> bool {
        matches!(self, Self::V1 | Self::Both)
    }

    /// Whether deliveries carry `v1a,…` signatures.
    pub const fn signs_v1a(self) -> bool {
        matches!(self, Self::V1a | Self::Both)
    }

    /// The name used in the API and the configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V1a => "v1a",
            Self::Both => "both",
        }
    }
}

impl std::str::FromStr for SignatureScheme {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" => Ok(Self::V1),
            "v1a" => Ok(Self::V1a),
            "both" => Ok(Self::Both),
            other => Err(format!(
                "signature scheme {other:?} must be one of v1, v1a, both"
            )),
        }
    }
}

/// Prefix of a serialised ed25519 signing key.
pub const ASYMMETRIC_SECRET_PREFIX: &str = "whsk_";
/// Prefix of a serialised ed25519 public key.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";
/// Header naming the `kid` of each `v1a` signature, in the order they appear in
/// `webhook-signature` (space separated), so a receiver picks the key from the JWKS at once.
pub const KEY_ID_HEADER: &str = "webhook-key-id";

/// Why an ed25519 key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key does not start with the expected prefix.
    #[error("key must start with {0}")]
    MissingPrefix(&'static str),
    /// The part after the prefix is not base64.
    #[error("key is not base64 after its prefix")]
    NotBase64,
    /// Not 32 bytes once decoded.
    #[error("key must decode to 32 bytes")]
    BadLength,
    /// 32 bytes, but not a point on the curve.
    #[error("not a valid ed25519 public key")]
    NotOnCurve,
}

fn decode_32(key: &str, prefix: &'static str) -> Result<[u8; 32], KeyError> {
    let encoded = key
        .strip_prefix(prefix)
        .ok_or(KeyError::MissingPrefix(prefix))?;
    let raw = STANDARD.decode(encoded).map_err(|_| KeyError::NotBase64)?;
    raw.try_into().map_err(|_| KeyError::BadLength)
}

/// The bytes an ed25519 signature covers: `{id}.{timestamp}.{body}` in one buffer.
fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut content = Vec::with_capacity(msg_id.len() + ts.len() + body.len() + 2);
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(ts.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// A decoded ed25519 signing key (`whsk_…`) with its public half and `kid`.
#[derive(Clone)]
pub struct AsymmetricKey {
    key: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl std::fmt::Debug for AsymmetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsymmetricKey")
            .field("kid", &self.public.kid)
            .finish_non_exhaustive()
    }
}

impl AsymmetricKey {
    /// Decodes a `whsk_…` key (base64 of the 32-byte seed).
    ///
    /// # Errors
    /// A [`KeyError`] saying what is wrong with it.
    pub fn parse(secret: &str) -> Result<Self, KeyError> {
        let seed = decode_32(secret, ASYMMETRIC_SECRET_PREFIX)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = PublicKey::from_verifying_key(key.verifying_key());
        Ok(Self { key, public })
    }

    /// The `v1a,…` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        self.sign_content(&signed_content(msg_id, timestamp, body))
    }

    fn sign_content(&self, content: &[u8]) -> String {
        let signature = self.key.sign(content);
        format!("v1a,{}", STANDARD.encode(signature.to_bytes()))
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
}

/// A new random ed25519 signing key, serialised as `whsk_…`.
pub fn generate_asymmetric_key() -> String {
    format!(
        "{ASYMMETRIC_SECRET_PREFIX}{}",
        STANDARD.encode(crate::ids::random_bytes::<32>())
    )
}

/// An ed25519 public key (`whpk_…`), what receivers verify `v1a` signatures with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    kid: String,
}

impl PublicKey {
    /// Decodes a `whpk_…` key.
    ///
    /// # Errors
    /// A [`KeyError`] saying what is wrong with it.
    pub fn parse(public: &str) -> Result<Self, KeyError> {
        let bytes = decode_32(public, PUBLIC_KEY_PREFIX)?;
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotOnCurve)?;
        Ok(Self::from_verifying_key(key))
    }

    fn from_verifying_key(key: ed25519_dalek::VerifyingKey) -> Self {
        // RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
        let x = URL_SAFE_NO_PAD.encode(key.as_bytes());
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        Self { key, kid }
    }

    /// The key's RFC 7638 JWK thumbprint, its `kid` in the JWKS and in [`KEY_ID_HEADER`].
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `whpk_…` serialisation.
    pub fn to_whpk(&self) -> String {
        format!(
            "{PUBLIC_KEY_PREFIX}{}",
            STANDARD.encode(self.key.as_bytes())
        )
    }

    /// The key as a JSON Web Key (RFC 8037).
    pub fn to_jwk(&self) -> Jwk {
        Jwk {
            kty: String::from("OKP"),
            crv: String::from("Ed25519"),
            x: URL_SAFE_NO_PAD.encode(self.key.as_bytes()),
            kid: self.kid.clone(),
            key_use: String::from("sig"),
            alg: String::from("EdDSA"),
        }
    }

    /// What a receiver does: true when any `v1a` signature in `header` verifies with this key.
    /// Receivers should also bound the timestamp's age.
    pub fn verify(&self, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let content = signed_content(msg_id, timestamp, body);
        header
            .split(' ')
            .filter_map(|sig| sig.strip_prefix("v1a,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .filter_map(|raw| ed25519_dalek::Signature::from_slice(&raw).ok())
            .any(|sig| self.key.verify(&content, &sig).is_ok())
    }
}

/// One public key in a JWKS (RFC 7517, with the RFC 8037 `OKP` members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The public key, base64url without padding.
    pub x: String,
    /// RFC 7638 thumbprint; the value of [`KEY_ID_HEADER`] for signatures made with this key.
    pub kid: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub key_use: String,
    /// Always `EdDSA`.
    pub alg: String,
}

/// A JSON Web Key Set: `{"keys": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys, newest first.
    pub keys: Vec<Jwk>,
}

/// Every key one subscription signs with, parsed once: the HMAC secrets its scheme uses and
/// its ed25519 keys (newest first each; more than one of a kind during a rotation).
#[derive(Debug, Clone)]
pub struct Signer {
    hmac: Vec<SigningKey>,
    ed25519: Vec<AsymmetricKey>,
}

/// The signature headers of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// `webhook-signature`: every signature, space separated (`v1` ones first).
    pub signature: String,
    /// [`KEY_ID_HEADER`]: the `kid` of each `v1a` signature in order; `None` without any.
    pub key_ids: Option<String>,
}

/// Why a [`Signer`] could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    /// A `whsec_` secret is unusable.
    #[error("secret: {0}")]
    Secret(#[from] SecretError),
    /// A `whsk_` key is unusable.
    #[error("signing key: {0}")]
    Key(#[from] KeyError),
    /// The scheme asks for a kind of key the subscription does not have.
    #[error("scheme {0} needs at least one {1} key")]
    Missing(&'static str, &'static str),
}

impl Signer {
    /// Parses what `scheme` uses out of `secrets` (`whsec_…`) and `signing_keys` (`whsk_…`);
    /// keys the scheme does not use are ignored.
    ///
    /// # Errors
    /// A [`SignerError`] when a used key is malformed or the scheme has no key of its kind.
    pub fn new(
        scheme: SignatureScheme,
        secrets: &[String],
        signing_keys: &[String],
    ) -> Result<Self, SignerError> {
        let hmac = if scheme.signs_v1() {
            secrets
                .iter()
                .map(|s| SigningKey::parse(s))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let ed25519 = if scheme.signs_v1a() {
            signing_keys
                .iter()
                .map(|k| AsymmetricKey::parse(k))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        if scheme.signs_v1() && hmac.is_empty() {
            return Err(SignerError::Missing(scheme.as_str(), "whsec_"));
        }
        if scheme.signs_v1a() && ed25519.is_empty() {
            return Err(SignerError::Missing(scheme.as_str(), "whsk_"));
        }
        Ok(Self { hmac, ed25519 })
    }

    /// The headers for one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Signatures {
        let mut signature = signature_header(&self.hmac, msg_id, timestamp, body);
        if self.ed25519.is_empty() {
            return Signatures {
                signature,
                key_ids: None,
            };
        }
        let content = signed_content(msg_id, timestamp, body);
        let mut key_ids = String::with_capacity(self.ed25519.len() * 44);
        for key in &self.ed25519 {
            if !signature.is_empty() {
                signature.push(' ');
            }
            signature.push_str(&key.sign_content(&content));
            if !key_ids.is_empty() {
                key_ids.push(' ');
            }
            key_ids.push_str(key.public_key().kid());
        }
        Signatures {
            signature,
            key_ids: Some(key_ids),
        }
    }
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

    // The reference vector of the specification's Go library (webhook_asymmetric_test.go).
    const V1A_KEY: &str = "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
    const V1A_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const V1A_TS: i64 = 1_614_265_330;
    const V1A_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const V1A_SIG: &str = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";

    #[test]
    fn v1a_matches_the_reference_vector_and_verifies_with_the_public_key() {
        let key = AsymmetricKey::parse(V1A_KEY).unwrap();
        assert_eq!(key.sign(V1A_ID, V1A_TS, V1A_BODY), V1A_SIG);
        let public = PublicKey::parse(&key.public_key().to_whpk()).unwrap();
        assert_eq!(&public, key.public_key());
        assert!(public.verify(V1A_ID, V1A_TS, V1A_BODY, V1A_SIG));
        assert!(public.verify(V1A_ID, V1A_TS, V1A_BODY, &format!("v1,AAAA {V1A_SIG}")));
        assert!(!public.verify(V1A_ID, V1A_TS + 1, V1A_BODY, V1A_SIG));
        assert!(!public.verify(V1A_ID, V1A_TS, b"{}", V1A_SIG));
        assert!(!public.verify(V1A_ID, V1A_TS, V1A_BODY, "v1a,"));
        // A v1 signature with the same bytes is not a v1a one.
        assert!(!public.verify(V1A_ID, V1A_TS, V1A_BODY, &V1A_SIG.replacen("v1a", "v1", 1)));
    }

    #[test]
    fn kid_is_the_rfc_7638_thumbprint_and_the_jwk_follows_rfc_8037() {
        // RFC 8037, appendix A.1 (key) and A.3 (thumbprint).
        let seed = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let key = AsymmetricKey::parse(&format!(
            "{ASYMMETRIC_SECRET_PREFIX}{}",
            STANDARD.encode(seed)
        ))
        .unwrap();
        let jwk = key.public_key().to_jwk();
        assert_eq!(jwk.x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(jwk.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        let json = serde_json::to_value(Jwks { keys: vec![jwk] }).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"keys": [{
                "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                "kid": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k", "use": "sig", "alg": "EdDSA"
            }]})
        );
    }

    #[test]
    fn both_carries_v1_then_v1a_and_names_the_key() {
        let signer = Signer::new(
            SignatureScheme::Both,
            &[SECRET.to_owned()],
            &[V1A_KEY.to_owned()],
        )
        .unwrap();
        let signed = signer.sign(V1A_ID, V1A_TS, V1A_BODY);
        let parts: Vec<&str> = signed.signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts[0].starts_with("v1,"));
        assert_eq!(parts[1], V1A_SIG);
        assert!(verify(SECRET, V1A_ID, V1A_TS, V1A_BODY, &signed.signature));
        let public = AsymmetricKey::parse(V1A_KEY).unwrap().public_key().clone();
        assert_eq!(signed.key_ids.as_deref(), Some(public.kid()));
    }

    #[test]
    fn each_scheme_signs_with_its_keys_only() {
        let secrets = [SECRET.to_owned()];
        let keys = [V1A_KEY.to_owned()];
        let v1 = Signer::new(SignatureScheme::V1, &secrets, &keys)
            .unwrap()
            .sign(ID, 1, BODY);
        assert!(v1.signature.starts_with("v1,") && !v1.signature.contains(' '));
        assert_eq!(v1.key_ids, None);
        let v1a = Signer::new(SignatureScheme::V1a, &secrets, &keys)
            .unwrap()
            .sign(ID, 1, BODY);
        assert!(v1a.signature.starts_with("v1a,") && !v1a.signature.contains(' '));
        assert!(!verify(SECRET, ID, 1, BODY, &v1a.signature));
        // A scheme without its kind of key is refused; an unused malformed key is ignored.
        assert_eq!(
            Signer::new(SignatureScheme::V1a, &secrets, &[]).unwrap_err(),
            SignerError::Missing("v1a", "whsk_")
        );
        assert_eq!(
            Signer::new(SignatureScheme::Both, &[], &keys).unwrap_err(),
            SignerError::Missing("both", "whsec_")
        );
        assert!(Signer::new(SignatureScheme::V1, &secrets, &["junk".to_owned()]).is_ok());
    }

    #[test]
    fn rotation_signs_with_every_current_key() {
        let (old, new) = (generate_asymmetric_key(), generate_asymmetric_key());
        let signer = Signer::new(SignatureScheme::V1a, &[], &[new.clone(), old.clone()]).unwrap();
        let signed = signer.sign(ID, 7, BODY);
        assert_eq!(signed.signature.split(' ').count(), 2);
        let kids: Vec<&str> = signed.key_ids.as_deref().unwrap().split(' ').collect();
        for (key, kid) in [&new, &old].into_iter().zip(kids) {
            let public = AsymmetricKey::parse(key).unwrap().public_key().clone();
            assert_eq!(public.kid(), kid);
            assert!(public.verify(ID, 7, BODY, &signed.signature));
        }
        let stranger = AsymmetricKey::parse(&generate_asymmetric_key()).unwrap();
        assert!(!stranger.public_key().verify(ID, 7, BODY, &signed.signature));
    }

    #[test]
    fn malformed_keys_and_schemes_are_refused() {
        assert_eq!(
            AsymmetricKey::parse(SECRET).unwrap_err(),
            KeyError::MissingPrefix(ASYMMETRIC_SECRET_PREFIX)
        );
        assert_eq!(
            AsymmetricKey::parse("whsk_!!").unwrap_err(),
            KeyError::NotBase64
        );
        assert_eq!(
            AsymmetricKey::parse("whsk_AAAA").unwrap_err(),
            KeyError::BadLength
        );
        assert_eq!(
            PublicKey::parse(V1A_KEY).unwrap_err(),
            KeyError::MissingPrefix(PUBLIC_KEY_PREFIX)
        );
        assert!(generate_asymmetric_key().starts_with(ASYMMETRIC_SECRET_PREFIX));
        assert_eq!("both".parse(), Ok(SignatureScheme::Both));
        assert!("v2".parse::<SignatureScheme>().is_err());
        assert_eq!(
            serde_json::from_str::<SignatureScheme>(r#""v1a""#).unwrap(),
            SignatureScheme::V1a
        );
        assert_eq!(SignatureScheme::default(), SignatureScheme::V1);
    }
}
