//! Tests of [`super`]: config.rs's unit and property tests, kept apart so the module reads
//! as the code it is.

use super::*;

#[test]
fn defaults_are_valid() {
    assert_eq!(PipelineConfig::default().validate(), Ok(()));
}

#[test]
fn each_mistake_names_its_key() {
    type Mistake = Box<dyn Fn(&mut PipelineConfig)>;
    let cases: Vec<(Mistake, &str)> = vec![
        (Box::new(|c| c.windows_ms.clear()), "windows_ms"),
        (
            Box::new(|c| c.windows_ms = vec![60_000, 60_000]),
            "windows_ms",
        ),
        (Box::new(|c| c.watermark_step_ms = 0), "watermark_step_ms"),
        (
            Box::new(|c| c.clock_tolerance_ms = 5_000),
            "clock_tolerance_ms",
        ),
        (
            Box::new(|c| c.max_future_skew_ms = 30_000),
            "max_future_skew_ms",
        ),
        (Box::new(|c| c.limits.id_bytes = 0), "limits.id_bytes"),
        (
            Box::new(|c| c.device_retention_ms = 60_000),
            "device_retention_ms",
        ),
        (
            Box::new(|c| c.expected_interval_multiple = 0.5),
            "expected_interval_multiple",
        ),
        (
            Box::new(|c| c.checkpoint_interval_ms = 0),
            "checkpoint_interval_ms",
        ),
        (
            Box::new(|c| c.mass_offline_share = 1.5),
            "mass_offline_share",
        ),
        (Box::new(|c| c.health.rt_slo_ms = -1.0), "health.rt_slo_ms"),
        (Box::new(|c| c.baseline.alpha = 0.0), "baseline.alpha"),
        (
            Box::new(|c| c.thresholds.rt_mean_min_readings = 11),
            "thresholds.rt_mean_min_readings",
        ),
        (
            Box::new(|c| {
                c.overrides.push(Override {
                    tenant: Some("t".into()),
                    device_class: None,
                    offline_timeout_ms: Some(0),
                    rt_mean_ms: None,
                    error_rate: None,
                    battery_low_pct: None,
                    prolonged_offline_ms: None,
                })
            }),
            "overrides[0].offline_timeout_ms",
        ),
    ];
    for (mutate, key) in cases {
        let mut c = PipelineConfig::default();
        mutate(&mut c);
        assert_eq!(c.validate().map_err(|e| e.0), Err(key.to_string()));
    }
}

#[test]
fn the_most_specific_override_wins() {
    let o = |tenant: Option<&str>, class: Option<&str>, timeout: i64| Override {
        tenant: tenant.map(Into::into),
        device_class: class.map(Into::into),
        offline_timeout_ms: Some(timeout),
        rt_mean_ms: None,
        error_rate: None,
        battery_low_pct: None,
        prolonged_offline_ms: None,
    };
    let c = PipelineConfig {
        overrides: vec![
            o(Some("a"), Some("gw"), 3),
            o(None, Some("gw"), 1),
            o(Some("a"), None, 2),
        ],
        ..PipelineConfig::default()
    };
    assert_eq!(c.thresholds_for("a", Some("gw")).offline_timeout_ms, 3);
    assert_eq!(c.thresholds_for("a", Some("sensor")).offline_timeout_ms, 2);
    assert_eq!(c.thresholds_for("b", Some("gw")).offline_timeout_ms, 1);
    assert_eq!(c.thresholds_for("b", None).offline_timeout_ms, 60_000);
}
