//! Reading requests: the caller, path ids, the query string and JSON bodies, each as an axum
//! extractor whose every rejection is a problem response (axum's own extractors answer in
//! plain text). The query-string types also describe themselves to the OpenAPI document from
//! the same declarations that parse them, so the document states exactly what is enforced.

use std::collections::HashMap;

use axum::{
    extract::{FromRequest, FromRequestParts, RawPathParams, Request},
    http::request::Parts,
};
use relay_shared::{
    envelope::parse_json,
    problem::{Problem, is_json, read_body},
};
use serde::de::DeserializeOwned;
use utoipa::openapi::{
    ObjectBuilder, RefOr, Required, Schema, Type,
    path::{Parameter, ParameterBuilder, ParameterIn},
};

use crate::{
    error::{ApiError, FieldError},
    service::{Caller, PageRequest, subscriptions::OwnedSubscription},
    state::AppState,
    store::StoreError,
};

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest cursor (`after`) accepted, in characters.
pub const MAX_CURSOR_LEN: usize = 256;

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // Set by the authentication middleware on every `/v1` route.
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// The path parameters by name; a path that does not decode (`%FF`) names nothing, so it
/// is the 404 of `what`.
async fn path_params(
    parts: &mut Parts,
    what: &'static str,
) -> Result<HashMap<String, String>, ApiError> {
    let params = RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|_| not_found(what))?;
    Ok(params
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn not_found(what: &'static str) -> ApiError {
    if what == "subscription" {
        StoreError::NotFound.into()
    } else {
        StoreError::Missing(what).into()
    }
}

/// A path parameter's OpenAPI description.
fn path_param(name: &str, description: &str, schema: ObjectBuilder) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// Declares a path id extractor: the parameter `{$param}` of a `$what`, its pattern and its
/// description, for parsing and for the document alike.
macro_rules! path_id {
    ($(#[$doc:meta])* $name:ident, $param:literal, $what:literal, $pattern:expr, $description:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
                let mut params = path_params(parts, $what).await?;
                params.remove($param).map(Self).ok_or_else(|| not_found($what))
            }
        }

        impl utoipa::IntoParams for $name {
            fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
                vec![path_param($param, $description, pattern_schema($pattern))]
            }
        }
    };
}

/// A string schema with `pattern`.
fn pattern_schema(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
}

/// ULID-based ids: `<prefix>_` and 26 Crockford base-32 characters.
pub fn ulid_pattern(prefix: &str) -> String {
    format!("^{prefix}_[0-9A-HJKMNP-TV-Z]{{26}}$")
}

/// Names of consumers and ids of events: 1 to `max` of `A-Z a-z 0-9 _ - . :`.
pub fn token_pattern(max: usize) -> String {
    format!("^[A-Za-z0-9_.:-]{{1,{max}}}$")
}

path_id!(
    /// `{id}` of `/v1/events/{id}`.
    EventId,
    "id",
    "event",
    &token_pattern(relay_shared::envelope::MAX_ID_LEN),
    "The event id (the producer's id, or `evt_…`)."
);
path_id!(
    /// `{id}` of `/v1/consumers/{id}…`.
    ConsumerId,
    "id",
    "consumer",
    &token_pattern(relay_shared::envelope::MAX_CONSUMER_LEN),
    "The consumer id."
);
path_id!(
    /// `{key_id}` of `/v1/consumers/{id}/keys/{key_id}`.
    KeyId,
    "key_id",
    "key",
    &ulid_pattern("key"),
    "The key id (`key_…`)."
);
path_id!(
    /// `{id}` of `/v1/replays/{id}`.
    ReplayId,
    "id",
    "replay",
    &ulid_pattern("rpl"),
    "The replay job id (`rpl_…`); another consumer's answers 404."
);
path_id!(
    /// `{session_id}` of `/v1/consumers/{id}/portal-sessions/{session_id}`.
    PortalSessionId,
    "session_id",
    "portal session",
    &ulid_pattern("ps"),
    "The portal session id (`ps_…`)."
);

/// An event type (anchored): dot-separated segments of `a-z 0-9 _ -`.
pub const EVENT_TYPE_PATTERN: &str = "^[a-z0-9_-]+(\\.[a-z0-9_-]+)*$";
/// An event type that may be changed: not one of Relay's own (`relay.…`).
pub const OWN_EVENT_TYPE_PATTERN: &str = "^(?!relay\\.)[a-z0-9_-]+(\\.[a-z0-9_-]+)*$";

path_id!(
    /// `{name}` of `GET /v1/event-types/{name}`.
    EventTypeName,
    "name",
    "event type",
    EVENT_TYPE_PATTERN,
    "The event type, e.g. `order.created`."
);
path_id!(
    /// `{name}` of the changes to `/v1/event-types/{name}`: not Relay's own.
    OwnEventTypeName,
    "name",
    "event type",
    OWN_EVENT_TYPE_PATTERN,
    "The event type, e.g. `order.created`; Relay's own (`relay.…`) cannot be changed (403)."
);

impl FromRequestParts<AppState> for OwnedSubscription {
    type Rejection = ApiError;

    /// The subscription `{id}` of the path, if the caller may act on it: one check, in one
    /// place, for every `/v1/subscriptions/{id}…` route.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let mut params = path_params(parts, "subscription").await?;
        let id = params.remove("id").ok_or(StoreError::NotFound)?;
        state.service.owned_subscription(&caller, &id).await
    }
}

impl utoipa::IntoParams for OwnedSubscription {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![path_param(
            "id",
            "The subscription id (`sub_…`); another consumer's answers 404.",
            pattern_schema(&ulid_pattern("sub")),
        )]
    }
}

/// Query-string parameters, each allowed name at most once.
#[derive(Debug, Default)]
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    /// Parses `raw`, refusing names not in `allowed` (a typo should not silently be ignored)
    /// and repeated names.
    ///
    /// # Errors
    /// A [`FieldError`] naming the parameter.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, FieldError> {
        let mut params = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                return Err(FieldError::new(
                    name.as_ref(),
                    format!(
                        "unknown query parameter; expected one of {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if params.insert(name.to_string(), value.to_string()).is_some() {
                return Err(FieldError::new(
                    name.as_ref(),
                    "query parameter given more than once",
                ));
            }
        }
        Ok(Self(params))
    }

    /// The value of `name`, if given (possibly empty).
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }
}

/// One query parameter: its name, schema and meaning, for parsing (unknown names are
/// refused) and for the document.
pub struct Param {
    /// The name.
    pub name: &'static str,
    /// What it means.
    pub description: String,
    /// Its schema.
    pub schema: Schema,
}

impl std::fmt::Debug for Param {
    // utoipa's schemas implement `Debug` only with its `debug` feature.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Param")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A query string read into a typed value; see [`Query`].
pub trait FromQuery: Sized {
    /// Every parameter allowed.
    fn params() -> Vec<Param>;

    /// Takes the parameters from `query`.
    ///
    /// # Errors
    /// A [`FieldError`] naming the parameter.
    fn from_query(query: &mut QueryParams) -> Result<Self, FieldError>;

    /// The parameters as OpenAPI query parameters.
    fn openapi() -> Vec<Parameter> {
        Self::params()
            .into_iter()
            .map(|p| {
                ParameterBuilder::new()
                    .name(p.name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(p.description))
                    .schema(Some(RefOr::T(p.schema)))
                    .build()
            })
            .collect()
    }
}

/// Implements [`utoipa::IntoParams`] for a [`FromQuery`] type from its own declarations.
macro_rules! query_doc {
    ($name:ty) => {
        impl utoipa::IntoParams for $name {
            fn into_params(
                _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
            ) -> Vec<utoipa::openapi::path::Parameter> {
                <$name as $crate::extract::FromQuery>::openapi()
            }
        }
    };
}
pub(crate) use query_doc;

/// Declares the query of a list that takes only `after` and `limit`, paging as `$paging`.
macro_rules! paged_query {
    ($(#[$doc:meta])* $name:ident, $paging:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub $crate::service::PageRequest);

        impl $crate::extract::FromQuery for $name {
            fn params() -> Vec<$crate::extract::Param> {
                $paging.params().into()
            }

            fn from_query(
                query: &mut $crate::extract::QueryParams,
            ) -> Result<Self, $crate::error::FieldError> {
                Ok(Self($paging.take(query)?))
            }
        }
        $crate::extract::query_doc!($name);
    };
}
pub(crate) use paged_query;

/// The query string as a `T`.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: FromQuery> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let names: Vec<&str> = T::params().iter().map(|p| p.name).collect();
        let mut query = QueryParams::parse(parts.uri.query(), &names)?;
        Ok(Self(T::from_query(&mut query)?))
    }
}

/// The `consumer` query parameter (a consumer id), meaning `description`.
pub fn consumer_param(description: &str) -> Param {
    Param {
        name: "consumer",
        description: description.to_owned(),
        schema: pattern_schema(&token_pattern(relay_shared::envelope::MAX_CONSUMER_LEN))
            .build()
            .into(),
    }
}

/// How a list pages: its default and largest `limit`, and its cursor.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    /// `limit` when absent.
    pub default: u32,
    /// Largest `limit`.
    pub max: u32,
    /// Sequence cursors are digits; id cursors any text.
    pub sequence: bool,
}

impl Paging {
    /// The `after` and `limit` parameters.
    pub fn params(self) -> [Param; 2] {
        let after = if self.sequence {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]{0,18}$"))
        } else {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_CURSOR_LEN))
        };
        [
            Param {
                name: "after",
                description:
                    "The `next_cursor` of the previous page; empty or absent for the start.".into(),
                schema: after.build().into(),
            },
            Param {
                name: "limit",
                description: format!(
                    "Most items in the page, 1 to {} (default {}).",
                    self.max, self.default
                ),
                schema: ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(self.max))
                    .default(Some(self.default.into()))
                    .build()
                    .into(),
            },
        ]
    }

    /// Takes `after` and `limit`.
    ///
    /// # Errors
    /// A [`FieldError`] on either.
    pub fn take(self, query: &mut QueryParams) -> Result<PageRequest, FieldError> {
        let after = query.take("after").unwrap_or_default();
        let valid_after = if self.sequence {
            after.len() <= 18 && after.bytes().all(|b| b.is_ascii_digit())
        } else {
            after.chars().count() <= MAX_CURSOR_LEN
        };
        if !valid_after {
            return Err(FieldError::new(
                "after",
                "after must be a cursor returned as next_cursor",
            ));
        }
        let limit = match query.take("limit") {
            None => self.default,
            Some(raw) => raw
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| raw.parse::<u32>().ok())
                .flatten()
                .filter(|limit| (1..=self.max).contains(limit))
                .ok_or_else(|| {
                    FieldError::new(
                        "limit",
                        format!("limit must be an integer from 1 to {}", self.max),
                    )
                })?,
        };
        Ok(PageRequest { after, limit })
    }
}

/// A JSON request body of at most [`MAX_BODY_BYTES`].
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(Problem::unsupported_media_type().into());
        }
        let bytes = read_body(request.into_body(), MAX_BODY_BYTES).await?;
        Ok(Self(parse_object::<T>(&bytes)?))
    }
}

/// Parses a body that must be a JSON object: serde would also fill a struct from an array.
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.trim_ascii_start().first() == Some(&b'{') {
        Ok(parse_json::<T>(bytes)?)
    } else {
        Err(FieldError::new("", "the body must be a JSON object").into())
    }
}

/// An optional JSON body: none (only whitespace, or `null`) gives `T::default()`.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let json = is_json(request.headers());
        let bytes = read_body(request.into_body(), MAX_BODY_BYTES).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        if !json {
            return Err(Problem::unsupported_media_type().into());
        }
        // `null` is the document's "no body" too.
        if bytes.trim_ascii() == b"null" {
            return Ok(Self(T::default()));
        }
        Ok(Self(parse_object::<T>(&bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGING: Paging = Paging {
        default: 50,
        max: 500,
        sequence: false,
    };

    #[test]
    fn query_parameters_are_checked() {
        let mut q = QueryParams::parse(
            Some("limit=10&after=sub_1&consumer="),
            &["limit", "after", "consumer"],
        )
        .unwrap();
        let page = PAGING.take(&mut q).unwrap();
        assert_eq!((page.after.as_str(), page.limit), ("sub_1", 10));
        assert_eq!(q.take("consumer").as_deref(), Some(""));

        let mut q = QueryParams::parse(None, &["limit"]).unwrap();
        assert_eq!(PAGING.take(&mut q).unwrap().limit, 50);

        for bad in [
            "limit=0",
            "limit=501",
            "limit=ten",
            "limit=-1",
            "limit=",
            "limit=+5",
        ] {
            let mut q = QueryParams::parse(Some(bad), &["limit"]).unwrap();
            assert_eq!(PAGING.take(&mut q).unwrap_err().field, "limit", "{bad}");
        }
        let sequence = Paging {
            sequence: true,
            ..PAGING
        };
        for bad in ["after=x", "after=-1", "after=1234567890123456789"] {
            let mut q = QueryParams::parse(Some(bad), &["after"]).unwrap();
            assert_eq!(sequence.take(&mut q).unwrap_err().field, "after", "{bad}");
        }
        let mut q = QueryParams::parse(Some("after="), &["after"]).unwrap();
        assert_eq!(sequence.take(&mut q).unwrap().after, "");
        assert_eq!(
            QueryParams::parse(Some("limt=5"), &["limit"])
                .unwrap_err()
                .field,
            "limt"
        );
        assert_eq!(
            QueryParams::parse(Some("limit=5&limit=6"), &["limit"])
                .unwrap_err()
                .field,
            "limit"
        );
    }
}
