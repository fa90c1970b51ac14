//! Tests of [`super`]: config.rs's unit and property tests, kept apart so the module reads
//! as the code it is.

#![allow(clippy::result_large_err)] // figment::Jail's closures return figment's own error

use super::*;
use figment::Jail;

fn error_of(jail: &mut Jail, toml: &str, overrides: &[Override]) -> String {
    jail.create_file("fleetpulse.toml", toml)
        .expect("write config");
    match load(Some(Path::new("fleetpulse.toml")), overrides) {
        Ok(config) => panic!("expected an error, loaded {config:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_example_file_loads_and_matches_the_defaults_it_documents() {
    Jail::expect_with(|jail| {
        let example = include_str!("../../../config/fleetpulse.example.toml");
        jail.create_file("fleetpulse.toml", example)?;
        let config = load(Some(Path::new("fleetpulse.toml")), &[]).expect("example loads");
        let mut defaults = Config::default();
        defaults.kafka.brokers = config.kafka.brokers.clone();
        assert_eq!(config, defaults);
        Ok(())
    });
}

#[test]
fn unknown_key_is_named() {
    Jail::expect_with(|jail| {
        let e = error_of(jail, "[kafka]\nbrokerz = \"a:1\"\n", &[]);
        assert!(
            e.contains("`kafka.brokerz`") && e.contains("unknown key"),
            "{e}"
        );
        assert!(e.contains("brokers"), "should list the known keys: {e}");
        let e = error_of(jail, "[kafak]\n", &[]);
        assert!(e.contains("`kafak`"), "{e}");
        Ok(())
    });
}

#[test]
fn wrong_type_is_named() {
    Jail::expect_with(|jail| {
        let e = error_of(jail, "[generate]\ndevices = \"many\"\n", &[]);
        assert!(
            e.contains("`generate.devices`") && e.contains("expected"),
            "{e}"
        );
        let e = error_of(jail, "[kafka]\nbrokers = \"localhost\"\n", &[]);
        assert!(
            e.contains("`kafka.brokers`") && e.contains("host:port"),
            "{e}"
        );
        let e = error_of(jail, "[generate]\nformat = \"xml\"\n", &[]);
        assert!(e.contains("`generate.format`") && e.contains("avro"), "{e}");
        let e = error_of(jail, "[topics]\ndlq = \"no spaces\"\n", &[]);
        assert!(e.contains("`topics.dlq`"), "{e}");
        Ok(())
    });
}

#[test]
fn missing_required_value_is_named() {
    Jail::expect_with(|jail| {
        let e = error_of(jail, "[schema_registry]\ntimeout_ms = 100\n", &[]);
        assert!(
            e.contains("`schema_registry.url`") && e.contains("required"),
            "{e}"
        );
        jail.create_file("empty.toml", "")?;
        let config = load(Some(Path::new("empty.toml")), &[]).expect("empty file loads");
        let e = config.brokers().expect_err("no brokers").to_string();
        assert!(e.contains("`kafka.brokers`"), "{e}");
        Ok(())
    });
}

#[test]
fn bad_environment_override_names_key_and_variable() {
    Jail::expect_with(|jail| {
        jail.set_env("FLEETPULSE_GENERATE__DEVICES", "lots");
        let e = error_of(jail, "", &[]);
        assert!(e.contains("`generate.devices`"), "{e}");
        assert!(e.contains("FLEETPULSE_GENERATE__DEVICES"), "{e}");
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.set_env("FLEETPULSE_KAFKA_BROKERS", "a:1");
        let e = error_of(jail, "", &[]);
        assert!(
            e.contains("`kafka_brokers`") && e.contains("unknown key"),
            "{e}"
        );
        Ok(())
    });
}

#[test]
fn relations_between_keys_are_checked() {
    Jail::expect_with(|jail| {
        let e = error_of(jail, "[generate]\ndevices = 2\ntenants = 3\n", &[]);
        assert!(e.contains("`generate.tenants`"), "{e}");
        let e = error_of(jail, "[generate]\nlate_fraction = 1.5\n", &[]);
        assert!(e.contains("`generate.late_fraction`"), "{e}");
        let e = error_of(jail, "[log]\nlevel = \"info,,=[\"\n", &[]);
        assert!(e.contains("`log.level`"), "{e}");
        let e = error_of(jail, "[poller]\ninstances = 2\ninstance = 2\n", &[]);
        assert!(e.contains("`poller.instance`"), "{e}");
        let e = error_of(jail, "[poller.classes.disk]\nhttp_interval_ms = 5\n", &[]);
        assert!(e.contains("`poller.classes.disk.http_interval_ms`"), "{e}");
        Ok(())
    });
}

#[test]
fn precedence_is_file_then_environment_then_flags() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "f.toml",
            "[generate]\ndevices = 10\ntenants = 1\nseed = 1\n",
        )?;
        jail.set_env("FLEETPULSE_GENERATE__DEVICES", "20");
        jail.set_env("FLEETPULSE_CONFIG", "ignored.toml");
        let flags = [("generate.seed".to_string(), toml::Value::Integer(3))];
        let config = load(Some(Path::new("f.toml")), &flags).expect("loads");
        assert_eq!(
            (
                config.generate.devices,
                config.generate.tenants,
                config.generate.seed
            ),
            (20, 1, 3)
        );
        Ok(())
    });
}

#[test]
fn a_missing_file_is_an_error_not_the_defaults() {
    let e = load(Some(Path::new("/nonexistent/fleetpulse.toml")), &[]);
    assert!(matches!(e, Err(ConfigError::File { .. })));
}
