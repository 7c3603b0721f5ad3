//! Where a registered worker's endpoint may point (workers.md §9): an http(s) URL with a host and
//! nothing that steers the calls elsewhere (no userinfo, query or fragment), never at link-local
//! or cloud-metadata addresses, and inside `workers.allowed_networks` when the operator pinned
//! them. Checked when a worker registers, and again each time a name is resolved to connect (a
//! name that resolves somewhere harmless at registration cannot be re-pointed later).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use url::{Host, Url};

/// How long a registration waits for the endpoint's name to resolve.
const RESOLVE_WITHIN: Duration = Duration::from_secs(2);

/// Names of cloud metadata services, refused whatever they resolve to.
const METADATA_NAMES: &[&str] = &["metadata.google.internal", "metadata", "instance-data", "metadata.azure.internal"];

/// The rules for worker endpoints.
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicy {
    /// Empty: anywhere not refused.
    allowed: Vec<IpNet>,
}

impl EndpointPolicy {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        EndpointPolicy { allowed }
    }

    /// Why `ip` may not be a worker's address, if it may not.
    pub fn refuses(&self, ip: IpAddr) -> Option<String> {
        let ip = canonical(ip);
        if let Some(what) = never(ip) {
            return Some(format!("{ip} is {what}"));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|net| net.contains(&ip)) {
            return Some(format!("{ip} is outside workers.allowed_networks"));
        }
        None
    }

    /// The endpoint as a URL the service will call, or why not (in words for the registrant).
    pub fn check_url(&self, text: &str) -> Result<String, String> {
        let url = Url::parse(text.trim()).map_err(|e| format!("is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("must be http:// or https://, not {}://", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry a user name or password".to_owned());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must not have a query (?…) or a fragment (#…): the service adds its own paths".to_owned());
        }
        match url.host() {
            None => return Err("has no host".to_owned()),
            Some(Host::Ipv4(ip)) => self.refuses(IpAddr::V4(ip)).map_or(Ok(()), Err)?,
            Some(Host::Ipv6(ip)) => self.refuses(IpAddr::V6(ip)).map_or(Ok(()), Err)?,
            Some(Host::Domain(name)) => {
                if METADATA_NAMES.contains(&name.trim_end_matches('.').to_ascii_lowercase().as_str()) {
                    return Err(format!("{name} is a cloud metadata service"));
                }
            }
        }
        Ok(url.as_str().trim_end_matches('/').to_owned())
    }

    /// The endpoint's name, resolved now: refused when any address it resolves to is. A name
    /// that does not resolve (yet) passes — every connection resolves it again through
    /// [`GuardedResolver`].
    pub async fn check_resolved(&self, url: &str) -> Result<(), String> {
        for ip in addresses_of(url).await.unwrap_or_default() {
            if let Some(why) = self.refuses(ip) {
                return Err(format!("{url} points to {why}"));
            }
        }
        Ok(())
    }
}

/// The addresses `url`'s host stands for: its own, or what its name resolves to now (waiting at
/// most [`RESOLVE_WITHIN`]); `None` when it has no host or its name does not resolve.
pub async fn addresses_of(url: &str) -> Option<Vec<IpAddr>> {
    let url = Url::parse(url).ok()?;
    let port = url.port_or_known_default().unwrap_or(80);
    match url.host()? {
        Host::Ipv4(ip) => Some(vec![IpAddr::V4(ip)]),
        Host::Ipv6(ip) => Some(vec![IpAddr::V6(ip)]),
        Host::Domain(name) => {
            let found = tokio::time::timeout(RESOLVE_WITHIN, tokio::net::lookup_host((name, port))).await.ok()?.ok()?;
            Some(found.map(|addr| addr.ip()).collect())
        }
    }
}

/// An IPv4 address seen through an IPv6 socket (`::ffff:a.b.c.d`) is the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What no worker endpoint may ever be: link-local (where cloud metadata services answer),
/// unspecified, multicast or broadcast.
fn never(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local (cloud metadata lives there)"),
        IpAddr::V4(v4) if v4 == Ipv4Addr::new(100, 100, 100, 200) => Some("a cloud metadata address"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => Some("not a host's address"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("link-local"),
        IpAddr::V6(v6) if v6.segments()[..3] == [0xfd00, 0x0ec2, 0] => Some("a cloud metadata address"),
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() || v6 == Ipv6Addr::UNSPECIFIED => {
            Some("not a host's address")
        }
        _ => None,
    }
}

/// A resolver for the clients that call workers: the system's answer, without the addresses
/// the policy refuses (none left: the connection fails saying why).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<EndpointPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<EndpointPolicy>) -> Self {
        GuardedResolver { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let mut refused = None;
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.refuses(addr.ip()) {
                    Some(why) => {
                        refused = Some(why);
                        false
                    }
                    None => true,
                })
                .collect();
            if kept.is_empty() {
                let why = refused.unwrap_or_else(|| "no address".to_owned());
                return Err(format!("{name} resolves to no address a worker may have: {why}").into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_that_steer_calls_elsewhere_are_refused() {
        let open = EndpointPolicy::default();
        assert_eq!(open.check_url("http://10.0.0.7:5003/").unwrap(), "http://10.0.0.7:5003");
        assert_eq!(open.check_url("https://worker-1:5004").unwrap(), "https://worker-1:5004");
        for bad in [
            "ftp://x:1",
            "http://user:pw@10.0.0.7:5003",
            "http://10.0.0.7:5003/?x=1",
            "http://10.0.0.7:5003#frag",
            "http://169.254.169.254/latest",
            "http://[fe80::1]:80",
            "http://0.0.0.0:5003",
            "http://metadata.google.internal",
            "http://[::ffff:169.254.169.254]:80",
            "10.0.0.7:5003",
        ] {
            assert!(open.check_url(bad).is_err(), "{bad}");
        }
        let pinned = EndpointPolicy::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(pinned.check_url("http://10.0.0.7:5003").is_ok());
        assert!(pinned.check_url("http://192.168.1.5:5003").unwrap_err().contains("allowed_networks"));
    }
}
