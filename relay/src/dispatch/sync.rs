//! Keeps the directory current: a full snapshot from consumer-api at start, after every
//! reconnect and every `dispatch.directory_refresh`; live `relay.control` notifications come
//! through [`relay_shared::control_feed`], which asks for a reload after every (re)bind.

use std::{sync::Arc, time::Duration};

use relay_shared::{ops::Readiness, shutdown::Shutdown, subscription::DirectoryPage};
use tokio::sync::Notify;

use super::{directory::Directory, metrics::DispatchMetrics};

/// Readiness condition name for the directory.
pub const READY_DIRECTORY: &str = "directory";

/// Why a snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// consumer-api could not be reached or answered badly.
    #[error("directory request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// consumer-api answered with an error status.
    #[error("consumer-api answered HTTP {0} for the directory")]
    Status(u16),
}

/// Loads snapshots from consumer-api.
#[derive(Debug, Clone)]
pub struct DirectoryClient {
    http: reqwest::Client,
    url: String,
    admin_key: String,
}

impl DirectoryClient {
    /// A loader for consumer-api at `base_url`.
    ///
    /// # Errors
    /// The HTTP client could not be built.
    pub fn new(base_url: &str, admin_key: &str) -> reqwest::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            url: format!("{}/v1/directory", base_url.trim_end_matches('/')),
            admin_key: admin_key.to_owned(),
        })
    }

    /// Asks consumer-api to disable a subscription (every dispatcher then drops it through
    /// the control notification).
    ///
    /// # Errors
    /// consumer-api could not be reached or refused.
    pub async fn disable(&self, subscription_id: &str, reason: &str) -> Result<(), SnapshotError> {
        let base = self.url.trim_end_matches("/v1/directory");
        let response = self
            .http
            .post(format!("{base}/v1/subscriptions/{subscription_id}/disable"))
            .bearer_auth(&self.admin_key)
            .json(&serde_json::json!({ "reason": reason }))
            .send()
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(SnapshotError::Status(response.status().as_u16()))
        }
    }

    /// Fetches every page and installs the result.
    ///
    /// # Errors
    /// A [`SnapshotError`]; the directory is left as it was.
    pub async fn load_into(&self, directory: &Directory) -> Result<usize, SnapshotError> {
        directory.begin_snapshot();
        match self.fetch_all().await {
            Ok(entries) => {
                let n = entries.len();
                directory.finish_snapshot(entries);
                Ok(n)
            }
            Err(e) => {
                directory.abort_snapshot();
                Err(e)
            }
        }
    }

    async fn fetch_all(
        &self,
    ) -> Result<Vec<relay_shared::subscription::DirectoryEntry>, SnapshotError> {
        let mut entries = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = self
                .http
                .get(&self.url)
                .bearer_auth(&self.admin_key)
                .query(&[("limit", "1000")]);
            if let Some(cursor) = &after {
                request = request.query(&[("after", cursor)]);
            }
            let response = request.send().await?;
            if !response.status().is_success() {
                return Err(SnapshotError::Status(response.status().as_u16()));
            }
            let page: DirectoryPage = response.json().await?;
            entries.extend(page.data);
            match page.next_cursor {
                Some(cursor) if page.has_more => after = Some(cursor),
                _ => return Ok(entries),
            }
        }
    }
}

/// Reloads the snapshot periodically and whenever `reload` is notified; marks the directory
/// ready once the first load succeeded.
pub async fn refresh_loop(
    loader: DirectoryClient,
    directory: Arc<Directory>,
    refresh: Duration,
    reload: Arc<Notify>,
    readiness: Readiness,
    metrics: DispatchMetrics,
    mut shutdown: Shutdown,
) {
    readiness.not_ready(READY_DIRECTORY, "not loaded yet");
    let mut loaded_once = false;
    loop {
        let wait = match loader.load_into(&directory).await {
            Ok(n) => {
                metrics
                    .subscriptions_loaded
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
                if !loaded_once {
                    tracing::info!(subscriptions = n, "directory loaded");
                    readiness.ready(READY_DIRECTORY);
                    loaded_once = true;
                }
                refresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the subscription directory; retrying");
                if !loaded_once {
                    readiness.not_ready(READY_DIRECTORY, e.to_string());
                }
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = reload.notified() => {}
            () = shutdown.wait() => return,
        }
    }
}
