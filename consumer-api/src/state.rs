//! What every HTTP handler and middleware can reach: the [`Service`] (everything the API
//! does) and what only HTTP needs (the admin and directory keys, the dispatchers' reports).

use std::sync::Arc;

use axum::extract::FromRef;

use crate::{
    config::{ApiSettings, PortalSettings},
    dispatchers::Reports,
    service::Service,
};

/// The state of the HTTP application. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The operations.
    pub service: Service,
    /// The admin bearer key.
    admin_key: Arc<str>,
    /// The dispatchers' directory keys.
    directory_keys: Arc<[String]>,
    /// The portal's settings (links are minted through the API).
    portal: Arc<PortalSettings>,
    /// What the dispatchers report (subscriptions' status).
    reports: Reports,
}

impl AppState {
    /// State over `service`, with the keys of `api` and the dispatchers' `reports`.
    pub fn new(service: Service, api: &ApiSettings, reports: Reports) -> Self {
        Self {
            service,
            reports,
            admin_key: api.admin_key.as_str().into(),
            directory_keys: api.directory_keys.clone().into(),
            portal: Arc::new(api.portal.clone()),
        }
    }

    /// The portal's settings.
    pub fn portal(&self) -> &PortalSettings {
        &self.portal
    }

    /// The admin bearer key.
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// The dispatchers' directory keys.
    pub fn directory_keys(&self) -> &[String] {
        &self.directory_keys
    }
}

impl FromRef<AppState> for Reports {
    fn from_ref(state: &AppState) -> Self {
        state.reports.clone()
    }
}

impl FromRef<AppState> for Service {
    fn from_ref(state: &AppState) -> Self {
        state.service.clone()
    }
}
