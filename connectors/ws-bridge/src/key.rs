//! One string for a device where one string must name it: Redis keys and the REST cursor. A
//! tenant id and a device id may each hold any character, `/` included (MQTT-style device ids
//! like `site/room/sensor` are common), so joining them with `/` would let tenant `a` with device
//! `b/c` and tenant `a/b` with device `c` share a name. The tenant is escaped (`%` as `%25`, `/`
//! as `%2F`) and then joined to the device with `/`: the first `/` always ends the tenant, so no
//! two pairs share a name, and ids without those two characters read as before.

/// The name of `device` of `tenant`.
pub fn encode(tenant: &str, device: &str) -> String {
    let mut out = String::with_capacity(tenant.len() + device.len() + 1);
    for c in tenant.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out.push('/');
    out.push_str(device);
    out
}

/// The tenant and device a name from [`encode`] was made of; `None` for any other string.
pub fn decode(name: &str) -> Option<(String, String)> {
    let (escaped, device) = name.split_once('/')?;
    let mut tenant = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(at) = rest.find('%') {
        tenant.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3)?;
        tenant.push(match code {
            "25" => '%',
            "2F" => '/',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    tenant.push_str(rest);
    Some((tenant, device.to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_pairs_that_collided_when_joined_with_a_slash_do_not() {
        assert_eq!(encode("a", "b/c"), "a/b/c");
        assert_eq!(encode("a/b", "c"), "a%2Fb/c");
        assert_eq!(encode("100%", "x"), "100%25/x");
        assert_eq!(decode("a%2Fb/c"), Some(("a/b".into(), "c".into())));
        assert_eq!(decode("no-slash"), None);
        assert_eq!(decode("a%2/c"), None);
        assert_eq!(decode("a%41/c"), None);
    }

    proptest! {
        #[test]
        fn every_pair_has_a_name_of_its_own(
            t1 in "[a/%2F5]{0,6}", d1 in "[a/%2F5]{0,6}",
            t2 in "[a/%2F5]{0,6}", d2 in "[a/%2F5]{0,6}",
        ) {
            prop_assert_eq!(decode(&encode(&t1, &d1)), Some((t1.clone(), d1.clone())));
            prop_assert_eq!(encode(&t1, &d1) == encode(&t2, &d2), (t1, d1) == (t2, d2));
        }
    }
}
