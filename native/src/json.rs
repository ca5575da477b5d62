//! JSON text exactly as orjson writes it (what the Python side of meterstream writes), so
//! records and digests do not depend on which side produced them.

/// A string, quoted and escaped as orjson does (serde_json's escaping is the same).
pub fn push_str(buf: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *buf, text).expect("writing to a Vec cannot fail");
}

/// A float in the shortest form that reads back the same; NaN and infinities as null,
/// as orjson does.
pub fn push_f64(buf: &mut Vec<u8>, value: f64) {
    if value.is_finite() {
        buf.extend_from_slice(zmij::Buffer::new().format_finite(value).as_bytes());
    } else {
        buf.extend_from_slice(b"null");
    }
}

pub fn push_opt_f64(buf: &mut Vec<u8>, value: Option<f64>) {
    match value {
        Some(v) => push_f64(buf, v),
        None => buf.extend_from_slice(b"null"),
    }
}

pub fn push_i64(buf: &mut Vec<u8>, value: i64) {
    buf.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// `"key":` (the key needs no escaping: the callers' keys are fixed ASCII names).
pub fn push_key(buf: &mut Vec<u8>, key: &str) {
    buf.push(b'"');
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":");
}

/// Microseconds since the Unix epoch as ISO-8601 UTC with a `Z`, microseconds only when
/// not zero: the text of `streams.codec.format_timestamp` (years 1..9999).
pub fn format_timestamp(timestamp_us: i64) -> String {
    let mut buf = Vec::with_capacity(27);
    push_timestamp_bytes(&mut buf, timestamp_us);
    String::from_utf8(buf).expect("timestamps are ASCII")
}

/// A timestamp as a JSON string (it needs no escaping).
pub fn push_timestamp_json(buf: &mut Vec<u8>, timestamp_us: i64) {
    buf.push(b'"');
    push_timestamp_bytes(buf, timestamp_us);
    buf.push(b'"');
}

/// Written digit by digit: several per window record, so `write!` showed in profiles.
pub fn push_timestamp_bytes(buf: &mut Vec<u8>, timestamp_us: i64) {
    let micros = timestamp_us.rem_euclid(1_000_000);
    let seconds = timestamp_us.div_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    push_digits(buf, year, 4);
    buf.push(b'-');
    push_digits(buf, month, 2);
    buf.push(b'-');
    push_digits(buf, day, 2);
    buf.push(b'T');
    push_digits(buf, second_of_day / 3600, 2);
    buf.push(b':');
    push_digits(buf, second_of_day / 60 % 60, 2);
    buf.push(b':');
    push_digits(buf, second_of_day % 60, 2);
    if micros != 0 {
        buf.push(b'.');
        push_digits(buf, micros, 6);
    }
    buf.push(b'Z');
}

/// `value` (0 <= value < 10^width) zero-padded to `width` digits.
fn push_digits(buf: &mut Vec<u8>, mut value: i64, width: usize) {
    let start = buf.len();
    buf.resize(start + width, b'0');
    for slot in buf[start..].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Lower-case hex of bytes.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 15)] as char);
    }
}

/// Proleptic Gregorian (year, month, day) of a day number relative to 1970-01-01
/// (Howard Hinnant's days-to-civil algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
