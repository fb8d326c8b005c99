//! What a subscription adds to each request to its endpoint: static headers, and optional
//! basic or bearer credentials. Both are checked when saved; credentials are stored like
//! secrets and never shown in full again.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD};
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// Most custom headers on one subscription.
pub const MAX_HEADERS: usize = 16;
/// Largest total of custom header names and values, in bytes.
pub const MAX_HEADERS_BYTES: usize = 4096;
/// Longest username, password or token, in characters (what an API schema can state).
pub const MAX_CREDENTIAL_LEN: usize = 1024;

/// Headers Relay sets itself, or that belong to one connection, never to a subscription.
const RESERVED: &[&str] = &[
    // Hop-by-hop (RFC 9110 section 7.6.1) and framing.
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    // Set by Relay on every delivery.
    "host",
    "content-type",
    "traceparent",
    "tracestate",
    // Use `credentials`, which is stored like a secret.
    "authorization",
];

/// Why a header or credential was refused; `field` names it (`headers.X-Foo`, `credentials.token`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct EndpointError {
    /// The field at fault.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn refuse<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, EndpointError> {
    Err(EndpointError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// Checked custom headers, names in lower case, ready to add to a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomHeaders(Vec<(HeaderName, HeaderValue)>);

impl CustomHeaders {
    /// Checks headers as a subscription gives them (`{"X-Tenant": "acme"}`).
    ///
    /// # Errors
    /// An [`EndpointError`] naming the header at fault.
    pub fn parse(headers: &BTreeMap<String, String>) -> Result<Self, EndpointError> {
        if headers.len() > MAX_HEADERS {
            return refuse("headers", format!("at most {MAX_HEADERS} headers"));
        }
        let total: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > MAX_HEADERS_BYTES {
            return refuse(
                "headers",
                format!("names and values add up to {total} bytes; at most {MAX_HEADERS_BYTES}"),
            );
        }
        let mut checked: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let field = format!("headers.{name}");
            let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
                return refuse(field, "is not a valid header name");
            };
            let lower = parsed.as_str();
            if RESERVED.contains(&lower) || lower.starts_with("webhook-") {
                return refuse(
                    field,
                    "is set by Relay or the connection (hop-by-hop, webhook-*, content-type, host, \
                     authorization: use credentials)",
                );
            }
            if checked.iter().any(|(n, _)| n == parsed) {
                return refuse(field, "is given twice (header names are case-insensitive)");
            }
            // Visible ASCII and spaces only: no line breaks, nothing a proxy might rewrite.
            if !value
                .bytes()
                .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
            {
                return refuse(field, "value must be visible ASCII");
            }
            let Ok(value) = HeaderValue::from_str(value.trim()) else {
                return refuse(field, "is not a valid header value");
            };
            checked.push((parsed, value));
        }
        Ok(Self(checked))
    }

    /// The headers, in the order of their names as given.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Credentials sent to an endpoint in `Authorization`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "lowercase",
    deny_unknown_fields,
    try_from = "CredentialsObject"
)]
pub enum Credentials {
    /// HTTP basic authentication (RFC 7617).
    Basic {
        /// Username; no `:`.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token (RFC 6750).
    Bearer {
        /// The token.
        token: String,
    },
}

/// [`Credentials`] as they are read: only from a JSON object. serde's internally tagged enums
/// also take an array with the tag first (`["bearer", "t"]`), which the API's schema refuses.
#[derive(Deserialize)]
struct CredentialsObject(serde_json::Map<String, serde_json::Value>);

/// The same shape as [`Credentials`], derived, for reading a [`CredentialsObject`].
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum TaggedCredentials {
    Basic { username: String, password: String },
    Bearer { token: String },
}

impl TryFrom<CredentialsObject> for Credentials {
    type Error = serde_json::Error;

    fn try_from(object: CredentialsObject) -> Result<Self, Self::Error> {
        Ok(
            match serde_json::from_value(serde_json::Value::Object(object.0))? {
                TaggedCredentials::Basic { username, password } => {
                    Self::Basic { username, password }
                }
                TaggedCredentials::Bearer { token } => Self::Bearer { token },
            },
        )
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.redacted(), f)
    }
}

/// What the API shows of credentials: the kind, and the username of basic credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RedactedCredentials {
    /// Basic credentials; the password is never shown.
    Basic {
        /// Username.
        username: String,
    },
    /// A bearer token, never shown.
    Bearer,
}

fn printable(field: &str, value: &str, what: &str) -> Result<(), EndpointError> {
    if value.is_empty() || value.chars().count() > MAX_CREDENTIAL_LEN {
        return refuse(
            field,
            format!("{what} must be 1 to {MAX_CREDENTIAL_LEN} characters"),
        );
    }
    if value.chars().any(char::is_control) {
        return refuse(field, format!("{what} must not contain control characters"));
    }
    Ok(())
}

impl Credentials {
    /// Checks the credentials.
    ///
    /// # Errors
    /// An [`EndpointError`] naming the field at fault.
    pub fn validate(&self) -> Result<(), EndpointError> {
        match self {
            Self::Basic { username, password } => {
                printable("credentials.username", username, "username")?;
                if username.contains(':') {
                    return refuse("credentials.username", "username must not contain ':'");
                }
                printable("credentials.password", password, "password")
            }
            Self::Bearer { token } => {
                printable("credentials.token", token, "token")?;
                // RFC 6750 b64token: what can follow "Bearer " without quoting.
                let body = token.trim_end_matches('=');
                let b64token = !body.is_empty()
                    && body
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
                if b64token {
                    Ok(())
                } else {
                    refuse(
                        "credentials.token",
                        "token must use only A-Z a-z 0-9 - . _ ~ + / and trailing =",
                    )
                }
            }
        }
    }

    /// The `Authorization` value, marked sensitive so it is never logged by the HTTP stack.
    ///
    /// # Errors
    /// An [`EndpointError`] when the credentials were not [validated](Self::validate).
    pub fn authorization(&self) -> Result<HeaderValue, EndpointError> {
        self.validate()?;
        let text = match self {
            Self::Basic { username, password } => {
                format!(
                    "Basic {}",
                    STANDARD.encode(format!("{username}:{password}"))
                )
            }
            Self::Bearer { token } => format!("Bearer {token}"),
        };
        let mut value = HeaderValue::from_str(&text).map_err(|_| EndpointError {
            field: String::from("credentials"),
            reason: String::from("cannot be sent as a header"),
        })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// What may be shown.
    pub fn redacted(&self) -> RedactedCredentials {
        match self {
            Self::Basic { username, .. } => RedactedCredentials::Basic {
                username: username.clone(),
            },
            Self::Bearer { .. } => RedactedCredentials::Bearer,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn credentials_are_read_only_from_an_object() {
        let read = |json: &str| serde_json::from_str::<Credentials>(json);
        assert!(read(r#"["bearer", "t"]"#).is_err());
        assert!(read(r#"{"type": "bearer", "token": "t", "extra": 1}"#).is_err());
        assert_eq!(
            read(r#"{"type": "bearer", "token": "t"}"#).unwrap(),
            Credentials::Bearer { token: "t".into() }
        );
        assert_eq!(
            read(r#"{"type": "basic", "username": "u", "password": "p"}"#).unwrap(),
            Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn ordinary_headers_are_kept_in_lower_case() {
        let parsed = CustomHeaders::parse(&headers(&[
            ("X-Tenant", "acme"),
            ("User-Agent", "acme-relay"),
            ("x-api-key", " k1 "),
        ]))
        .unwrap();
        let got: Vec<(&str, &str)> = parsed
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("user-agent", "acme-relay"),
                ("x-tenant", "acme"),
                ("x-api-key", "k1")
            ]
        );
        assert!(CustomHeaders::parse(&BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn forbidden_and_malformed_headers_are_refused_by_name() {
        for name in [
            "Connection",
            "Transfer-Encoding",
            "TE",
            "Upgrade",
            "Host",
            "Content-Type",
            "content-length",
            "Webhook-Signature",
            "webhook-id",
            "Webhook-Anything",
            "Authorization",
            "Proxy-Authorization",
            "traceparent",
        ] {
            let e = CustomHeaders::parse(&headers(&[(name, "x")])).unwrap_err();
            assert_eq!(e.field, format!("headers.{name}"), "{name}");
        }
        for (name, value) in [
            ("X Bad", "x"),
            ("", "x"),
            ("X-Ok", "line\r\nX-Injected: 1"),
            ("X-Ok", "caf\u{e9}"),
        ] {
            let e = CustomHeaders::parse(&headers(&[(name, value)])).unwrap_err();
            assert_eq!(e.field, format!("headers.{name}"), "{name}: {value:?}");
        }
        let twice = CustomHeaders::parse(&headers(&[("X-A", "1"), ("x-a", "2")])).unwrap_err();
        assert!(twice.reason.contains("twice"), "{twice}");
    }

    #[test]
    fn count_and_size_are_capped() {
        let many: BTreeMap<String, String> = (0..=MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), String::from("v")))
            .collect();
        assert_eq!(CustomHeaders::parse(&many).unwrap_err().field, "headers");
        let big = headers(&[("x-big", &"v".repeat(MAX_HEADERS_BYTES))]);
        assert!(
            CustomHeaders::parse(&big)
                .unwrap_err()
                .reason
                .contains("bytes")
        );
    }

    #[test]
    fn credentials_make_the_authorization_header_and_are_never_shown() {
        let basic: Credentials = serde_json::from_value(
            json!({"type": "basic", "username": "Aladdin", "password": "open sesame"}),
        )
        .unwrap();
        let value = basic.authorization().unwrap();
        assert_eq!(value, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(value.is_sensitive());
        let bearer: Credentials =
            serde_json::from_value(json!({"type": "bearer", "token": "tok.en-1/2+3=="})).unwrap();
        assert_eq!(bearer.authorization().unwrap(), "Bearer tok.en-1/2+3==");
        assert_eq!(
            serde_json::to_value(basic.redacted()).unwrap(),
            json!({"type": "basic", "username": "Aladdin"})
        );
        assert_eq!(
            serde_json::to_value(bearer.redacted()).unwrap(),
            json!({"type": "bearer"})
        );
        let debug = format!("{basic:?} {bearer:?}");
        assert!(
            !debug.contains("sesame") && !debug.contains("tok.en"),
            "{debug}"
        );
    }

    #[test]
    fn bad_credentials_are_refused_by_field() {
        let cases = [
            (
                json!({"type": "basic", "username": "a:b", "password": "p"}),
                "credentials.username",
            ),
            (
                json!({"type": "basic", "username": "", "password": "p"}),
                "credentials.username",
            ),
            (
                json!({"type": "basic", "username": "a", "password": "p\n"}),
                "credentials.password",
            ),
            (
                json!({"type": "bearer", "token": "has space"}),
                "credentials.token",
            ),
            (
                json!({"type": "bearer", "token": "==="}),
                "credentials.token",
            ),
        ];
        for (json, field) in cases {
            let credentials: Credentials = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(credentials.validate().unwrap_err().field, field, "{json}");
        }
        for json in [
            json!({"type": "digest", "token": "x"}),
            json!({"type": "bearer", "token": "x", "extra": 1}),
            json!({"type": "basic", "username": "a"}),
        ] {
            assert!(
                serde_json::from_value::<Credentials>(json.clone()).is_err(),
                "{json}"
            );
        }
    }
}
