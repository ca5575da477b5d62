//! smart-me webhook bodies (protobuf DeviceDataArray) → `meter.readings` record values.
//!
//! Only the well-formed, common case is decoded here: every field where the schema puts
//! it, each singular field at most once, canonical varints, OBIS codes the Python side
//! accepts, UTC/UNSPECIFIED timestamps inside the plausible range. For anything else
//! `records` returns None and `streams.codec.Decoder` decodes the body itself, so records
//! and error reasons never depend on which side decoded a body (protobuf's merge rules,
//! LOCAL time zones and the wording of errors stay in one place: Python).
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use pyo3::PyTraverseError;

use crate::json;

/// µs per unit of the bcl DateTime scales DAYS..MILLISECONDS (TICKS is handled apart).
const SCALE_US: [i64; 5] = [86_400_000_000, 3_600_000_000, 60_000_000, 1_000_000, 1_000];
const TICKS: u64 = 5;
/// The range Python's datetime covers (0001-01-01 .. 9999-12-31T23:59:59.999999), in µs
/// from the Unix epoch: `streams.codec._MIN_US` / `_MAX_US`.
pub(crate) const MIN_US: i64 = -62_135_596_800_000_000;
pub(crate) const MAX_US: i64 = 253_402_300_799_999_999;

/// A field's wire types in the schema.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Reads protobuf wire format; `None` means "not the plain case", never an error text.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// A varint in its shortest encoding. Longer encodings and bits beyond 64 are legal
    /// (or tolerated) protobuf, but rare enough to leave to the reference parser rather
    /// than to reason about how it treats them.
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        let mut value: u64 = 0;
        for index in 0..10 {
            let byte = *self.buf.get(self.pos)?;
            self.pos += 1;
            if index == 9 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7F) << (7 * index);
            if byte & 0x80 == 0 {
                if byte == 0 && index > 0 {
                    return None;
                }
                return Some(value);
            }
        }
        None
    }

    #[inline]
    fn fixed64(&mut self) -> Option<u64> {
        let bytes = self.buf.get(self.pos..self.pos + 8)?;
        self.pos += 8;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    fn fixed32(&mut self) -> Option<()> {
        self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(())
    }

    #[inline]
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let size = usize::try_from(self.varint()?).ok()?;
        if size > i32::MAX as usize {
            return None;
        }
        let bytes = self.buf.get(self.pos..self.pos.checked_add(size)?)?;
        self.pos += size;
        Some(bytes)
    }

    /// (field number, wire type); field 0 and tags beyond 32 bits are not protobuf.
    #[inline]
    fn tag(&mut self) -> Option<(u32, u8)> {
        let tag = u32::try_from(self.varint()?).ok()?;
        let field = tag >> 3;
        if field == 0 {
            return None;
        }
        Some((field, (tag & 7) as u8))
    }

    /// Skips a field nobody declared, as protobuf does; groups (deprecated, and unknown
    /// groups need matching end tags) are left to the reference parser.
    fn skip(&mut self, wire: u8) -> Option<()> {
        match wire {
            VARINT => self.varint().map(|_| ()),
            FIXED64 => self.fixed64().map(|_| ()),
            LEN => self.bytes().map(|_| ()),
            FIXED32 => self.fixed32(),
            _ => None,
        }
    }
}

/// One DeviceData, decoded; its values are `values[first..end]` of the body's list.
pub(crate) struct Item {
    pub lo: u64,
    pub hi: u64,
    pub timestamp_us: i64,
    first: usize,
    end: usize,
    /// The item's field (tag, length and bytes) in the body: a DeviceDataArray of its own.
    pub span: (usize, usize),
}

pub(crate) struct RawValue {
    code: [u8; 6],
    value: f64,
}

/// The accepted window of reading times (`check_plausible`'s bounds).
#[derive(Clone, Copy)]
pub(crate) struct Window {
    earliest_us: i64,
    latest_us: i64,
}

/// Any time Python's datetime can hold.
pub(crate) const ANY_TIME: Window = Window { earliest_us: MIN_US, latest_us: MAX_US };

pub(crate) fn parse_body(body: &[u8], window: Window, items: &mut Vec<Item>,
                         values: &mut Vec<RawValue>) -> Option<()> {
    let mut reader = Reader::new(body);
    while !reader.done() {
        let start = reader.pos;
        match reader.tag()? {
            (1, LEN) => {
                let mut item = parse_item(reader.bytes()?, window, values)?;
                item.span = (start, reader.pos);
                items.push(item);
            }
            (1, _) => return None,
            (_, wire) => reader.skip(wire)?,
        }
    }
    Some(())
}

fn parse_item(data: &[u8], window: Window, values: &mut Vec<RawValue>) -> Option<Item> {
    let mut reader = Reader::new(data);
    let mut device = None;
    let mut stamp = None;
    let first = values.len();
    while !reader.done() {
        match reader.tag()? {
            // A singular message given twice is merged by protobuf: left to Python.
            (1, LEN) if device.is_none() => device = Some(parse_guid(reader.bytes()?)?),
            (2, LEN) if stamp.is_none() => stamp = Some(parse_stamp(reader.bytes()?, window)?),
            (3, LEN) => values.push(parse_value(reader.bytes()?)?),
            (1..=3, _) => return None,
            (_, wire) => reader.skip(wire)?,
        }
    }
    let (lo, hi) = device?;
    Some(Item { lo, hi, timestamp_us: stamp?, first, end: values.len(), span: (0, 0) })
}

fn parse_guid(data: &[u8]) -> Option<(u64, u64)> {
    let mut reader = Reader::new(data);
    let (mut lo, mut hi) = (None, None);
    while !reader.done() {
        match reader.tag()? {
            (1, FIXED64) if lo.is_none() => lo = Some(reader.fixed64()?),
            (2, FIXED64) if hi.is_none() => hi = Some(reader.fixed64()?),
            (1..=2, _) => return None,
            (_, wire) => reader.skip(wire)?,
        }
    }
    Some((lo.unwrap_or(0), hi.unwrap_or(0)))
}

/// The reading time in µs, when it is a UTC/UNSPECIFIED time inside the window.
fn parse_stamp(data: &[u8], window: Window) -> Option<i64> {
    let mut reader = Reader::new(data);
    let (mut value, mut scale, mut kind) = (None, None, None);
    while !reader.done() {
        match reader.tag()? {
            (1, VARINT) if value.is_none() => {
                let n = reader.varint()?;
                value = Some((n >> 1) as i64 ^ -((n & 1) as i64)); // zigzag (sint64)
            }
            (2, VARINT) if scale.is_none() => scale = Some(reader.varint()?),
            (3, VARINT) if kind.is_none() => kind = Some(reader.varint()?),
            (1..=3, _) => return None,
            (_, wire) => reader.skip(wire)?,
        }
    }
    let value = value.unwrap_or(0);
    // LOCAL (2) needs the configured zone; other kinds are errors: both left to Python.
    if kind.unwrap_or(0) > 1 {
        return None;
    }
    let micros = match scale.unwrap_or(0) {
        TICKS => value.div_euclid(10), // floored, as Python's //
        scale @ 0..=4 => value.checked_mul(SCALE_US[scale as usize])?,
        _ => return None, // MINMAX or not a scale: errors, worded by Python
    };
    let plausible = (MIN_US..=MAX_US).contains(&micros)
        && (window.earliest_us..=window.latest_us).contains(&micros);
    plausible.then_some(micros)
}

fn parse_value(data: &[u8]) -> Option<RawValue> {
    let mut reader = Reader::new(data);
    let (mut code, mut value) = (None, None);
    while !reader.done() {
        match reader.tag()? {
            (1, LEN) if code.is_none() => code = Some(<[u8; 6]>::try_from(reader.bytes()?).ok()?),
            (2, FIXED64) if value.is_none() => value = Some(f64::from_bits(reader.fixed64()?)),
            (1..=2, _) => return None,
            (_, wire) => reader.skip(wire)?,
        }
    }
    let value = value.filter(|v| v.is_finite())?;
    Some(RawValue { code: code?, value })
}

/// What a value's JSON object needs from its OBIS code, as the Python side describes it:
/// `{"obis":…,"value":` (head) the raw value `,"quantity":…,"unit":…,"normalised":` (mid)
/// the raw value × scale `}`.
struct ObisJson {
    text: String,
    head: Vec<u8>,
    mid: Vec<u8>,
    scale: f64,
}

/// Hashes the few distinct keys of these caches (OBIS codes, GUID halves) with one
/// multiply: SipHash would be a good part of the per-value cost.
#[derive(Default)]
pub(crate) struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(crate) type Fold = BuildHasherDefault<FoldHasher>;

fn code_key(code: &[u8; 6]) -> u64 {
    let mut key = [0u8; 8];
    key[..6].copy_from_slice(code);
    u64::from_le_bytes(key)
}

/// The UUID text of a .NET Guid given as its two little-endian halves (the first three
/// groups are the little-endian fields of `lo`, the rest are bytes in order).
pub(crate) fn device_text(lo: u64, hi: u64) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&(lo as u32).to_be_bytes());
    bytes[4..6].copy_from_slice(&((lo >> 32) as u16).to_be_bytes());
    bytes[6..8].copy_from_slice(&((lo >> 48) as u16).to_be_bytes());
    bytes[8..].copy_from_slice(&hi.to_le_bytes());
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0xF)];
        at += 2;
    }
    text
}

/// Turns bodies into `(device_id, timestamp_us, record)` tuples, the record being the
/// `meter.readings` value byte for byte as the Python decode agent writes it.
#[pyclass(module = "streams._native")]
pub struct RecordDecoder {
    /// `obis_info(raw: bytes) -> (text, quantity, unit | None, scale) | None`, called once
    /// per new code; None: a code the fast path leaves to Python.
    obis_info: Option<Py<PyAny>>,
    obis: HashMap<u64, ObisJson, Fold>,
    devices: HashMap<(u64, u64), Py<PyString>, Fold>,
    cache_limit: usize,
    // Reused between bodies: no allocation per body once they have grown.
    items: Vec<Item>,
    values: Vec<RawValue>,
}

#[pymethods]
impl RecordDecoder {
    #[new]
    fn new(obis_info: Py<PyAny>, cache_limit: usize) -> Self {
        RecordDecoder {
            obis_info: Some(obis_info),
            obis: HashMap::default(),
            devices: HashMap::default(),
            cache_limit,
            items: Vec::new(),
            values: Vec::new(),
        }
    }

    /// One tuple per DeviceData, or None when the body is not the plain case (see the
    /// module's documentation). `extra` is JSON object members (`"k":v,...`, no braces)
    /// appended to every record.
    fn records<'py>(&mut self, py: Python<'py>, body: &[u8], extra: &[u8], earliest_us: i64,
                    latest_us: i64) -> PyResult<Option<Bound<'py, PyList>>> {
        let mut items = std::mem::take(&mut self.items);
        let mut values = std::mem::take(&mut self.values);
        items.clear();
        values.clear();
        let window = Window { earliest_us, latest_us };
        let result = match parse_body(body, window, &mut items, &mut values) {
            Some(()) => self.write(py, &items, &values, extra),
            None => Ok(None),
        };
        self.items = items;
        self.values = values;
        result
    }

    /// `records`, and the body cut by partition for the reading-batches topic: per
    /// partition `partition_of(device_id)` gives, an entry (see
    /// `streams.agents.decode.compact_values`) holding `extra` and the body's items of
    /// that partition, verbatim.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn records_by_partition<'py>(&mut self, py: Python<'py>, body: &[u8], extra: &[u8],
                                 earliest_us: i64, latest_us: i64,
                                 partition_of: &Bound<'py, PyAny>)
        -> PyResult<Option<(Bound<'py, PyList>, Vec<(i64, Bound<'py, PyBytes>)>)>> {
        let Some(records) = self.records(py, body, extra, earliest_us, latest_us)? else {
            return Ok(None);
        };
        let items = std::mem::take(&mut self.items);
        let groups = self.split(py, body, &items, partition_of);
        self.items = items;
        let entries = groups?.into_iter().map(|(partition, sub)| {
            let mut entry = Vec::with_capacity(extra.len() + sub.len() + 10);
            push_varint(&mut entry, extra.len() as u64);
            entry.extend_from_slice(extra);
            push_varint(&mut entry, sub.len() as u64);
            entry.extend_from_slice(&sub);
            (partition, PyBytes::new(py, &entry))
        }).collect();
        Ok(Some((records, entries)))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.obis_info)?;
        Ok(())
    }

    fn __clear__(&mut self) {
        self.obis_info = None;
    }
}

impl RecordDecoder {
    fn write<'py>(&mut self, py: Python<'py>, items: &[Item], values: &[RawValue], extra: &[u8]
                  ) -> PyResult<Option<Bound<'py, PyList>>> {
        if !self.know(py, values)? {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(items.len());
        let mut buf = Vec::with_capacity(256);
        for item in items {
            let text = device_text(item.lo, item.hi);
            buf.clear();
            self.write_record(&mut buf, &text, item, values, extra);
            let device = self.device(py, item.lo, item.hi, &text);
            let tuple = PyTuple::new(py, [
                device.into_any(),
                item.timestamp_us.into_pyobject(py)?.into_any(),
                PyBytes::new(py, &buf).into_any(),
            ])?;
            out.push(tuple);
        }
        Ok(Some(PyList::new(py, out)?))
    }

    /// Whether every code of `values` is known (asking the Python side about new ones).
    /// A full cache is emptied first, so no code of these values is dropped again while
    /// they are written.
    fn know(&mut self, py: Python<'_>, values: &[RawValue]) -> PyResult<bool> {
        let missing = values.iter().filter(|raw| !self.obis.contains_key(&code_key(&raw.code)));
        if self.obis.len() + missing.count() > self.cache_limit {
            self.obis.clear();
        }
        for raw in values {
            if !self.obis.contains_key(&code_key(&raw.code)) && !self.learn(py, &raw.code)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One item's `meter.readings` value (its codes known).
    fn write_record(&self, buf: &mut Vec<u8>, text: &[u8; 36], item: &Item, values: &[RawValue],
                    extra: &[u8]) {
        buf.extend_from_slice(b"{\"device_id\":\"");
        buf.extend_from_slice(text);
        buf.extend_from_slice(b"\",\"timestamp\":\"");
        json::push_timestamp_bytes(buf, item.timestamp_us);
        buf.extend_from_slice(b"\",\"timestamp_us\":");
        json::push_i64(buf, item.timestamp_us);
        buf.extend_from_slice(b",\"values\":[");
        for (index, raw) in values[item.first..item.end].iter().enumerate() {
            let obis = &self.obis[&code_key(&raw.code)];
            if index > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(&obis.head);
            json::push_f64(buf, raw.value);
            buf.extend_from_slice(&obis.mid);
            json::push_f64(buf, raw.value * obis.scale);
            buf.push(b'}');
        }
        buf.push(b']');
        if !extra.is_empty() {
            buf.push(b',');
            buf.extend_from_slice(extra);
        }
        buf.push(b'}');
    }

    /// The body's items grouped by the partition `partition_of(device_id)` gives, in
    /// order of first appearance: a DeviceDataArray of each group's items.
    fn split<'b>(&mut self, py: Python<'_>, body: &'b [u8], items: &[Item],
                 partition_of: &Bound<'_, PyAny>) -> PyResult<Vec<(i64, Vec<u8>)>> {
        let mut groups: Vec<(i64, Vec<usize>)> = Vec::new();
        let mut last: Option<((u64, u64), i64)> = None;
        for (index, item) in items.iter().enumerate() {
            let partition = match last {
                Some((device, partition)) if device == (item.lo, item.hi) => partition,
                _ => {
                    let text = device_text(item.lo, item.hi);
                    let device = self.device(py, item.lo, item.hi, &text);
                    let partition: i64 = partition_of.call1((device,))?.extract()?;
                    last = Some(((item.lo, item.hi), partition));
                    partition
                }
            };
            match groups.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, members)) => members.push(index),
                None => groups.push((partition, vec![index])),
            }
        }
        if groups.len() == 1 {
            return Ok(vec![(groups[0].0, body.to_vec())]);
        }
        Ok(groups.into_iter().map(|(partition, members)| {
            let mut sub = Vec::with_capacity(body.len());
            for index in members {
                let (start, end) = items[index].span;
                sub.extend_from_slice(&body[start..end]);
            }
            (partition, sub)
        }).collect())
    }

    /// Samples of a body decoded natively before (a reading-batches entry): per item its
    /// device, time and the values at the positions `position_of` gives their OBIS text
    /// (others ignored), each the raw value × scale as in the record. None: not a body
    /// this decoder takes (it took it when it was decoded, so only a changed OBIS setup).
    #[allow(clippy::type_complexity)]
    pub(crate) fn samples(&mut self, py: Python<'_>, body: &[u8],
                          position_of: &mut dyn FnMut(&str) -> Option<usize>)
        -> PyResult<Option<Vec<(u64, u64, i64, [Option<f64>; 6], (usize, usize))>>> {
        let (mut items, mut values) = (Vec::new(), Vec::new());
        if parse_body(body, ANY_TIME, &mut items, &mut values).is_none()
            || !self.know(py, &values)? {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(items.len());
        for item in &items {
            let mut v = [None; 6];
            for raw in &values[item.first..item.end] {
                let obis = &self.obis[&code_key(&raw.code)];
                if let Some(position) = position_of(&obis.text) {
                    // As the record has it: a product out of range is written as null.
                    v[position] = Some(raw.value * obis.scale).filter(|x| x.is_finite());
                }
            }
            out.push((item.lo, item.hi, item.timestamp_us, v, item.span));
        }
        Ok(Some(out))
    }

    /// The `meter.readings` value of the one item in `field` (its tag, length and bytes,
    /// as [`Item::span`] gives it) with `extra`.
    pub(crate) fn record_of(&mut self, py: Python<'_>, field: &[u8], extra: &[u8])
        -> PyResult<Option<Vec<u8>>> {
        let (mut items, mut values) = (Vec::new(), Vec::new());
        if parse_body(field, ANY_TIME, &mut items, &mut values).is_none() || items.len() != 1
            || !self.know(py, &values)? {
            return Ok(None);
        }
        let item = &items[0];
        let mut buf = Vec::with_capacity(256);
        self.write_record(&mut buf, &device_text(item.lo, item.hi), item, &values, extra);
        Ok(Some(buf))
    }

    /// Asks the Python side about a code; false when it leaves the code to Python.
    fn learn(&mut self, py: Python<'_>, code: &[u8; 6]) -> PyResult<bool> {
        let Some(obis_info) = &self.obis_info else {
            return Ok(false);
        };
        let info = obis_info.bind(py).call1((PyBytes::new(py, code),))?;
        if info.is_none() {
            return Ok(false);
        }
        let (text, quantity, unit, scale): (String, String, Option<String>, f64) =
            info.extract()?;
        let mut head = Vec::with_capacity(32);
        head.push(b'{');
        json::push_key(&mut head, "obis");
        json::push_str(&mut head, &text);
        head.push(b',');
        json::push_key(&mut head, "value");
        let mut mid = Vec::with_capacity(64);
        mid.push(b',');
        json::push_key(&mut mid, "quantity");
        json::push_str(&mut mid, &quantity);
        mid.push(b',');
        json::push_key(&mut mid, "unit");
        match unit {
            Some(unit) => json::push_str(&mut mid, &unit),
            None => mid.extend_from_slice(b"null"),
        }
        mid.push(b',');
        json::push_key(&mut mid, "normalised");
        if self.obis.len() >= self.cache_limit {
            return Ok(false); // a body with more distinct codes than the cache holds
        }
        self.obis.insert(code_key(code), ObisJson { text, head, mid, scale });
        Ok(true)
    }

    /// The device id as a str, one object per device (its hash is computed once for the
    /// agent's partition lookups).
    fn device<'py>(&mut self, py: Python<'py>, lo: u64, hi: u64, text: &[u8; 36]
                   ) -> Bound<'py, PyString> {
        if let Some(known) = self.devices.get(&(lo, hi)) {
            return known.bind(py).clone();
        }
        // ASCII hex and dashes: always UTF-8.
        let device = PyString::new(py, std::str::from_utf8(text).unwrap_or_default());
        if self.devices.len() >= self.cache_limit {
            self.devices.clear();
        }
        self.devices.insert((lo, hi), device.clone().unbind());
        device
    }
}

pub(crate) fn push_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// A varint at `*pos` of `buf` (any encoding), advancing `pos`.
pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RecordDecoder>()
}
