//! Avro binary's primitives (zig-zag longs, doubles, strings, unions with null), read from the
//! front of a borrowed body and written onto a buffer: what the direct readers and writers of
//! the records ([`crate::window_aggregate_ref`], [`crate::derived_writers`], last-seen times,
//! telemetry) are made of. Anything they cannot read is an error, never a panic.

use crate::error::DecodeError;

fn short(what: &str) -> DecodeError {
    DecodeError::Avro(format!("the record ends inside {what}"))
}

/// A zig-zag varint `long` (at most 10 bytes).
pub(crate) fn long(body: &mut &[u8]) -> Result<i64, DecodeError> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = body.split_first().ok_or_else(|| short("a long"))?;
        *body = rest;
        if shift == 63 && byte > 1 {
            return Err(DecodeError::Avro("a long beyond 64 bits".into()));
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(DecodeError::Avro("a long longer than 10 bytes".into()))
}

pub(crate) fn double(body: &mut &[u8]) -> Result<f64, DecodeError> {
    let (bytes, rest) = body
        .split_first_chunk::<8>()
        .ok_or_else(|| short("a double"))?;
    *body = rest;
    Ok(f64::from_le_bytes(*bytes))
}

pub(crate) fn string<'a>(body: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    let len = usize::try_from(long(body)?)
        .map_err(|_| DecodeError::Avro("a string of negative length".into()))?;
    if body.len() < len {
        return Err(short("a string"));
    }
    let (bytes, rest) = body.split_at(len);
    *body = rest;
    std::str::from_utf8(bytes).map_err(|e| DecodeError::Avro(e.to_string()))
}

/// A `["null", T]` union: branch 0 is null, branch 1 is `T`.
pub(crate) fn optional<'a, T>(
    body: &mut &'a [u8],
    read: fn(&mut &'a [u8]) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    match long(body)? {
        0 => Ok(None),
        1 => read(body).map(Some),
        n => Err(DecodeError::Avro(format!(
            "union branch {n} of a nullable field"
        ))),
    }
}

/// Appends `v` as an Avro `long` (zig-zag varint).
pub(crate) fn write_long(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// Appends `s` as an Avro `string`.
pub(crate) fn write_string(buf: &mut Vec<u8>, s: &str) {
    write_long(buf, i64::try_from(s.len()).unwrap_or(i64::MAX));
    buf.extend_from_slice(s.as_bytes());
}

/// Appends a nullable string (`["null", "string"]`).
pub(crate) fn write_optional_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => write_long(buf, 0),
        Some(s) => {
            write_long(buf, 1);
            write_string(buf, s);
        }
    }
}

/// Appends `v` as an Avro `double`.
pub(crate) fn write_double(buf: &mut Vec<u8>, v: f64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Appends a nullable double (`["null", "double"]`).
pub(crate) fn write_optional_double(buf: &mut Vec<u8>, v: Option<f64>) {
    match v {
        None => write_long(buf, 0),
        Some(v) => {
            write_long(buf, 1);
            write_double(buf, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_read_as_avro_writes_them() -> Result<(), DecodeError> {
        for (bytes, want) in [
            (&[0x00][..], 0),
            (&[0x01], -1),
            (&[0x02], 1),
            (&[0x7f], -64),
            (&[0x80, 0x01], 64),
            (
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MAX,
            ),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MIN,
            ),
        ] {
            let mut body = bytes;
            assert_eq!(long(&mut body)?, want);
            assert!(body.is_empty());
        }
        assert!(long(&mut &[0x80][..]).is_err());
        assert!(long(&mut &[0xff; 11][..]).is_err());
        let too_long = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(long(&mut &too_long[..]).is_err());
        Ok(())
    }
}
