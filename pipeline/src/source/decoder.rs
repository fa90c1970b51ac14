//! Decoding and checking of one record's value where it lies (the Kafka message, the file's line
//! buffer): the reading it holds, within the limits, or, from an inventory partition, the
//! registration or tombstone; or why it is unusable, with the bytes its dead letter keeps. Plain
//! state, no clocks: whichever thread reads the input decodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_str::CompactString;
use schemas::{
    Codec, DeadLetterReason, DecodeError, InputFormat, Record, Registration, TelemetryRef,
};

use super::{Payload, SchemaFetcher, Stamp};
use crate::config::TenantSource;

/// How long an id the registry could not give is not asked for again (its records go to the
/// DLQ meanwhile, with reason `schema`).
const REFETCH_AFTER: Duration = Duration::from_secs(60);

/// Why a record is unusable: its dead letter's reason and detail.
pub type Unusable = (DeadLetterReason, String);

/// What a usable record holds.
#[derive(Debug)]
pub enum Item<'a> {
    /// A device's reading.
    Reading(TelemetryRef<'a>),
    /// An availability report of the reading's device (`true`: online), from the record's
    /// `fleetpulse-availability` header.
    Report(TelemetryRef<'a>, bool),
    /// An inventory record.
    Inventory(Enrolment),
}

/// What the pipeline takes from an inventory record: the device, and its registration unless
/// the record is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// Tenant.
    pub tenant_id: CompactString,
    /// Device.
    pub device_id: CompactString,
    /// `None`: decommissioned.
    pub registered: Option<Registered>,
}

/// The fields of a registration the pipeline uses (labels and poll targets are for the sink, the
/// poller and the notifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Device class.
    pub class: Option<CompactString>,
    /// Expected reporting interval, ms; 0: none.
    pub interval_ms: u32,
    /// `monitoring_enabled`.
    pub monitored: bool,
}

/// The decoded inventory record of `key` and `value` (empty: a tombstone).
fn enrolment(codec: &Codec, key: Option<&[u8]>, value: &[u8]) -> Result<Enrolment, Unusable> {
    if value.is_empty() {
        let (tenant, device) = key.and_then(schemas::device_of_key).ok_or_else(|| {
            (
                DeadLetterReason::Undecodable,
                "a tombstone whose key is not [tenant, device]".to_string(),
            )
        })?;
        return Ok(Enrolment {
            tenant_id: tenant.into(),
            device_id: device.into(),
            registered: None,
        });
    }
    let r: Registration = codec
        .decode(value)
        .map_err(|e| (e.reason(), e.to_string()))?;
    r.validate()
        .map_err(|e| (DeadLetterReason::InvalidField, e.to_string()))?;
    let interval_ms = r
        .expected_interval_ms
        .map_or(0, |ms| u32::try_from(ms).unwrap_or(u32::MAX));
    Ok(Enrolment {
        tenant_id: r.tenant_id.into(),
        device_id: r.device_id.into(),
        registered: Some(Registered {
            class: r.device_class.map(Into::into),
            interval_ms,
            monitored: r.monitoring_enabled,
        }),
    })
}

/// `t` with the tenant (and device) the gateway stamped from the credential it came with,
/// whatever its body claims; a reading without the stamp is unusable.
fn stamped<'a>(mut t: TelemetryRef<'a>, stamp: Stamp<'a>) -> Result<TelemetryRef<'a>, Unusable> {
    let text = |bytes: Option<&'a [u8]>, header: &str| {
        bytes
            .map(|b| {
                std::str::from_utf8(b).map_err(|_| {
                    (
                        DeadLetterReason::InvalidField,
                        format!("the {header} header is not UTF-8"),
                    )
                })
            })
            .transpose()
    };
    let Some(tenant) = text(stamp.tenant, schemas::headers::TENANT)? else {
        return Err((
            DeadLetterReason::InvalidField,
            format!(
                "no {} header: pipeline.tenant_source is header, so only readings from \
                 fleetpulse's gateways count",
                schemas::headers::TENANT
            ),
        ));
    };
    t.tenant_id = std::borrow::Cow::Borrowed(tenant);
    if let Some(device) = text(stamp.device, schemas::headers::DEVICE)? {
        t.device_id = std::borrow::Cow::Borrowed(device);
    }
    Ok(t)
}

/// A checked reading as what it is: a report when the record says it is one.
fn item<'a>(t: TelemetryRef<'a>, availability: Option<&[u8]>) -> Result<Item<'a>, Unusable> {
    match availability {
        None => Ok(Item::Reading(t)),
        Some(b"online") => Ok(Item::Report(t, true)),
        Some(b"offline") => Ok(Item::Report(t, false)),
        Some(other) => Err((
            DeadLetterReason::InvalidField,
            format!(
                "the {} header is {:?}, neither online nor offline",
                schemas::headers::AVAILABILITY,
                String::from_utf8_lossy(other)
            ),
        )),
    }
}

/// Decodes the values of one input.
pub struct Decoder {
    codec: Codec,
    fetcher: Option<Arc<dyn SchemaFetcher>>,
    refused: HashMap<u32, Instant>,
    limits: schemas::Limits,
    tenant_source: TenantSource,
}

impl Decoder {
    /// A decoder with `codec`'s schemas, asking `fetcher` for unknown writer schemas.
    pub fn new(
        codec: Codec,
        fetcher: Option<Arc<dyn SchemaFetcher>>,
        limits: schemas::Limits,
    ) -> Decoder {
        Decoder {
            codec,
            fetcher,
            refused: HashMap::new(),
            limits,
            tenant_source: TenantSource::Body,
        }
    }

    /// The decoder taking readings' tenant from `source`.
    pub fn with_tenant_source(self, tenant_source: TenantSource) -> Decoder {
        Decoder {
            tenant_source,
            ..self
        }
    }

    /// What `payload` holds (an inventory record when it comes from an inventory partition,
    /// with its `key`; else a reading, its tenant (and device) from the gateway's `stamp` when
    /// the tenant source is the header, checked against the limits), or why it is unusable; and
    /// the bytes a dead letter of it keeps. A payload checked already is passed on as it is.
    pub fn check<'a>(
        &mut self,
        inventory: bool,
        key: Option<&[u8]>,
        stamp: Stamp<'a>,
        payload: Payload<'a>,
    ) -> (Result<Item<'a>, Unusable>, &'a [u8]) {
        let invalid = |e: schemas::InvalidField| (DeadLetterReason::InvalidField, e.to_string());
        if inventory && let Payload::Wire(bytes) = payload {
            let decoded = self
                .limits
                .check_message(bytes.len())
                .map_err(invalid)
                .and_then(|()| enrolment(&self.codec, key, bytes));
            return (decoded.map(Item::Inventory), bytes);
        }
        let (decoded, raw) = match payload {
            Payload::Wire(bytes) => {
                let decoded = self
                    .limits
                    .check_message(bytes.len())
                    .map_err(invalid)
                    .and_then(|()| self.decode(bytes).map_err(|e| (e.reason(), e.to_string())));
                (decoded, bytes)
            }
            Payload::Parsed { result, raw } => {
                let decoded = self
                    .limits
                    .check_message(raw.len())
                    .map_err(invalid)
                    .and(result.map(TelemetryRef::owned));
                (decoded, raw)
            }
            Payload::Checked { result, raw } => return (result, raw),
        };
        let stamped = match self.tenant_source {
            TenantSource::Body => decoded,
            TenantSource::Header => decoded.and_then(|t| stamped(t, stamp)),
        };
        let checked = stamped.and_then(|t| self.limits.check_ref(&t).map(|()| t).map_err(invalid));
        (checked.and_then(|t| item(t, stamp.availability)), raw)
    }

    /// Decodes a wire value, fetching its writer schema first when the id is unknown and a
    /// registry is configured.
    fn decode<'a>(&mut self, bytes: &'a [u8]) -> Result<TelemetryRef<'a>, DecodeError> {
        let id = match self.codec.decode_telemetry_ref(bytes, InputFormat::Auto) {
            Err(DecodeError::UnknownSchemaId(id)) if self.fetcher.is_some() => id,
            result => return result,
        };
        let unknown = Err(DecodeError::UnknownSchemaId(id));
        let Some(fetcher) = self.fetcher.as_deref() else {
            return unknown;
        };
        if self
            .refused
            .get(&id)
            .is_some_and(|at| at.elapsed() < REFETCH_AFTER)
        {
            return unknown;
        }
        match fetcher.fetch_into(&mut self.codec, id) {
            Ok(()) => {
                tracing::info!(id, "fetched a writer schema from the registry");
                self.codec.decode_telemetry_ref(bytes, InputFormat::Auto)
            }
            Err(e) => {
                tracing::warn!(
                    id,
                    error = %e,
                    "cannot fetch a writer schema; its records go to the DLQ"
                );
                self.refused.insert(id, Instant::now());
                unknown
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use schemas::Telemetry;

    use super::*;

    fn reading(
        decoder: &mut Decoder,
        stamp: Stamp<'_>,
        body: &[u8],
    ) -> Result<(String, String), DeadLetterReason> {
        match decoder.check(false, None, stamp, Payload::Wire(body)).0 {
            Ok(Item::Reading(t)) => Ok((t.tenant_id.into_owned(), t.device_id.into_owned())),
            Ok(Item::Report(..) | Item::Inventory(_)) => Err(DeadLetterReason::Schema),
            Err((reason, _)) => Err(reason),
        }
    }

    #[test]
    fn with_the_header_as_tenant_source_only_the_gateway_s_stamp_counts() {
        let claimed = serde_json::to_vec(&Telemetry {
            tenant_id: "globex".into(),
            ..Telemetry::example()
        })
        .unwrap_or_default();
        let limits = schemas::Limits::default();
        let mut body = Decoder::new(Codec::builtin(), None, limits);
        let mut header =
            Decoder::new(Codec::builtin(), None, limits).with_tenant_source(TenantSource::Header);
        let stamp = Stamp {
            tenant: Some(b"acme"),
            ..Stamp::default()
        };
        assert_eq!(
            reading(&mut body, stamp, &claimed),
            Ok(("globex".into(), "dev-0001".into()))
        );
        assert_eq!(
            reading(&mut header, stamp, &claimed),
            Ok(("acme".into(), "dev-0001".into()))
        );
        let device = Stamp {
            device: Some(b"own"),
            ..stamp
        };
        assert_eq!(
            reading(&mut header, device, &claimed),
            Ok(("acme".into(), "own".into()))
        );
        assert_eq!(
            reading(&mut header, Stamp::default(), &claimed),
            Err(DeadLetterReason::InvalidField),
            "a producer that is no gateway"
        );
        let broken = Stamp {
            tenant: Some(&[0xff, 0xfe]),
            ..Stamp::default()
        };
        assert_eq!(
            reading(&mut header, broken, &claimed),
            Err(DeadLetterReason::InvalidField)
        );
    }

    #[test]
    fn the_availability_header_makes_a_reading_a_report() {
        let body = serde_json::to_vec(&Telemetry::example()).unwrap_or_default();
        let mut decoder = Decoder::new(Codec::builtin(), None, schemas::Limits::default());
        let mut report = |value: &'static [u8]| {
            let stamp = Stamp {
                availability: Some(value),
                ..Stamp::default()
            };
            match decoder.check(false, None, stamp, Payload::Wire(&body)).0 {
                Ok(Item::Report(t, online)) => Ok((t.device_id.into_owned(), online)),
                Ok(_) => Err(DeadLetterReason::Schema),
                Err((reason, _)) => Err(reason),
            }
        };
        assert_eq!(report(b"offline"), Ok(("dev-0001".into(), false)));
        assert_eq!(report(b"online"), Ok(("dev-0001".into(), true)));
        assert_eq!(report(b"maybe"), Err(DeadLetterReason::InvalidField));
    }
}
