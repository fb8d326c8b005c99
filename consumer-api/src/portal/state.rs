//! What every portal handler reaches: the [`PortalState`] and the open [`Session`] (its
//! extractor is in [`super::session`]).

use std::sync::Arc;

use crate::{config::PortalSettings, service::Service, service::portal::PortalContext};

/// What every portal handler can reach.
#[derive(Debug, Clone)]
pub struct PortalState {
    /// The operations, shared with the JSON API.
    pub service: Service,
    /// `[api.portal]`.
    pub settings: Arc<PortalSettings>,
    /// The session cookie is `Secure` (the public URL is `https`).
    pub secure_cookie: bool,
}

impl PortalState {
    /// The path of a portal page, e.g. `href("/endpoints")` → `/portal/endpoints`.
    pub fn href(&self, rest: &str) -> String {
        format!("{}{rest}", self.settings.path)
    }
}

/// The name of the CSRF field of every form.
pub const CSRF_FIELD: &str = "csrf";

/// An open session, with its CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    /// Whom it shows, and how.
    pub context: PortalContext,
    /// The CSRF token forms must carry.
    pub csrf: String,
}
