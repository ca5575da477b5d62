//! The records of the internal reading-batches topic → samples grouped by device, parsed
//! once and kept native until the window math takes them. A record is either
//!
//! * compact: [`COMPACT`] and then entries, each the JSON members the decode agent adds to
//!   a body's readings (`"source":…,"received_at":…,"request_id":…`) and that body's items
//!   of the record's partition as a protobuf DeviceDataArray, both length-prefixed
//!   (varints); they are decoded again here, by the decoder that decoded them first;
//! * JSON: one `meter.readings` record, or an array of them (bodies the compiled decoder
//!   left to Python, `meterstream requeue-readings`, older workers).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::decode::{device_text, read_varint, RecordDecoder, MAX_US, MIN_US};
use crate::windows::Sample;

/// The first bytes of a compact record (no JSON text starts with 0x01).
pub const COMPACT: &[u8] = b"\x01MSB";

/// Parses records with a table of the OBIS codes (`"1-0:1.8.0*255"` → position in a
/// sample's values) that aggregation uses; other values are ignored.
#[pyclass(module = "streams._native", frozen)]
pub struct ReadingParser {
    codes: HashMap<String, usize>,
    decoder: Option<Py<RecordDecoder>>,
}

/// Where a reading came from: its record, and its bytes there.
enum Origin {
    /// A JSON reading object: (record, start, end).
    Json(usize, usize, usize),
    /// An item of a compact entry: (record, its JSON members, its protobuf field).
    Compact(usize, (usize, usize), (usize, usize)),
}

impl Origin {
    fn value_index(&self) -> usize {
        match self {
            Origin::Json(value, ..) | Origin::Compact(value, ..) => *value,
        }
    }
}

/// One device's readings of a batch, in the order they came.
#[pyclass(module = "streams._native", frozen)]
pub struct DeviceReadings {
    #[pyo3(get)]
    device_id: String,
    /// Index (in the parsed values) of the record holding the device's last reading.
    #[pyo3(get)]
    last_value: usize,
    samples: Vec<Sample>,
    origins: Vec<Origin>,
    values: Arc<Vec<Py<PyBytes>>>,
    decoder: Option<Py<RecordDecoder>>,
    /// The readings' distinct `received_at` texts, each with how many readings carry it.
    #[pyo3(get)]
    received: Vec<(String, usize)>,
}

impl DeviceReadings {
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

#[pymethods]
impl DeviceReadings {
    fn __len__(&self) -> usize {
        self.samples.len()
    }

    /// The i-th reading's `meter.readings` record (JSON text), as the decode agent wrote it.
    fn record<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyBytes>> {
        let origin = self.origins.get(i).ok_or_else(|| PyIndexError::new_err("no such reading"))?;
        let value = self.values[origin.value_index()].bind(py).as_bytes();
        match *origin {
            Origin::Json(_, start, end) => Ok(PyBytes::new(py, &value[start..end])),
            Origin::Compact(_, extra, field) => {
                let decoder = self.decoder.as_ref().expect("compact readings have a decoder");
                let record = decoder.borrow_mut(py).record_of(
                    py, &value[field.0..field.1], &value[extra.0..extra.1])?;
                record.map(|r| PyBytes::new(py, &r))
                    .ok_or_else(|| PyValueError::new_err("the reading no longer decodes"))
            }
        }
    }

    /// Index (in the parsed values) of the record holding the i-th reading.
    fn value_index(&self, i: usize) -> PyResult<usize> {
        self.origins.get(i).map(Origin::value_index)
            .ok_or_else(|| PyIndexError::new_err("no such reading"))
    }
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    device_id: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp_us: Option<&'a RawValue>,
    #[serde(borrow)]
    values: Option<&'a RawValue>,
    #[serde(borrow)]
    received_at: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Value<'a> {
    #[serde(borrow)]
    obis: Option<Cow<'a, str>>,
    // Present (null included: the register is absent from this reading) or missing.
    #[serde(borrow, default, deserialize_with = "present")]
    normalised: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

struct Group {
    readings: DeviceReadings,
    received: HashMap<String, usize>,
}

/// The groups being built, by device.
struct Grouping<'a, 'py> {
    py: Python<'py>,
    groups: &'a mut Vec<Group>,
    index: &'a mut HashMap<String, usize>,
    values: &'a Arc<Vec<Py<PyBytes>>>,
    decoder: &'a Option<Py<RecordDecoder>>,
}

impl Grouping<'_, '_> {
    fn add(&mut self, device_id: String, sample: Sample, received: Option<String>, origin: Origin) {
        let value_index = origin.value_index();
        let position = match self.index.get(&device_id) {
            Some(&position) => position,
            None => {
                self.index.insert(device_id.clone(), self.groups.len());
                self.groups.push(Group {
                    readings: DeviceReadings {
                        device_id, last_value: value_index, samples: Vec::new(),
                        origins: Vec::new(), values: Arc::clone(self.values),
                        decoder: self.decoder.as_ref().map(|d| d.clone_ref(self.py)),
                        received: Vec::new(),
                    },
                    received: HashMap::new(),
                });
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[position];
        group.readings.samples.push(sample);
        group.readings.origins.push(origin);
        group.readings.last_value = value_index;
        if let Some(text) = received {
            match group.received.get(&text) {
                Some(&slot) => group.readings.received[slot].1 += 1,
                None => {
                    group.received.insert(text.clone(), group.readings.received.len());
                    group.readings.received.push((text, 1));
                }
            }
        }
    }
}

#[pymethods]
impl ReadingParser {
    /// `decoder`: the one that decodes the bodies the compact records carry (None:
    /// compact records are rejected).
    #[new]
    #[pyo3(signature = (codes, decoder=None))]
    fn new(codes: HashMap<String, usize>, decoder: Option<Py<RecordDecoder>>) -> Self {
        ReadingParser { codes, decoder }
    }

    /// Group the readings of `values` (records) by device, in order of first appearance;
    /// plus, for whatever is not a usable reading, (index of its record, its JSON text,
    /// why).
    #[allow(clippy::type_complexity)]
    fn group<'py>(&self, py: Python<'py>, values: Vec<Py<PyBytes>>)
        -> PyResult<(Vec<DeviceReadings>, Vec<(usize, Bound<'py, PyBytes>, String)>)> {
        let values = Arc::new(values);
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut rejected = Vec::new();
        let mut grouping = Grouping { py, groups: &mut groups, index: &mut index, values: &values,
                                      decoder: &self.decoder };
        for (value_index, value) in values.iter().enumerate() {
            let bytes = value.bind(py).as_bytes();
            if bytes.starts_with(COMPACT) {
                if let Err(reason) = self.compact(py, value_index, bytes, &mut grouping)? {
                    rejected.push((value_index, PyBytes::new(py, bytes), format!(
                        "not a readable reading-batches record: {reason}")));
                }
                continue;
            }
            let items = match records(bytes) {
                Ok(items) => items,
                Err(reason) => {
                    rejected.push((value_index, PyBytes::new(py, bytes), format!(
                        "not a meter.readings record nor a list of them: {reason}")));
                    continue;
                }
            };
            for raw in items {
                let text = raw.get();
                let start = text.as_ptr() as usize - bytes.as_ptr() as usize;
                match self.reading(text) {
                    Ok((device_id, sample, received)) => grouping.add(
                        device_id, sample, received,
                        Origin::Json(value_index, start, start + text.len())),
                    Err(reason) => rejected.push((value_index, PyBytes::new(py, text.as_bytes()),
                                                  reason)),
                }
            }
        }
        Ok((groups.into_iter().map(|g| g.readings).collect(), rejected))
    }
}

/// The byte range of a varint-length-prefixed part at `*pos`, advancing `pos` past it.
fn length_prefixed(bytes: &[u8], pos: &mut usize) -> Option<(usize, usize)> {
    let size = usize::try_from(read_varint(bytes, pos)?).ok()?;
    let start = *pos;
    let end = start.checked_add(size).filter(|end| *end <= bytes.len())?;
    *pos = end;
    Some((start, end))
}

/// The reading objects of a record: the record itself, or the items of an array.
fn records(bytes: &[u8]) -> Result<Vec<&RawValue>, String> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        serde_json::from_slice::<Vec<&RawValue>>(bytes).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<&RawValue>(bytes).map(|raw| vec![raw]).map_err(|e| e.to_string())
    }
}

#[derive(Deserialize)]
struct Received {
    received_at: Option<String>,
}

impl ReadingParser {
    /// Adds the readings of a compact record; Err(why) when it is not readable (nothing of
    /// it is added then).
    fn compact(&self, py: Python<'_>, value_index: usize, bytes: &[u8], grouping: &mut Grouping<'_, '_>)
        -> PyResult<Result<(), String>> {
        let Some(decoder) = &self.decoder else {
            return Ok(Err("no decoder for compact records".into()));
        };
        let mut decoder = decoder.borrow_mut(py);
        let mut readings = Vec::new();
        let mut pos = COMPACT.len();
        while pos < bytes.len() {
            let Some(extra) = length_prefixed(bytes, &mut pos) else {
                return Ok(Err(format!("an entry's fields are cut off at byte {pos}")));
            };
            let Some(body) = length_prefixed(bytes, &mut pos) else {
                return Ok(Err(format!("an entry's body is cut off at byte {pos}")));
            };
            let mut members = Vec::with_capacity(extra.1 - extra.0 + 2);
            members.push(b'{');
            members.extend_from_slice(&bytes[extra.0..extra.1]);
            members.push(b'}');
            let received = match serde_json::from_slice::<Received>(&members) {
                Ok(fields) => fields.received_at,
                Err(e) => return Ok(Err(format!("an entry's fields are not JSON members ({e})"))),
            };
            let mut position_of = |text: &str| self.codes.get(text).copied();
            let Some(items) = decoder.samples(py, &bytes[body.0..body.1], &mut position_of)? else {
                return Ok(Err("an entry's body does not decode".into()));
            };
            for (lo, hi, ts, v, span) in items {
                let text = device_text(lo, hi);
                let device_id = String::from_utf8_lossy(&text).into_owned();
                let field = (body.0 + span.0, body.0 + span.1);
                readings.push((device_id, Sample { ts, v }, received.clone(),
                               Origin::Compact(value_index, extra, field)));
            }
        }
        drop(decoder);
        for (device_id, sample, received, origin) in readings {
            grouping.add(device_id, sample, received, origin);
        }
        Ok(Ok(()))
    }

    /// (device id, sample, received_at) of one reading object, or why it is unusable.
    fn reading(&self, text: &str) -> Result<(String, Sample, Option<String>), String> {
        let not_a_record = |why: &str| format!("not a meter.readings record: {why}");
        let fields: Fields = serde_json::from_str(text)
            .map_err(|e| not_a_record(&format!("not a JSON object ({e})")))?;
        let device_id: String = fields.device_id
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .ok_or_else(|| not_a_record("no device_id string"))?;
        let unusable = |why: String| format!("unusable reading: {why}");
        let ts = fields.timestamp_us
            .and_then(|raw| timestamp(raw.get()))
            .ok_or_else(|| unusable("no integer timestamp_us".into()))?;
        if !(MIN_US..=MAX_US).contains(&ts) {
            return Err(unusable(format!("timestamp_us {ts} is outside the years 1..9999")));
        }
        let values: Vec<Value> = fields.values
            .ok_or_else(|| unusable("no values".into()))
            .and_then(|raw| serde_json::from_str(raw.get())
                .map_err(|e| unusable(format!("values are not a list of OBIS values ({e})"))))?;
        let mut v = [None; 6];
        for value in values {
            let obis = value.obis.ok_or_else(|| unusable("a value without obis".into()))?;
            if let Some(&position) = self.codes.get(obis.as_ref()) {
                let normalised = value.normalised
                    .ok_or_else(|| unusable(format!("{obis}: no normalised value")))?;
                v[position] = serde_json::from_str::<Option<f64>>(normalised.get())
                    .map_err(|_| unusable(format!("{obis}: normalised value {} is not a number",
                                                  normalised.get())))?;
            }
        }
        let received = fields.received_at.and_then(|raw| serde_json::from_str(raw.get()).ok());
        Ok((device_id, Sample { ts, v }, received))
    }
}

/// An integer, or a float cut to one as Python's int() does.
fn timestamp(text: &str) -> Option<i64> {
    if let Ok(ts) = text.parse::<i64>() {
        return Some(ts);
    }
    let value: f64 = serde_json::from_str(text).ok()?;
    (value.is_finite() && value.abs() < 9.2e18).then(|| value.trunc() as i64)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReadingParser>()?;
    m.add_class::<DeviceReadings>()?;
    Ok(())
}
