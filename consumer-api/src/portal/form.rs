//! HTML form posts (`application/x-www-form-urlencoded`), read into their fields; a field may
//! repeat (checkboxes). Bounded like the API's JSON bodies.

use axum::{
    body::to_bytes,
    extract::{FromRequest, Request},
    http::{StatusCode, header},
    response::Response,
};

use super::{layout, state::PortalState};
use crate::extract::MAX_BODY_BYTES;

/// The fields of a posted form, in order.
#[derive(Debug, Clone, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, trimmed; `None` when absent or blank.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A form from its encoded body.
    pub fn parse(body: &[u8]) -> Self {
        Self(
            url::form_urlencoded::parse(body)
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect(),
        )
    }
}

impl FromRequest<PortalState> for Form {
    type Rejection = Response;

    async fn from_request(request: Request, state: &PortalState) -> Result<Self, Response> {
        let is_form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';').next().is_some_and(|t| {
                    t.trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                })
            });
        if !is_form {
            return Err(layout::error_page(
                state,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ));
        }
        let body = to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| layout::error_page(state, StatusCode::PAYLOAD_TOO_LARGE))?;
        Ok(Self::parse(&body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_repeat_and_blank_text_is_absent() {
        let form = Form::parse(b"types=order.*&types=invoice.%23&url=+https%3A%2F%2Fx+&d=");
        assert_eq!(form.all("types"), ["order.*", "invoice.#"]);
        assert_eq!(form.text("url").as_deref(), Some("https://x"));
        assert_eq!(form.text("d"), None);
        assert_eq!(form.get("missing"), None);
    }
}
