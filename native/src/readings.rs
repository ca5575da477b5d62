//! `meter.readings` records (one JSON object, or a JSON array of them as the internal
//! reading-batches topic carries them) → samples grouped by device, parsed once and kept
//! native until the window math takes them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use pyo3::exceptions::PyIndexError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::windows::Sample;

/// Parses records with a table of the OBIS codes (`"1-0:1.8.0*255"` → position in a
/// sample's values) that aggregation uses; other values are ignored.
#[pyclass(module = "streams._native", frozen)]
pub struct ReadingParser {
    codes: HashMap<String, usize>,
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
    /// Per reading: the index of its record and its byte range there.
    origins: Vec<(usize, usize, usize)>,
    values: Arc<Vec<Py<PyBytes>>>,
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

    /// The i-th reading's record as it came (JSON text).
    fn record<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyBytes>> {
        let &(value, start, end) = self.origins.get(i)
            .ok_or_else(|| PyIndexError::new_err("no such reading"))?;
        Ok(PyBytes::new(py, &self.values[value].bind(py).as_bytes()[start..end]))
    }

    /// Index (in the parsed values) of the record holding the i-th reading.
    fn value_index(&self, i: usize) -> PyResult<usize> {
        self.origins.get(i).map(|o| o.0).ok_or_else(|| PyIndexError::new_err("no such reading"))
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

#[pymethods]
impl ReadingParser {
    #[new]
    fn new(codes: HashMap<String, usize>) -> Self {
        ReadingParser { codes }
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
        for (value_index, value) in values.iter().enumerate() {
            let bytes = value.bind(py).as_bytes();
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
                let origin = (value_index, start, start + text.len());
                let (device_id, sample, received) = match self.reading(text) {
                    Ok(parsed) => parsed,
                    Err(reason) => {
                        rejected.push((value_index, PyBytes::new(py, text.as_bytes()), reason));
                        continue;
                    }
                };
                let position = *index.entry(device_id.clone()).or_insert_with(|| {
                    groups.push(Group {
                        readings: DeviceReadings {
                            device_id, last_value: value_index, samples: Vec::new(),
                            origins: Vec::new(), values: Arc::clone(&values), received: Vec::new(),
                        },
                        received: HashMap::new(),
                    });
                    groups.len() - 1
                });
                let group = &mut groups[position];
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
        Ok((groups.into_iter().map(|g| g.readings).collect(), rejected))
    }
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

impl ReadingParser {
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
