//! Kafka record batches (magic 2, uncompressed) built in one call per batch, for aiokafka's
//! `send_batch`: the object answers what aiokafka asks of its own `BatchBuilder` (the same
//! bytes for the same records, a unit test compares them). aiokafka appends record by
//! record in Python and computes CRC-32C in software; a worker sends two or more records
//! per reading.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::decode::push_varint;

/// BaseOffset, Length, PartitionLeaderEpoch, Magic, CRC, Attributes, LastOffsetDelta,
/// FirstTimestamp, MaxTimestamp, ProducerId, ProducerEpoch, BaseSequence, Records count.
const HEADER: usize = 8 + 4 + 4 + 1 + 4 + 2 + 4 + 8 + 8 + 8 + 2 + 4 + 4;
const LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;

#[pyclass(module = "streams._native")]
pub struct RecordBatch {
    buf: Vec<u8>,
    batch_size: usize,
    count: i32,
    first_ts: Option<i64>,
    max_ts: i64,
    closed: bool,
    built: Option<Py<PyBytes>>,
    producer: (i64, i16, i32),
    record: Vec<u8>, // scratch: one record before its length is known
}

#[pymethods]
impl RecordBatch {
    /// `batch_size`: the producer's max_batch_size (a batch's first record always fits).
    #[new]
    fn new(batch_size: usize) -> Self {
        RecordBatch {
            buf: vec![0; HEADER],
            batch_size,
            count: 0,
            first_ts: None,
            max_ts: 0,
            closed: false,
            built: None,
            producer: (-1, -1, 0),
            record: Vec::with_capacity(1024),
        }
    }

    /// Appends `records[start:]` — (key, value, timestamp_ms or None, headers) — until the
    /// batch is full; returns the index of the first record not appended.
    fn append(&mut self, py: Python<'_>, records: &Bound<'_, PyList>, start: usize)
        -> PyResult<usize> {
        if self.closed {
            return Err(PyValueError::new_err("the batch is closed"));
        }
        let mut now: Option<i64> = None;
        for index in start..records.len() {
            let item = records.get_item(index)?;
            let record = item.cast::<PyTuple>().map_err(
                |_| PyTypeError::new_err("a record is a (key, value, timestamp_ms, headers) tuple"))?;
            let timestamp = match record.get_item(2)?.extract::<Option<i64>>()? {
                Some(ts) => ts,
                None => *now.get_or_insert_with(|| now_ms(py)),
            };
            if !self.append_one(&record, timestamp)? {
                self.closed = true;
                return Ok(index);
            }
        }
        Ok(records.len())
    }

    fn close(&mut self) {
        self.closed = true;
    }

    fn closed(&self) -> bool {
        self.closed
    }

    fn record_count(&self) -> i32 {
        self.count
    }

    fn size(&self) -> usize {
        self.buf.len()
    }

    #[allow(non_snake_case)]
    fn _set_producer_state(&mut self, producer_id: i64, producer_epoch: i16,
                           base_sequence: i32) {
        self.producer = (producer_id, producer_epoch, base_sequence);
    }

    /// The batch's bytes (built once: aiokafka may ask again on a retry).
    fn _build(&mut self, py: Python<'_>) -> Py<PyBytes> {
        self.closed = true;
        if let Some(built) = &self.built {
            return built.clone_ref(py);
        }
        self.write_header();
        let built = PyBytes::new(py, &self.buf).unbind();
        self.buf = Vec::new();
        self.built = Some(built.clone_ref(py));
        built
    }
}

impl RecordBatch {
    /// Appends one record; false when it does not fit (and the batch is not empty).
    fn append_one(&mut self, record: &Bound<'_, PyTuple>, timestamp: i64) -> PyResult<bool> {
        let key = record.get_item(0)?;
        let value = record.get_item(1)?;
        let headers = record.get_item(3)?;
        let first = self.count == 0;
        let delta = timestamp - self.first_ts.unwrap_or(timestamp);
        let out = &mut self.record;
        out.clear();
        out.push(0); // attributes
        push_varlong(out, delta);
        push_varlong(out, i64::from(self.count)); // offset delta
        push_optional_bytes(out, &key)?;
        push_optional_bytes(out, &value)?;
        let headers = headers.cast::<PyList>().map_err(
            |_| PyTypeError::new_err("a record's headers are a list of (str, bytes)"))?;
        push_varlong(out, headers.len() as i64);
        for header in headers.iter() {
            let (name, data): (Bound<'_, PyString>, Bound<'_, PyAny>) = header.extract()?;
            let name = name.to_str()?;
            push_varlong(out, name.len() as i64);
            out.extend_from_slice(name.as_bytes());
            push_optional_bytes(out, &data)?;
        }
        let length = self.record.len() as i64;
        // `>=`, as aiokafka's compiled builder decides (its Python twin says `>`).
        if !first && self.buf.len() + self.record.len() + varlong_size(length) >= self.batch_size {
            return Ok(false);
        }
        push_varlong(&mut self.buf, length);
        self.buf.extend_from_slice(&self.record);
        self.first_ts.get_or_insert(timestamp);
        self.max_ts = if first { timestamp } else { self.max_ts.max(timestamp) };
        self.count += 1;
        Ok(true)
    }

    fn write_header(&mut self) {
        let length = (self.buf.len() - LENGTH_AT - 4) as i32;
        let (producer_id, producer_epoch, base_sequence) = self.producer;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(&0i64.to_be_bytes()); // base offset: the broker's
        header.extend_from_slice(&length.to_be_bytes());
        header.extend_from_slice(&(-1i32).to_be_bytes()); // no partition leader epoch
        header.push(2); // magic
        header.extend_from_slice(&0u32.to_be_bytes()); // CRC, below
        header.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression
        header.extend_from_slice(&(self.count - 1).max(0).to_be_bytes()); // last offset delta
        header.extend_from_slice(&self.first_ts.unwrap_or(0).to_be_bytes());
        header.extend_from_slice(&(if self.count > 0 { self.max_ts } else { 0 }).to_be_bytes());
        header.extend_from_slice(&producer_id.to_be_bytes());
        header.extend_from_slice(&producer_epoch.to_be_bytes());
        header.extend_from_slice(&base_sequence.to_be_bytes());
        header.extend_from_slice(&self.count.to_be_bytes());
        self.buf[..HEADER].copy_from_slice(&header);
        let crc = crc32c::crc32c(&self.buf[ATTRIBUTES_AT..]);
        self.buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Milliseconds since the epoch, from Python's clock (as aiokafka stamps a record).
fn now_ms(py: Python<'_>) -> i64 {
    py.import("time").and_then(|time| time.call_method0("time"))
        .and_then(|now| now.extract::<f64>())
        .map(|seconds| (seconds * 1000.0) as i64)
        .unwrap_or(0)
}

fn push_optional_bytes(out: &mut Vec<u8>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    if data.is_none() {
        push_varlong(out, -1);
        return Ok(());
    }
    let bytes = data.cast::<PyBytes>().map_err(
        |_| PyTypeError::new_err("record keys, values and header values are bytes or None"))?;
    let bytes = bytes.as_bytes();
    push_varlong(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
    Ok(())
}

/// A zigzag varint, as Kafka's records use for every length and delta.
fn push_varlong(out: &mut Vec<u8>, value: i64) {
    push_varint(out, zigzag(value));
}

fn varlong_size(value: i64) -> usize {
    (64 - (zigzag(value) | 1).leading_zeros() as usize).div_ceil(7)
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RecordBatch>()
}
