//! Outgoing HTTP requests to addresses users choose (URL previews, push gateways), guarded
//! against server-side request forgery.
//!
//! Every connection goes through a client whose DNS resolver ([`GuardedResolver`]) looks the
//! host up itself and refuses the host when any address it resolves to is not allowed by the
//! [`IpFilter`], so the address checked is the address connected to (no second lookup an
//! attacker's DNS could answer differently). IP literals never reach a resolver, so callers
//! check them in the URL (and in every redirect) with [`blocked_literal`]. Each user of this
//! module has its own allow list (`media.url_preview_ip_range_allowlist`,
//! `push.ip_range_allowlist`).

pub mod ip_filter;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

pub use ip_filter::IpFilter;
use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    Url,
};

/// A refused address, carried through reqwest's error chain so it can be told apart from
/// ordinary network failures ([`find_blocked`]).
#[derive(Debug, thiserror::Error)]
#[error("{0} is not an allowed address")]
pub struct Blocked(pub String);

/// Looks names up and refuses them when any address is not allowed.
pub struct GuardedResolver {
    pub filter: Arc<IpFilter>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let filter = self.filter.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| !filter.is_allowed(a.ip())) {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(Blocked(format!("{host} ({})", bad.ip())));
                return Err(err);
            }
            if addrs.is_empty() {
                return Err(format!("{host} has no addresses").into());
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The refusal, if the URL's host is an IP literal the filter does not allow. (The URL parser
/// has normalised IPv4 literals in any spelling, "2130706433" or "0x7f.1", to dotted quads,
/// and IPv6 ones to bracketed canonical form.) Host names are checked when resolved.
pub fn blocked_literal(url: &Url, filter: &IpFilter) -> Option<Blocked> {
    let host = url.host_str()?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(ip) if !filter.is_allowed(ip) => Some(Blocked(ip.to_string())),
        _ => None,
    }
}

/// The refused address anywhere in a reqwest error's chain of causes, as a message.
pub fn find_blocked(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(blocked) = err.downcast_ref::<Blocked>() {
            return Some(blocked.to_string());
        }
        source = err.source();
    }
    None
}
