//! Caps on WebSocket connections per client address and per tenant, besides the global one: a
//! single host or a single tenant's tokens cannot take every connection the bridge has.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per key, up to a cap.
struct Counts<K> {
    cap: usize,
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(cap: usize) -> Counts<K> {
        Counts {
            cap,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more for `key`, unless it is at the cap.
    fn take(&self, key: &K) -> bool {
        let Ok(mut open) = self.open.lock() else {
            return false;
        };
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.cap {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, key: &K) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(key);
            }
        }
    }
}

/// Which cap a connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capped {
    /// Its address has the most connections allowed.
    Address,
    /// Its tenant has.
    Tenant,
}

/// The per-address and per-tenant caps.
pub struct Limits {
    addresses: Counts<IpAddr>,
    /// `None`: the admins, counted apart from every tenant.
    tenants: Counts<Option<String>>,
}

impl Limits {
    /// Caps of `per_address` and `per_tenant` open connections.
    pub fn new(per_address: usize, per_tenant: usize) -> Arc<Limits> {
        Arc::new(Limits {
            addresses: Counts::new(per_address),
            tenants: Counts::new(per_tenant),
        })
    }

    /// A place for one more connection from `address` (`None`: not known, as in tests that
    /// call the router directly) for `tenant` (`None`: an admin), held until the [`Slot`] drops.
    pub fn admit(
        self: &Arc<Limits>,
        address: Option<IpAddr>,
        tenant: Option<&str>,
    ) -> Result<Slot, Capped> {
        if let Some(a) = address
            && !self.addresses.take(&a)
        {
            return Err(Capped::Address);
        }
        let tenant = tenant.map(str::to_string);
        if !self.tenants.take(&tenant) {
            if let Some(a) = address {
                self.addresses.give_back(&a);
            }
            return Err(Capped::Tenant);
        }
        Ok(Slot {
            limits: Arc::clone(self),
            address,
            tenant,
        })
    }
}

/// One admitted connection's place; given back when dropped.
pub struct Slot {
    limits: Arc<Limits>,
    address: Option<IpAddr>,
    tenant: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(a) = self.address {
            self.limits.addresses.give_back(&a);
        }
        self.limits.tenants.give_back(&self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_address_and_per_tenant_and_free_on_drop() {
        let limits = Limits::new(2, 3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = limits.admit(Some(a), Some("t1")).unwrap();
        let _second = limits.admit(Some(a), Some("t1")).unwrap();
        assert_eq!(
            limits.admit(Some(a), Some("t2")).err(),
            Some(Capped::Address)
        );
        let _third = limits.admit(Some(b), Some("t1")).unwrap();
        assert_eq!(
            limits.admit(Some(b), Some("t1")).err(),
            Some(Capped::Tenant)
        );
        // The refused tenant left b's count as it was.
        let _other = limits.admit(Some(b), Some("t2")).unwrap();
        assert_eq!(
            limits.admit(Some(b), Some("t3")).err(),
            Some(Capped::Address)
        );
        drop(first);
        assert!(limits.admit(Some(a), Some("t2")).is_ok());
        // Admins are not any tenant's, whatever a tenant is called.
        let admins = Limits::new(10, 1);
        let _admin = admins.admit(None, None).unwrap();
        assert!(admins.admit(None, Some("")).is_ok());
        assert_eq!(admins.admit(None, None).err(), Some(Capped::Tenant));
    }
}
