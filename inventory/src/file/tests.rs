use super::*;

const YAML: &str = r#"
# The Berlin site: everything acme has there.
tenants: [acme, globex]
devices:
  - tenant: acme
    device: gw-01
    class: gateway
    labels: {site: berlin, rack: 3, spare: false}
    expected_interval_ms: 30000
  - tenant: acme
    device: rt-01
    class: router
    monitoring_enabled: false
    poll:
      url: http://10.0.0.7:8080/health
      fields: {battery_pct: /power/battery, attributes.fw: /fw}
"#;

fn gw() -> Registration {
    Registration {
        device_class: Some("gateway".into()),
        labels: BTreeMap::from([
            ("rack".into(), "3".into()),
            ("site".into(), "berlin".into()),
            ("spare".into(), "false".into()),
        ]),
        expected_interval_ms: Some(30_000),
        ..Registration::new("acme", "gw-01")
    }
}

fn rt() -> Registration {
    Registration {
        device_class: Some("router".into()),
        monitoring_enabled: false,
        poll: Some(PollTarget {
            url: "http://10.0.0.7:8080/health".into(),
            fields: BTreeMap::from([
                ("attributes.fw".into(), "/fw".into()),
                ("battery_pct".into(), "/power/battery".into()),
            ]),
        }),
        ..Registration::new("acme", "rt-01")
    }
}

fn id(tenant: &str, device: &str) -> DeviceId {
    (tenant.into(), device.into())
}

#[test]
fn yaml_reads_devices_labels_and_poll_targets() {
    let desired = parse(YAML, Format::Yaml).unwrap();
    assert_eq!(
        desired.devices,
        BTreeMap::from([(id("acme", "gw-01"), gw()), (id("acme", "rt-01"), rt())])
    );
    assert_eq!(
        desired.tenants,
        BTreeSet::from(["acme".into(), "globex".into()])
    );
}

#[test]
fn csv_reads_the_same_devices_and_writes_them_back() {
    let text = "tenant,device,class,expected_interval_ms,monitoring_enabled,poll_url,label.rack,label.site,label.spare,poll.battery_pct,poll.attributes.fw\n\
                acme,gw-01,gateway,30000,,,3,berlin,false,,\n\
                acme, rt-01 ,router,,no,http://10.0.0.7:8080/health,,,,/power/battery,/fw\n";
    let desired = parse(text, Format::Csv).unwrap();
    assert_eq!(
        desired.devices,
        BTreeMap::from([(id("acme", "gw-01"), gw()), (id("acme", "rt-01"), rt())])
    );
    assert_eq!(desired.tenants, BTreeSet::from(["acme".into()]));
    let written = to_csv(desired.devices.values());
    assert_eq!(parse(&written, Format::Csv).unwrap(), desired);
}

#[test]
fn an_empty_file_is_an_empty_inventory() {
    assert_eq!(parse("", Format::Yaml).unwrap(), Desired::default());
    assert_eq!(
        parse("tenants: [acme]\n", Format::Yaml)
            .unwrap()
            .tenants
            .len(),
        1
    );
    assert_eq!(
        parse("tenant,device\n", Format::Csv).unwrap(),
        Desired::default()
    );
}

#[test]
fn mistakes_are_named_by_their_line_or_entry() {
    let cases: [(&str, Format, &str); 9] = [
        (
            "devices:\n  - tenant: a\n",
            Format::Yaml,
            "missing field `device`",
        ),
        (
            "devices:\n  - tenant: a\n    device: b\n    colour: red\n",
            Format::Yaml,
            "unknown field `colour`",
        ),
        (
            "devices:\n  - {tenant: a, device: b}\n  - {tenant: a, device: c, expected_interval_ms: 0}\n",
            Format::Yaml,
            "device 2 (a/c): invalid field `expected_interval_ms`",
        ),
        (
            "devices:\n  - {tenant: a, device: b}\n  - {tenant: a, device: b}\n",
            Format::Yaml,
            "device 2 (a/b): device listed twice (also device 1 (a/b))",
        ),
        (
            "tenant,colour\na,red\n",
            Format::Csv,
            "CSV line 1: unknown column \"colour\"",
        ),
        (
            "tenant,class\na,b\n",
            Format::Csv,
            "CSV line 1: no device column",
        ),
        (
            "tenant,device,monitoring_enabled\na,b,maybe\n",
            Format::Csv,
            "CSV line 2: monitoring_enabled \"maybe\"",
        ),
        (
            "tenant,device,poll.ok\na,b,/up\n",
            Format::Csv,
            "CSV line 2: poll.<field> cells without a poll_url",
        ),
        (
            "tenant,device,poll_url\na,b,\na,c,gopher://x\n",
            Format::Csv,
            "line 3 (a/c): invalid field `poll.url`",
        ),
    ];
    for (text, format, expected) in cases {
        let error = parse(text, format).unwrap_err().to_string();
        assert!(error.contains(expected), "{text:?}: {error}");
    }
}

#[test]
fn formats_follow_the_extension() {
    assert_eq!(Format::of_path(Path::new("fleet.YML")), Some(Format::Yaml));
    assert_eq!(Format::of_path(Path::new("a/fleet.csv")), Some(Format::Csv));
    assert_eq!(Format::of_path(Path::new("fleet.json")), None);
}

#[test]
fn the_example_file_is_a_valid_inventory() {
    let text = include_str!("../../../config/inventory.example.yaml");
    let desired = parse(text, Format::Yaml).unwrap();
    assert_eq!(desired.devices.len(), 4);
    assert!(desired.tenants.contains("initech"));
    let plc = &desired.devices[&id("acme", "plc-lyon-2")];
    assert_eq!(
        plc.poll.as_ref().and_then(PollTarget::kind),
        Some(schemas::ProbeKind::Tcp)
    );
}
