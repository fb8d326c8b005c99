//! DNS resolution that refuses forbidden destinations at connect time: every address a
//! webhook host resolves to is checked against the network policy, so a hostname cannot be
//! validated as public and then re-resolve (DNS rebinding) to an internal address.

use std::{net::SocketAddr, sync::Arc};

use relay_shared::ssrf::{NetworkPolicy, SsrfError};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A resolver that drops refused addresses, and fails when none is left.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<NetworkPolicy>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<NetworkPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused: Option<SsrfError> = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> = match refused {
                    Some(e) => Box::new(e),
                    None => format!("{host} resolved to no address").into(),
                };
                return Err(err);
            }
            // If any address is refused, refuse the host outright: a rebinding attack mixes
            // public and internal answers, and connecting to "the public one" is not a guarantee.
            if let Some(e) = refused {
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}
