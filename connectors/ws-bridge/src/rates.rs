//! Rate limits on what clients ask of the bridge: messages and snapshot work per connection and
//! per tenant, and `/api/devices` requests per token. Token buckets (GCRA) from `governor`: a
//! client may burst to twice its rate (at least 10), then gets one request per interval.
//!
//! A connection past its own rate is refused at once. A connection's first snapshot waits for
//! its tenant's turn instead, up to [`TENANT_SNAPSHOT_WAIT`]: every dashboard of a tenant
//! reconnecting at once (a bridge restarted) is spread out, not refused. A later one does not
//! wait: its connection has events coming that it would not take meanwhile.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How long a snapshot may wait for its tenant's bucket before it is refused.
pub const TENANT_SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// A bucket of `per_s` a second, or none for 0.
fn quota(per_s: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_s)?;
    let burst = NonZeroU32::new(per_s.saturating_mul(2).max(10))?;
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// One bucket per key, when limited.
struct Keyed<K: Hash + Eq + Clone>(Option<DefaultKeyedRateLimiter<K>>);

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(per_s: u32) -> Keyed<K> {
        Keyed(quota(per_s).map(RateLimiter::keyed))
    }

    fn allows(&self, key: &K) -> bool {
        self.0.as_ref().is_none_or(|l| l.check_key(key).is_ok())
    }

    /// Whether `key` gets its turn within `wait`.
    async fn waits(&self, key: &K, wait: Duration) -> bool {
        match &self.0 {
            None => true,
            Some(l) => tokio::time::timeout(wait, l.until_key_ready(key))
                .await
                .is_ok(),
        }
    }

    fn forget_idle(&self) {
        if let Some(l) = &self.0 {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// A tenant's key: `None` for the admins, counted apart from every tenant.
pub type Tenant = Option<String>;

/// The limits shared by every connection and request.
pub struct Rates {
    messages_per_s: u32,
    snapshots_per_s: u32,
    tenant_messages: Keyed<Tenant>,
    tenant_snapshots: Keyed<Tenant>,
    api: Keyed<String>,
}

/// One connection's own buckets.
pub struct Connection {
    messages: Option<DefaultDirectRateLimiter>,
    snapshots: Option<DefaultDirectRateLimiter>,
}

/// What a limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The connection's own rate.
    Connection,
    /// Its tenant's, shared by all of the tenant's connections.
    Tenant,
}

impl Rates {
    /// Limits from `[bridge]`'s rates per second (0: unlimited).
    pub fn new(config: &crate::BridgeConfig) -> Rates {
        Rates {
            messages_per_s: config.messages_per_s,
            snapshots_per_s: config.snapshots_per_s,
            tenant_messages: Keyed::new(config.tenant_messages_per_s),
            tenant_snapshots: Keyed::new(config.tenant_snapshots_per_s),
            api: Keyed::new(config.api_requests_per_s),
        }
    }

    /// The buckets of a new connection.
    pub fn connection(&self) -> Connection {
        Connection {
            messages: quota(self.messages_per_s).map(RateLimiter::direct),
            snapshots: quota(self.snapshots_per_s).map(RateLimiter::direct),
        }
    }

    /// Whether a connection of `tenant` may send one more message.
    pub fn message(&self, c: &Connection, tenant: &Tenant) -> Result<(), Limited> {
        if c.messages.as_ref().is_some_and(|l| l.check().is_err()) {
            return Err(Limited::Connection);
        }
        if !self.tenant_messages.allows(tenant) {
            return Err(Limited::Tenant);
        }
        Ok(())
    }

    /// Whether a connection of `tenant` may have one more snapshot or cursor replay: within its
    /// own rate, and its tenant's, for which its `first` waits its turn.
    pub async fn snapshot(
        &self,
        c: &Connection,
        tenant: &Tenant,
        first: bool,
    ) -> Result<(), Limited> {
        if c.snapshots.as_ref().is_some_and(|l| l.check().is_err()) {
            return Err(Limited::Connection);
        }
        let granted = if first {
            self.tenant_snapshots
                .waits(tenant, TENANT_SNAPSHOT_WAIT)
                .await
        } else {
            self.tenant_snapshots.allows(tenant)
        };
        if !granted {
            return Err(Limited::Tenant);
        }
        Ok(())
    }

    /// Whether `token` may make one more `/api/devices` request.
    pub fn api(&self, token: &str) -> bool {
        self.api.allows(&token.to_string())
    }

    /// Forgets the buckets of tenants and tokens that are full again: they would allow as
    /// much as new ones, and keep the maps from growing with every token ever seen.
    pub fn forget_idle(&self) {
        self.tenant_messages.forget_idle();
        self.tenant_snapshots.forget_idle();
        self.api.forget_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_bursts_then_is_held_to_its_rate_and_its_tenant_to_the_tenants() {
        let rates = Rates::new(&crate::BridgeConfig {
            messages_per_s: 5,
            tenant_messages_per_s: 12,
            api_requests_per_s: 0,
            ..crate::BridgeConfig::default()
        });
        let t = Some("t".to_string());
        let a = rates.connection();
        let allowed = (0..50).filter(|_| rates.message(&a, &t).is_ok()).count();
        assert_eq!(allowed, 10, "a burst of twice the rate, at least 10");
        assert_eq!(rates.message(&a, &t), Err(Limited::Connection));
        // Another connection of the tenant: its own bucket is full, the tenant's has 24 - 10.
        let b = rates.connection();
        let allowed = (0..50).filter(|_| rates.message(&b, &t).is_ok()).count();
        assert_eq!(allowed, 10);
        let c = rates.connection();
        let allowed = (0..50).filter(|_| rates.message(&c, &t).is_ok()).count();
        assert_eq!(allowed, 4);
        assert_eq!(rates.message(&rates.connection(), &t), Err(Limited::Tenant));
        // The admins and other tenants have their own.
        assert!(rates.message(&rates.connection(), &None).is_ok());
        assert!(
            rates
                .message(&rates.connection(), &Some("u".into()))
                .is_ok()
        );
        // 0: no limit.
        assert!((0..1_000).all(|_| rates.api("token")));
    }

    #[tokio::test]
    async fn a_tenant_s_snapshots_wait_their_turn_and_a_connection_s_do_not() {
        let rates = Rates::new(&crate::BridgeConfig {
            snapshots_per_s: 1,
            tenant_snapshots_per_s: 10,
            ..crate::BridgeConfig::default()
        });
        let t = Some("t".to_string());
        // 25 connections, one snapshot each: the tenant's burst of 20 at once, the other five a
        // tenth of a second apart.
        let started = std::time::Instant::now();
        for _ in 0..25 {
            assert_eq!(rates.snapshot(&rates.connection(), &t, true).await, Ok(()));
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        // One connection past its own ten: refused at once.
        let one = rates.connection();
        let own = granted(&rates, &one, &Some("u".to_string())).await;
        assert_eq!(own, 10);
    }

    /// How many snapshots one connection gets before it is refused.
    async fn granted(rates: &Rates, c: &Connection, t: &Tenant) -> usize {
        let mut n = 0;
        while rates.snapshot(c, t, false).await.is_ok() {
            n += 1;
        }
        n
    }
}
