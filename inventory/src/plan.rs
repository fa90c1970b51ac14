//! The plan that turns the inventory on the topic into what a file says: a record for each
//! device to register or change, a tombstone for each to decommission, nothing for the rest. Like
//! a `terraform plan`, it is printed before anything is written, and applying the same file
//! twice plans nothing the second time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use schemas::Registration;

use crate::DeviceId;
use crate::file::Desired;

/// Which devices on the topic a file speaks for: a device outside the scope is never changed or
/// decommissioned by it, so one tenant's file cannot remove another tenant's fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The file is the whole inventory.
    All,
    /// The file is the inventory of these tenants.
    Tenants(BTreeSet<String>),
}

impl Scope {
    /// Whether devices of `tenant` are the file's to decide.
    pub fn covers(&self, tenant: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenants(tenants) => tenants.contains(tenant),
        }
    }
}

/// A device whose registration changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// What the topic holds.
    pub before: Registration,
    /// What the file says.
    pub after: Registration,
}

impl Update {
    /// The names of the fields that differ.
    pub fn fields(&self) -> Vec<&'static str> {
        let (b, a) = (&self.before, &self.after);
        [
            ("class", b.device_class != a.device_class),
            ("labels", b.labels != a.labels),
            (
                "expected_interval_ms",
                b.expected_interval_ms != a.expected_interval_ms,
            ),
            (
                "monitoring_enabled",
                b.monitoring_enabled != a.monitoring_enabled,
            ),
            ("poll", b.poll != a.poll),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }
}

/// What applying a file writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Devices the topic does not have: a record each.
    pub register: Vec<Registration>,
    /// Devices whose registration differs: a record each.
    pub change: Vec<Update>,
    /// Devices in scope the file no longer lists: a tombstone each.
    pub decommission: Vec<DeviceId>,
    /// Devices already as the file says.
    pub unchanged: usize,
}

impl Plan {
    /// The plan from `current` (the topic) to `desired` (the file) for the devices in `scope`.
    pub fn between(
        current: &BTreeMap<DeviceId, Registration>,
        desired: &Desired,
        scope: &Scope,
    ) -> Plan {
        let mut plan = Plan::default();
        for (id, wanted) in &desired.devices {
            match current.get(id) {
                None => plan.register.push(wanted.clone()),
                Some(held) if held == wanted => plan.unchanged += 1,
                Some(held) => plan.change.push(Update {
                    before: held.clone(),
                    after: wanted.clone(),
                }),
            }
        }
        plan.decommission = current
            .keys()
            .filter(|id| scope.covers(&id.0) && !desired.devices.contains_key(*id))
            .cloned()
            .collect();
        plan
    }

    /// Whether applying writes nothing.
    pub fn is_empty(&self) -> bool {
        self.register.is_empty() && self.change.is_empty() && self.decommission.is_empty()
    }
}

/// How a device is named in a plan and in file errors: `tenant/device`, each part quoted when
/// it holds a `/`, a quote or white space, so two devices never print alike.
pub fn name(tenant: &str, device: &str) -> String {
    let part = |s: &str| {
        if s.is_empty() || s.contains(['/', '"']) || s.contains(char::is_whitespace) {
            format!("{s:?}")
        } else {
            s.to_string()
        }
    };
    format!("{}/{}", part(tenant), part(device))
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.register {
            writeln!(f, "+ {}", name(&r.tenant_id, &r.device_id))?;
        }
        for c in &self.change {
            writeln!(
                f,
                "~ {} ({})",
                name(&c.after.tenant_id, &c.after.device_id),
                c.fields().join(", ")
            )?;
        }
        for (tenant, device) in &self.decommission {
            writeln!(f, "- {}", name(tenant, device))?;
        }
        write!(
            f,
            "Plan: {} to register, {} to change, {} to decommission, {} unchanged.",
            self.register.len(),
            self.change.len(),
            self.decommission.len(),
            self.unchanged
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(tenant: &str, device: &str, class: &str) -> Registration {
        Registration {
            device_class: Some(class.into()),
            ..Registration::new(tenant, device)
        }
    }

    fn held(registrations: &[Registration]) -> BTreeMap<DeviceId, Registration> {
        registrations
            .iter()
            .map(|r| ((r.tenant_id.clone(), r.device_id.clone()), r.clone()))
            .collect()
    }

    fn desired(registrations: &[Registration]) -> Desired {
        Desired {
            devices: held(registrations),
            tenants: registrations.iter().map(|r| r.tenant_id.clone()).collect(),
        }
    }

    #[test]
    fn a_plan_registers_changes_and_decommissions_only_what_differs() {
        let current = held(&[
            reg("acme", "a", "sensor"),
            reg("acme", "b", "sensor"),
            reg("acme", "gone", "sensor"),
            reg("globex", "x", "sensor"),
        ]);
        let file = desired(&[
            reg("acme", "a", "sensor"),
            reg("acme", "b", "gateway"),
            reg("acme", "new", "sensor"),
        ]);
        let plan = Plan::between(&current, &file, &Scope::Tenants(file.tenants.clone()));
        assert_eq!(plan.register, vec![reg("acme", "new", "sensor")]);
        assert_eq!(plan.change.len(), 1);
        assert_eq!(plan.change[0].fields(), vec!["class"]);
        // globex is not the file's: its device stays.
        assert_eq!(plan.decommission, vec![("acme".into(), "gone".into())]);
        assert_eq!(plan.unchanged, 1);
        assert_eq!(
            plan.to_string(),
            "+ acme/new\n~ acme/b (class)\n- acme/gone\n\
             Plan: 1 to register, 1 to change, 1 to decommission, 1 unchanged."
        );
        let everything = Plan::between(&current, &file, &Scope::All);
        assert_eq!(everything.decommission.len(), 2);
    }

    #[test]
    fn the_file_s_own_state_plans_nothing() {
        let file = desired(&[reg("acme", "a", "sensor"), reg("acme", "b", "router")]);
        let plan = Plan::between(&file.devices, &file, &Scope::All);
        assert!(plan.is_empty());
        assert_eq!(plan.unchanged, 2);
    }

    #[test]
    fn names_never_print_alike() {
        assert_eq!(name("acme", "gw-1"), "acme/gw-1");
        assert_ne!(name("a/b", "c"), name("a", "b/c"));
        assert_eq!(name("a", "b c"), "a/\"b c\"");
    }
}
