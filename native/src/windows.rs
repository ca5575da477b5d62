//! Per-device window aggregation, compiled: the semantics of the Python model in
//! `tests/windows_model.py` (and of the README's "Window aggregates"), rule for rule, so
//! that both give the same records, revisions, digests and state on any trace (a property
//! test compares them).
//!
//! State per device, in the same JSON shapes the Python side always wrote:
//!
//! * the *head* stays a Python dict (the agent keeps its own keys in it: offline watch,
//!   reconciliation, partition); the window keys `event_time`, `arrival`, `chunks`,
//!   `pending`, `anchors` and `latest` are read at the start of every operation and
//!   written back at its end;
//! * *chunks* (`device|chunk_start` → `{"samples": [...], "windows": {...}}`) are raw JSON
//!   bytes, loaded through a Python callable and handed back by [`Device::take_writes`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use blake2::digest::consts::U8;
use blake2::{Blake2b, Digest};
use xxhash_rust::xxh3::xxh3_64;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::json::{
    format_timestamp, push_hex, push_i64, push_key, push_opt_f64, push_str, push_timestamp_json,
};
use crate::decode::{Fold, MAX_US, MIN_US};
use crate::readings::DeviceReadings;

const US: i64 = 1_000_000;
// Positions in a sample's values (a stored sample is [ts, import, export, power, l1, l2, l3]).
const IMP: usize = 0;
const EXP: usize = 1;
const POW: usize = 2;
const PHASES: [(&str, usize); 3] = [("l1", 3), ("l2", 4), ("l3", 5)];

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub ts: i64,
    pub v: [Option<f64>; 6],
}

impl Sample {
    fn anchor(ts: i64, index: usize, value: f64) -> Sample {
        let mut v = [None; 6];
        v[index] = Some(value);
        Sample { ts, v }
    }
}

// -- configuration --------------------------------------------------------------------------

#[pyclass(module = "streams._native", frozen)]
pub struct Windows {
    /// Window boundaries as JSON text: every device's windows share the same few.
    boundaries: Mutex<HashMap<i64, Text, Fold>>,
    sizes_us: Vec<i64>,
    settle_sizes: Vec<i64>,
    grace_us: i64,
    lateness_us: i64,
    allowed_lateness: i64,
    chunk_us: i64,
    emit_interim: bool,
}

// -- state ------------------------------------------------------------------------------------

#[derive(Clone, Default, PartialEq)]
struct Head {
    event_time: Option<i64>,
    arrival: Option<i64>,
    chunks: Vec<i64>,
    pending: Vec<(String, Vec<i64>)>, // in the dict's order: finalizing follows it
    anchors: [Option<(i64, f64)>; 2],
    latest: Option<Sample>,
}

struct Meta {
    size_s: i64,
    start: i64,
    revision: i64,
    digest: String,
}

#[derive(Default)]
struct Chunk {
    samples: Vec<Sample>,
    windows: Vec<Meta>, // in insertion order, as the Python dict kept them
}

impl Chunk {
    fn meta(&self, size_s: i64, start: i64) -> Option<&Meta> {
        self.windows.iter().find(|m| m.size_s == size_s && m.start == start)
    }
}

/// One device's head (a Python dict shared with the agent) and its lazily loaded chunks.
#[pyclass(module = "streams._native", unsendable)]
pub struct Device {
    #[pyo3(get)]
    id: String,
    #[pyo3(get)]
    head: Py<PyDict>,
    load: Py<PyAny>,
    /// JSON members (`"k":v,...`) added to each of the device's window records: its EAN,
    /// address, customer and name when known.
    annotation: Vec<u8>,
    chunks: HashMap<i64, Chunk, Fold>,
    dirty: BTreeSet<i64>,
    deleted: BTreeSet<i64>,
    head_dirty: bool,
}

#[pymethods]
impl Device {
    /// `head`: the stored head (None for a new device); `load(key)`: a chunk's stored JSON
    /// bytes, or None; `annotation`: JSON members added to its window records.
    #[new]
    #[pyo3(signature = (device_id, head, load, annotation=None))]
    fn new(py: Python<'_>, device_id: String, head: Option<Bound<'_, PyDict>>,
           load: Py<PyAny>, annotation: Option<&[u8]>) -> PyResult<Self> {
        let annotation = annotation.unwrap_or_default().to_vec();
        let head_dirty = head.is_none();
        let head = match head {
            Some(dict) => dict.unbind(),
            None => {
                let dict = PyDict::new(py);
                Head::default().store(py, &dict, None)?;
                dict.unbind()
            }
        };
        Ok(Device { id: device_id, head, load, annotation, chunks: HashMap::default(),
                    dirty: BTreeSet::new(), deleted: BTreeSet::new(), head_dirty })
    }

    fn mark_head(&mut self) {
        self.head_dirty = true;
    }

    /// What changed since the last call: (chunk key → JSON to store, chunk keys to delete,
    /// whether the head must be stored).
    fn take_writes<'py>(&mut self, py: Python<'py>)
        -> PyResult<(Vec<(String, Bound<'py, PyBytes>)>, Vec<String>, bool)> {
        let mut puts = Vec::new();
        for start in self.dirty.difference(&self.deleted) {
            let chunk = self.chunks.get(start).ok_or_else(
                || PyValueError::new_err("a changed chunk is not loaded"))?;
            puts.push((chunk_key(&self.id, *start), PyBytes::new(py, &chunk_json(chunk))));
        }
        let deletes = self.deleted.iter().map(|start| chunk_key(&self.id, *start)).collect();
        let head = self.head_dirty || !self.dirty.is_empty() || !self.deleted.is_empty();
        self.dirty.clear();
        self.deleted.clear();
        self.head_dirty = false;
        Ok((puts, deletes, head))
    }
}

fn chunk_key(device_id: &str, start: i64) -> String {
    format!("{device_id}|{start}")
}

/// A device's state during one operation: the head parsed out of its dict, the device's
/// chunk cache, and the loader for chunks not read yet.
struct State<'a, 'py> {
    py: Python<'py>,
    head: Head,
    read: Head,
    device: &'a mut Device,
}

impl<'a, 'py> State<'a, 'py> {
    fn open(py: Python<'py>, device: &'a mut Device) -> PyResult<Self> {
        let head = Head::read(device.head.bind(py))?;
        Ok(State { py, read: head.clone(), head, device })
    }

    fn close(self) -> PyResult<()> {
        self.head.store(self.py, self.device.head.bind(self.py), Some(&self.read))
    }

    fn key(&self, start: i64) -> String {
        chunk_key(&self.device.id, start)
    }

    /// Makes the chunk at `start` available (loading it when it is in the head's index);
    /// with `create`, a missing chunk is created and indexed. Whether it exists now.
    fn chunk(&mut self, start: i64, create: bool) -> PyResult<bool> {
        if self.device.chunks.contains_key(&start) {
            return Ok(true);
        }
        let mut data = None;
        if self.head.chunks.binary_search(&start).is_ok() {
            let raw = self.device.load.bind(self.py).call1((self.key(start),))?;
            if !raw.is_none() {
                let bytes = raw.cast::<PyBytes>().map_err(
                    |_| PyTypeError::new_err("a stored chunk must be bytes"))?;
                data = Some(parse_chunk(bytes.as_bytes()).map_err(|e| PyValueError::new_err(
                    format!("chunk {} is not readable: {e}", self.key(start))))?);
            }
        }
        let chunk = match data {
            Some(chunk) => chunk,
            None if !create => return Ok(false),
            None => {
                insort(&mut self.head.chunks, start);
                self.device.head_dirty = true;
                Chunk::default()
            }
        };
        self.device.chunks.insert(start, chunk);
        Ok(true)
    }

    fn samples(&mut self, start: i64) -> PyResult<&Vec<Sample>> {
        if !self.chunk(start, false)? {
            return Err(PyValueError::new_err(format!("chunk {} is indexed but not stored",
                                                     self.key(start))));
        }
        Ok(&self.device.chunks[&start].samples)
    }

    fn touch(&mut self, start: i64) {
        self.device.dirty.insert(start);
    }

    /// Samples with lo <= ts < hi, in order.
    fn samples_between(&mut self, lo: i64, hi: i64) -> PyResult<Vec<Sample>> {
        let mut found = Vec::new();
        let first = bisect_right(&self.head.chunks, lo).saturating_sub(1);
        for position in first..self.head.chunks.len() {
            let start = self.head.chunks[position];
            if start >= hi {
                break;
            }
            let samples = self.samples(start)?;
            let from = lower_bound(samples, lo);
            let to = lower_bound(samples, hi);
            found.extend_from_slice(&samples[from..to]);
        }
        Ok(found)
    }

    /// The samples with lo <= ts < hi when they all lie in one chunk (no copy), or None.
    fn samples_within_chunk(&mut self, lo: i64, hi: i64, chunk_us: i64)
        -> PyResult<Option<&[Sample]>> {
        let start = lo - lo.rem_euclid(chunk_us);
        if hi - 1 - (hi - 1).rem_euclid(chunk_us) != start {
            return Ok(None);
        }
        if self.head.chunks.binary_search(&start).is_err() && !self.device.chunks.contains_key(&start) {
            return Ok(Some(&[])); // no chunk there: no samples
        }
        let samples = self.samples(start)?; // an error for one indexed but not stored
        Ok(Some(&samples[lower_bound(samples, lo)..lower_bound(samples, hi)]))
    }

    /// The last sample before ts carrying value `index` (any sample for None), among the
    /// samples still kept (no anchors).
    fn before(&mut self, ts: i64, index: Option<usize>) -> PyResult<Option<Sample>> {
        let mut position = bisect_left(&self.head.chunks, ts);
        while position > 0 {
            position -= 1;
            let start = self.head.chunks[position];
            let samples = self.samples(start)?;
            for sample in samples[..lower_bound(samples, ts)].iter().rev() {
                if index.is_none_or(|i| sample.v[i].is_some()) {
                    return Ok(Some(*sample));
                }
            }
        }
        Ok(None)
    }

    /// For import and export (where asked for), the last sample before ts carrying the
    /// register, or its anchor once the samples that far back were pruned.
    fn registers_before(&mut self, ts: i64, imp: bool, exp: bool) -> PyResult<[Option<Sample>; 2]> {
        let (found, missing) = self.scan_registers(ts, [imp, exp], true)?;
        Ok([0, 1].map(|i| if missing[i] { self.anchor(i) } else { found[i] }))
    }

    /// For import and export (where asked for), the first sample at or after ts carrying it.
    fn registers_after(&mut self, ts: i64, imp: bool, exp: bool) -> PyResult<[Option<Sample>; 2]> {
        Ok(self.scan_registers(ts, [imp, exp], false)?.0)
    }

    /// The nearest samples before ts (backward) or at/after it carrying each asked-for
    /// register, and which of the asked-for registers were not found.
    fn scan_registers(&mut self, ts: i64, mut wanted: [bool; 2], backward: bool)
        -> PyResult<([Option<Sample>; 2], [bool; 2])> {
        let mut found = [None, None];
        let count = self.head.chunks.len() as isize;
        let (mut position, step, stop) = if backward {
            (bisect_left(&self.head.chunks, ts) as isize - 1, -1, -1)
        } else {
            ((bisect_right(&self.head.chunks, ts) as isize - 1).max(0), 1, count)
        };
        while (wanted[0] || wanted[1]) && position != stop {
            let start = self.head.chunks[position as usize];
            let samples = self.samples(start)?;
            let cut = lower_bound(samples, ts);
            let mut visit = |sample: &Sample| {
                for i in 0..2 {
                    if wanted[i] && sample.v[i].is_some() {
                        found[i] = Some(*sample);
                        wanted[i] = false;
                    }
                }
                !(wanted[0] || wanted[1])
            };
            if backward {
                for sample in samples[..cut].iter().rev() {
                    if visit(sample) {
                        break;
                    }
                }
            } else {
                for sample in &samples[cut..] {
                    if visit(sample) {
                        break;
                    }
                }
            }
            position += step;
        }
        Ok((found, wanted))
    }

    fn anchor(&self, index: usize) -> Option<Sample> {
        self.head.anchors[index].map(|(ts, value)| Sample::anchor(ts, index, value))
    }

    fn delete_chunk(&mut self, start: i64) {
        if let Ok(position) = self.head.chunks.binary_search(&start) {
            self.head.chunks.remove(position);
        }
        self.device.chunks.remove(&start);
        self.device.deleted.insert(start);
        self.device.head_dirty = true;
    }
}

// -- what an operation gives back ---------------------------------------------------------------

/// One window record as published: its JSON text and what the agent needs to route and
/// count it without parsing that text.
#[pyclass(module = "streams._native", frozen, get_all)]
pub struct Window {
    device_id: String,
    size: i64,
    start_us: i64,
    revision: i64,
    #[pyo3(name = "final")]
    is_final: bool,
    energy_import_wh: Option<f64>,
    energy_export_wh: Option<f64>,
    /// The record's JSON text.
    json: Py<PyBytes>,
    /// `device_id|size|window_start`: the key a compacted topic keeps the latest revision by.
    key: Py<PyBytes>,
}

#[pyclass(module = "streams._native")]
#[derive(Default)]
pub struct Outcome {
    /// Made into Python objects only when asked for (see `emitted`): the agent uses the
    /// records and the summaries.
    windows: Vec<Window>,
    /// The emitted windows as records for `meter.aggregates`: (key, value, timestamp in ms,
    /// headers), what the agent's outbox queues, so that it handles none of them one by one.
    #[pyo3(get)]
    records: Vec<Py<PyTuple>>,
    /// How many windows were emitted, by (size, "final" | "revision" | "interim").
    #[pyo3(get)]
    counts: Vec<(i64, &'static str, u64)>,
    /// Per size, the final window with the latest start: (size, start µs, import, export).
    #[pyo3(get)]
    newest: Vec<(i64, i64, Option<f64>, Option<f64>)>,
    /// (position of the reading in the input, why it is too late)
    #[pyo3(get)]
    late: Vec<(usize, String)>,
    #[pyo3(get)]
    duplicates: u64,
    #[pyo3(get)]
    conflicting_duplicates: u64,
    #[pyo3(get)]
    revisions: u64,
    #[pyo3(get)]
    finals: u64,
    /// The records' headers: none, one list shared by all of them.
    no_headers: Option<Py<PyList>>,
}

#[pymethods]
impl Outcome {
    /// The emitted windows, in the order they were emitted.
    #[getter]
    fn emitted(&self, py: Python<'_>) -> PyResult<Vec<Py<Window>>> {
        self.windows.iter().map(|window| Py::new(py, window.clone_ref(py))).collect()
    }

    /// The final windows (first emissions and revisions) of a size in seconds:
    /// (start µs, import Wh, export Wh).
    fn finals_of(&self, size: i64) -> Vec<(i64, Option<f64>, Option<f64>)> {
        self.windows.iter()
            .filter(|window| window.is_final && window.size == size)
            .map(|window| (window.start_us, window.energy_import_wh, window.energy_export_wh))
            .collect()
    }
}

impl Window {
    fn clone_ref(&self, py: Python<'_>) -> Window {
        Window {
            device_id: self.device_id.clone(),
            size: self.size,
            start_us: self.start_us,
            revision: self.revision,
            is_final: self.is_final,
            energy_import_wh: self.energy_import_wh,
            energy_export_wh: self.energy_export_wh,
            json: self.json.clone_ref(py),
            key: self.key.clone_ref(py),
        }
    }
}

impl Outcome {
    fn add(&mut self, py: Python<'_>, window: Window) -> PyResult<()> {
        let kind = match (window.is_final, window.revision) {
            (false, _) => "interim",
            (true, 0) => "final",
            (true, _) => "revision",
        };
        match self.counts.iter_mut().find(|(size, k, _)| *size == window.size && *k == kind) {
            Some(count) => count.2 += 1,
            None => self.counts.push((window.size, kind, 1)),
        }
        if window.is_final {
            let entry = (window.size, window.start_us, window.energy_import_wh,
                         window.energy_export_wh);
            match self.newest.iter_mut().find(|n| n.0 == window.size) {
                Some(newest) if window.start_us >= newest.1 => *newest = entry,
                Some(_) => {}
                None => self.newest.push(entry),
            }
        }
        // The window's start as the record's time; none (the producer's clock) for a start
        // at or before the epoch, which Kafka would refuse.
        let timestamp = (window.start_us > 0).then(|| window.start_us / 1000);
        let headers = self.no_headers.get_or_insert_with(|| PyList::empty(py).unbind());
        self.records.push(PyTuple::new(py, [
            window.key.clone_ref(py).into_any(),
            window.json.clone_ref(py).into_any(),
            timestamp.into_pyobject(py)?.into_any().unbind(),
            headers.clone_ref(py).into_any(),
        ])?.unbind());
        self.windows.push(window);
        Ok(())
    }
}

/// A window's content before it is published: kept as computed values so the digest (over
/// the sorted-key JSON, as the Python side computed it) and the record text are written
/// from the same numbers.
struct Content {
    size_s: i64,
    start: i64,
    end: i64,
    energy: [Option<f64>; 2],
    power: Option<(f64, f64, f64, f64)>,
    phases: Vec<(&'static str, (f64, f64, f64, f64))>,
    samples: usize,
    resets: i64,
    first_reading: Option<i64>,
    last_reading: Option<i64>,
}

// -- the rules -------------------------------------------------------------------------------

#[pymethods]
impl Windows {
    #[new]
    #[pyo3(signature = (sizes, grace, allowed_lateness, chunk, emit_interim))]
    fn new(sizes: Vec<i64>, grace: i64, allowed_lateness: i64, chunk: i64, emit_interim: bool)
        -> PyResult<Self> {
        if sizes.is_empty() || sizes.iter().any(|s| *s <= 0) || chunk <= 0 {
            return Err(PyValueError::new_err("window sizes and the chunk must be positive seconds"));
        }
        let sizes_us: Vec<i64> = sizes.iter().map(|s| s * US).collect();
        let mut settle_sizes = sizes_us.clone();
        settle_sizes.sort_unstable();
        settle_sizes.dedup();
        Ok(Windows { boundaries: Mutex::default(), sizes_us, settle_sizes, grace_us: grace * US,
                     lateness_us: allowed_lateness * US, allowed_lateness, chunk_us: chunk * US,
                     emit_interim })
    }

    /// Apply readings (a `DeviceReadings`, or (ts, import, export, power, l1, l2, l3)
    /// tuples) that arrived at `arrival_us` to a device.
    fn apply(&self, py: Python<'_>, device: &mut Device, samples: &Bound<'_, PyAny>,
             arrival_us: i64) -> PyResult<Outcome> {
        let samples = extract_samples(samples)?;
        if let Some(bad) = samples.iter().find(|s| !(MIN_US..=MAX_US).contains(&s.ts)) {
            return Err(PyValueError::new_err(format!(
                "reading time {} µs is outside the years 1..9999", bad.ts)));
        }
        with_state(py, device, |state| self.apply_samples(state, &samples, arrival_us))
    }

    /// Whether the quiet-device rule would finalize something for this head now.
    fn due(&self, head: &Bound<'_, PyDict>, now_us: i64) -> PyResult<bool> {
        Ok(self.is_due(&Head::read(head)?, now_us))
    }

    /// Finalize windows of a device that went quiet (the wall-clock rule).
    fn sweep(&self, py: Python<'_>, device: &mut Device, now_us: i64) -> PyResult<Outcome> {
        with_state(py, device, |state| {
            let mut outcome = Outcome::default();
            if self.is_due(&state.head, now_us) {
                self.finalize_due(state, now_us, &mut outcome)?;
            }
            Ok(outcome)
        })
    }

    /// The device's pending windows as interim (revision 0, not final) records.
    fn open_windows(&self, py: Python<'_>, device: &mut Device) -> PyResult<Vec<Py<Window>>> {
        with_state(py, device, |state| {
            let mut windows = Vec::new();
            for (label, starts) in state.head.pending.clone() {
                let size_us = label_size(&label)? * US;
                for start in starts {
                    windows.push(Py::new(state.py, self.record(state, size_us, start, 0, false)?)?);
                }
            }
            Ok(windows)
        })
    }

    /// A window's content from (ts, import, export, power, l1, l2, l3) samples, sorted, and
    /// the import and export neighbours before and after it: the record's JSON text (no
    /// revision) and its digest. For tests of the window math against the Python model.
    #[pyo3(signature = (device_id, size_s, start, samples, before, after))]
    fn window_content<'py>(&self, py: Python<'py>, device_id: &str, size_s: i64, start: i64,
                           samples: &Bound<'py, PyAny>,
                           before: (Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>),
                           after: (Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>))
        -> PyResult<(Bound<'py, PyBytes>, String)> {
        let samples = extract_samples(samples)?;
        let one = |s: &Option<Bound<'py, PyAny>>| s.as_ref().map(sample_from_py).transpose();
        let before = [one(&before.0)?, one(&before.1)?];
        let after = [one(&after.0)?, one(&after.1)?];
        for register in [IMP, EXP] {
            if [before[register], after[register]].iter().flatten().any(|s| s.v[register].is_none()) {
                return Err(PyValueError::new_err("a neighbour must carry its register"));
            }
        }
        let content = window_content(size_s, start, &samples, before, after);
        let pieces = content.pieces(&|ts| Text::stamp(Some(ts)));
        let mut json = Vec::with_capacity(512);
        pieces.write(&mut json, device_id, None);
        Ok((PyBytes::new(py, &json), pieces.digest(device_id)))
    }
}

impl Windows {
    fn apply_samples(&self, state: &mut State, samples: &[Sample], arrival_us: i64)
        -> PyResult<Outcome> {
        let mut outcome = Outcome::default();
        for (position, sample) in samples.iter().enumerate() {
            let ts = sample.ts;
            let mut event_time = state.head.event_time;
            if let Some(et) = event_time {
                if ts < et - self.lateness_us {
                    outcome.late.push((position, format!(
                        "older than the device's event time {} minus the allowed lateness ({} s)",
                        format_timestamp(et), self.allowed_lateness)));
                    continue;
                }
            }
            if !self.insert(state, sample, &mut outcome)? {
                continue;
            }
            if event_time.is_none_or(|et| ts > et) {
                state.head.event_time = Some(ts);
                event_time = Some(ts);
            }
            if state.head.latest.is_none_or(|latest| ts >= latest.ts) {
                state.head.latest = Some(*sample);
            }
            // Settled after every reading, not once per batch: what is emitted then depends
            // only on the device's readings in arrival order, never on how a consumer
            // batched them, so a replay after a crash re-emits exactly what it emitted.
            let touched = self.touched_windows(state, sample)?;
            self.settle(state, &touched, event_time, &mut outcome)?;
        }
        state.head.arrival = Some(arrival_us);
        state.device.head_dirty = true;
        self.prune(state)?;
        Ok(outcome)
    }

    fn label(size_us: i64) -> String {
        (size_us / US).to_string()
    }

    fn insert(&self, state: &mut State, sample: &Sample, outcome: &mut Outcome) -> PyResult<bool> {
        let ts = sample.ts;
        let chunk_start = ts - ts.rem_euclid(self.chunk_us);
        state.chunk(chunk_start, true)?;
        let samples = &mut state.device.chunks.get_mut(&chunk_start).expect("created").samples;
        let position = lower_bound(samples, ts);
        if position < samples.len() && samples[position].ts == ts {
            outcome.duplicates += 1;
            if samples[position] != *sample {
                outcome.conflicting_duplicates += 1;
            }
            return Ok(false);
        }
        samples.insert(position, *sample);
        state.touch(chunk_start);
        Ok(true)
    }

    /// Windows whose content can change when `sample` joins the timeline, in (size,
    /// start) order.
    fn touched_windows(&self, state: &mut State, sample: &Sample) -> PyResult<Vec<(i64, i64)>> {
        let ts = sample.ts;
        let (mut lo, mut hi) = (ts, ts);
        let (imp, exp) = (sample.v[IMP].is_some(), sample.v[EXP].is_some());
        if imp || exp {
            for previous in state.registers_before(ts, imp, exp)?.into_iter().flatten() {
                lo = lo.min(previous.ts);
            }
            for following in state.registers_after(ts + 1, imp, exp)?.into_iter().flatten() {
                hi = hi.max(following.ts);
            }
        }
        let mut windows = Vec::new();
        for &size_us in &self.settle_sizes {
            let mut start = lo - lo.rem_euclid(size_us);
            while start <= hi {
                windows.push((size_us, start));
                let Some(next) = start.checked_add(size_us) else { break };
                start = next;
            }
        }
        Ok(windows)
    }

    /// Revise changed final windows, finalize what is due, keep the rest pending.
    fn settle(&self, state: &mut State, windows: &[(i64, i64)], event_time: Option<i64>,
              outcome: &mut Outcome) -> PyResult<()> {
        for &(size_us, start) in windows {
            if self.has_meta(state, size_us, start)? {
                self.emit(state, size_us, start, outcome)?;
            } else if event_time.is_some_and(|et| start + size_us + self.grace_us <= et) {
                self.emit(state, size_us, start, outcome)?;
            } else {
                let label = Self::label(size_us);
                match state.head.pending.iter_mut().find(|(l, _)| *l == label) {
                    None => state.head.pending.push((label, vec![start])),
                    Some((_, starts)) => {
                        if !starts.contains(&start) {
                            insort(starts, start);
                        }
                    }
                }
                if self.emit_interim {
                    let window = self.record(state, size_us, start, 0, false)?;
                    outcome.add(state.py, window)?;
                }
            }
        }
        if let Some(et) = event_time {
            self.finalize_due(state, et, outcome)?;
        }
        Ok(())
    }

    fn finalize_due(&self, state: &mut State, watermark: i64, outcome: &mut Outcome)
        -> PyResult<()> {
        let mut position = 0;
        while position < state.head.pending.len() {
            let size_us = label_size(&state.head.pending[position].0)? * US;
            loop {
                let starts = &state.head.pending[position].1;
                match starts.first() {
                    Some(&start) if start + size_us + self.grace_us <= watermark => {
                        state.head.pending[position].1.remove(0);
                        self.emit(state, size_us, start, outcome)?;
                    }
                    _ => break,
                }
            }
            if state.head.pending[position].1.is_empty() {
                state.head.pending.remove(position);
            } else {
                position += 1;
            }
        }
        state.device.head_dirty = true;
        Ok(())
    }

    fn is_due(&self, head: &Head, now_us: i64) -> bool {
        let Some(arrival) = head.arrival else { return false };
        if head.pending.is_empty() || now_us - arrival < self.grace_us {
            return false;
        }
        head.pending.iter().any(|(label, starts)| match (starts.first(), label_size(label)) {
            (Some(start), Ok(size_s)) => start + size_s * US + self.grace_us <= now_us,
            _ => false,
        })
    }

    fn has_meta(&self, state: &mut State, size_us: i64, start: i64) -> PyResult<bool> {
        let chunk_start = start - start.rem_euclid(self.chunk_us);
        if !state.chunk(chunk_start, false)? {
            return Ok(false);
        }
        Ok(state.device.chunks[&chunk_start].meta(size_us / US, start).is_some())
    }

    fn emit(&self, state: &mut State, size_us: i64, start: i64, outcome: &mut Outcome)
        -> PyResult<()> {
        let pieces = self.content(state, size_us, start)?;
        let fingerprint = pieces.fingerprint();
        let chunk_start = start - start.rem_euclid(self.chunk_us);
        state.chunk(chunk_start, true)?;
        let chunk = state.device.chunks.get_mut(&chunk_start).expect("created");
        let size_s = size_us / US;
        let revision = match chunk.windows.iter_mut().find(|m| m.size_s == size_s && m.start == start) {
            Some(meta) if pieces.matches(&meta.digest, &fingerprint, &state.device.id) => {
                return Ok(()); // nothing changed here
            }
            Some(meta) => {
                meta.revision += 1;
                meta.digest = fingerprint;
                meta.revision
            }
            None => {
                chunk.windows.push(Meta { size_s, start, revision: 0, digest: fingerprint });
                0
            }
        };
        state.touch(chunk_start);
        if revision > 0 {
            outcome.revisions += 1;
        } else {
            outcome.finals += 1;
        }
        let window = publish(state.py, state.device, &pieces, size_us, start, revision, true);
        outcome.add(state.py, window)
    }

    fn record(&self, state: &mut State, size_us: i64, start: i64, revision: i64, is_final: bool)
        -> PyResult<Window> {
        let pieces = self.content(state, size_us, start)?;
        Ok(publish(state.py, state.device, &pieces, size_us, start, revision, is_final))
    }

    fn content(&self, state: &mut State, size_us: i64, start: i64) -> PyResult<Pieces> {
        let end = start + size_us;
        let before = state.registers_before(start, true, true)?;
        let after = state.registers_after(end, true, true)?;
        let content = match state.samples_within_chunk(start, end, self.chunk_us)? {
            Some(samples) => window_content(size_us / US, start, samples, before, after),
            None => window_content(size_us / US, start, &state.samples_between(start, end)?,
                                   before, after),
        };
        Ok(content.pieces(&|ts| self.boundary(ts)))
    }

    fn boundary(&self, ts: i64) -> Text {
        let mut cache = self.boundaries.lock().expect("never poisoned: no panics inside");
        if let Some(text) = cache.get(&ts) {
            return *text;
        }
        if cache.len() >= 16_384 {
            cache.clear();
        }
        *cache.entry(ts).or_insert_with(|| Text::stamp(Some(ts)))
    }

    /// Drop chunks no accepted reading can reach again.
    fn prune(&self, state: &mut State) -> PyResult<()> {
        let Some(event_time) = state.head.event_time else { return Ok(()) };
        let Some(&oldest_chunk) = state.head.chunks.first() else { return Ok(()) };
        let cutoff = event_time - self.lateness_us;
        let widest = *self.sizes_us.iter().max().expect("sizes are not empty");
        if oldest_chunk + self.chunk_us > cutoff - widest {
            return Ok(()); // nothing old enough yet; skip the search
        }
        let mut oldest_needed = cutoff;
        for index in [None, Some(IMP), Some(EXP)] {
            // An anchor is kept on its own; only samples still in chunks hold chunks back.
            if let Some(previous) = state.before(cutoff, index)? {
                oldest_needed = oldest_needed.min(previous.ts);
            }
        }
        let keep_from = self.sizes_us.iter().map(|size| oldest_needed - oldest_needed.rem_euclid(*size))
            .min().expect("sizes are not empty");
        for start in state.head.chunks.clone() {
            if start + self.chunk_us > keep_from {
                break;
            }
            let mut anchors = state.head.anchors;
            let samples = state.samples(start)?;
            for (slot, index) in [IMP, EXP].into_iter().enumerate() {
                if let Some(sample) = samples.iter().rev().find(|s| s.v[index].is_some()) {
                    anchors[slot] = Some((sample.ts, sample.v[index].expect("found")));
                }
            }
            state.head.anchors = anchors;
            state.delete_chunk(start);
        }
        Ok(())
    }
}

/// Runs `operation` on the device's state and writes the head back, also when the
/// operation failed part way: the head then still lists what the chunk cache holds.
fn with_state<T>(py: Python<'_>, device: &mut Device,
                 operation: impl FnOnce(&mut State) -> PyResult<T>) -> PyResult<T> {
    let mut state = State::open(py, device)?;
    let result = operation(&mut state);
    let closed = state.close();
    let value = result?;
    closed?;
    Ok(value)
}

fn label_size(label: &str) -> PyResult<i64> {
    label.parse().map_err(|_| PyValueError::new_err(format!("pending window size {label:?}")))
}

/// The window record: its JSON text (with the device's annotation) and key.
#[allow(clippy::too_many_arguments)]
fn publish(py: Python<'_>, device: &Device, pieces: &Pieces, size_us: i64, start: i64,
           revision: i64, is_final: bool) -> Window {
    let device_id = device.id.as_str();
    let mut json = Vec::with_capacity(512 + device.annotation.len());
    pieces.write(&mut json, device_id, Some((revision, is_final)));
    if !device.annotation.is_empty() {
        json.pop(); // the closing brace: the annotation's members follow the record's
        json.push(b',');
        json.extend_from_slice(&device.annotation);
        json.push(b'}');
    }
    let mut key = Vec::with_capacity(device_id.len() + 32);
    key.extend_from_slice(device_id.as_bytes());
    key.push(b'|');
    key.extend_from_slice(pieces.size.bytes());
    key.push(b'|');
    let stamp = pieces.start.bytes();
    key.extend_from_slice(&stamp[1..stamp.len() - 1]); // unquoted
    Window {
        device_id: device_id.to_owned(),
        size: size_us / US,
        start_us: start,
        revision,
        is_final,
        energy_import_wh: pieces.energy_values[IMP],
        energy_export_wh: pieces.energy_values[EXP],
        json: PyBytes::new(py, &json).unbind(),
        key: PyBytes::new(py, &key).unbind(),
    }
}

// -- pure window computation -----------------------------------------------------------------

/// A window's aggregate from its samples (sorted) and, for the import and the export
/// register, the last sample carrying it before the window and the first one at/after its
/// end.
fn window_content(size_s: i64, start: i64, samples: &[Sample], before: [Option<Sample>; 2],
                  after: [Option<Sample>; 2]) -> Content {
    let end = start + size_s * US;
    let (import, import_resets) = energy(IMP, start, end, samples, before[IMP], after[IMP]);
    let (export, export_resets) = energy(EXP, start, end, samples, before[EXP], after[EXP]);
    let phases = PHASES.iter()
        .filter_map(|&(name, index)| power(index, end, samples).map(|stats| (name, stats)))
        .collect();
    Content {
        size_s,
        start,
        end,
        energy: [import, export],
        power: power(POW, end, samples),
        phases,
        samples: samples.len(),
        resets: import_resets + export_resets,
        first_reading: samples.first().map(|s| s.ts),
        last_reading: samples.last().map(|s| s.ts),
    }
}

fn energy(index: usize, start: i64, end: i64, samples: &[Sample], before: Option<Sample>,
          after: Option<Sample>) -> (Option<f64>, i64) {
    let mut energy: Option<f64> = None;
    let mut resets = 0;
    let mut previous = before;
    for sample in samples.iter().chain(after.iter()) {
        let Some(value) = sample.v[index] else { continue };
        if let Some(prev) = previous {
            let prev_value = prev.v[index].expect("previous carries the register");
            let (b_ts, a_ts) = (sample.ts, prev.ts);
            let overlap = b_ts.min(end) - a_ts.max(start);
            let mut increase = value - prev_value;
            if increase < 0.0 {
                if start <= b_ts && b_ts < end {
                    resets += 1;
                }
                increase = 0.0;
            }
            if overlap > 0 {
                // Operand order as in the Python model, for the same rounding.
                energy = Some(energy.unwrap_or(0.0) + increase * overlap as f64 / (b_ts - a_ts) as f64);
            }
        }
        previous = Some(*sample);
    }
    (energy, resets)
}

/// Time-weighted mean, min, max and last of a value (None: no sample carries it).
fn power(index: usize, end: i64, samples: &[Sample]) -> Option<(f64, f64, f64, f64)> {
    let mut weighted = 0.0;
    let (mut first_ts, mut last_ts) = (0, 0);
    let (mut low, mut high) = (0.0, 0.0);
    let mut last: Option<f64> = None;
    for sample in samples {
        let Some(value) = sample.v[index] else { continue };
        match last {
            None => {
                first_ts = sample.ts;
                low = value;
                high = value;
            }
            Some(previous) => {
                weighted += previous * (sample.ts - last_ts) as f64;
                if value < low {
                    low = value;
                } else if value > high {
                    high = value;
                }
            }
        }
        last = Some(value);
        last_ts = sample.ts;
    }
    let last = last?;
    weighted += last * (end - last_ts) as f64;
    Some((weighted / (end - first_ts) as f64, low, high, last))
}

/// A JSON scalar's text (a number, null, or a quoted timestamp), written once and copied
/// into both the record and the digest's text.
#[derive(Clone, Copy)]
struct Text {
    buf: [u8; 40],
    len: u8,
}

impl Text {
    fn new(bytes: &[u8]) -> Text {
        let mut text = Text { buf: [0; 40], len: bytes.len() as u8 };
        text.buf[..bytes.len()].copy_from_slice(bytes);
        text
    }

    /// As `push_opt_f64` writes it (formatted on the stack: a window has a dozen numbers).
    fn number(value: Option<f64>) -> Text {
        match value {
            Some(v) if v.is_finite() => Text::new(zmij::Buffer::new().format_finite(v).as_bytes()),
            _ => Text::new(b"null"),
        }
    }

    fn integer(value: i64) -> Text {
        Text::new(itoa::Buffer::new().format(value).as_bytes())
    }

    fn stamp(ts: Option<i64>) -> Text {
        let mut out = Vec::with_capacity(32);
        match ts {
            Some(ts) => push_timestamp_json(&mut out, ts),
            None => out.extend_from_slice(b"null"),
        }
        Text::new(&out)
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// A window's content as JSON pieces.
struct Pieces {
    energy_values: [Option<f64>; 2],
    start: Text,
    end: Text,
    energy: [Text; 2],
    power: [Text; 4], // mean, min, max, last
    phases: Vec<(&'static str, [Text; 4])>,
    samples: Text,
    resets: Text,
    size: Text,
    first: Text,
    last: Text,
}

impl Pieces {
    /// `,"key":value` for each member, in the given order.
    fn members(buf: &mut Vec<u8>, members: &[(&str, &Text)]) {
        for (key, value) in members {
            buf.extend_from_slice(b",\"");
            buf.extend_from_slice(key.as_bytes());
            buf.extend_from_slice(b"\":");
            buf.extend_from_slice(value.bytes());
        }
    }

    /// The record's JSON text in the published key order (`revision`/`final` when given).
    fn write(&self, buf: &mut Vec<u8>, device_id: &str, published: Option<(i64, bool)>) {
        buf.push(b'{');
        push_key(buf, "device_id");
        push_str(buf, device_id);
        let [mean, low, high, last] = &self.power;
        Self::members(buf, &[("size", &self.size), ("window_start", &self.start),
                             ("window_end", &self.end), ("energy_import_wh", &self.energy[IMP]),
                             ("energy_export_wh", &self.energy[EXP]), ("power_mean_w", mean),
                             ("power_min_w", low), ("power_max_w", high), ("power_last_w", last)]);
        if !self.phases.is_empty() {
            buf.push(b',');
            push_key(buf, "phases");
            self.write_phases(buf, false);
        }
        Self::members(buf, &[("samples", &self.samples), ("resets", &self.resets),
                             ("first_reading", &self.first), ("last_reading", &self.last)]);
        if let Some((revision, is_final)) = published {
            buf.push(b',');
            push_key(buf, "revision");
            push_i64(buf, revision);
            buf.push(b',');
            push_key(buf, "final");
            buf.extend_from_slice(if is_final { b"true" } else { b"false" });
        }
        buf.push(b'}');
    }

    /// `{"l1": {...}, ...}`; the stats in published order or, for the digest, sorted.
    fn write_phases(&self, buf: &mut Vec<u8>, sorted: bool) {
        buf.push(b'{');
        for (n, (name, [mean, low, high, last])) in self.phases.iter().enumerate() {
            if n > 0 {
                buf.push(b',');
            }
            push_key(buf, name);
            let stats = if sorted {
                [("last_w", last), ("max_w", high), ("mean_w", mean), ("min_w", low)]
            } else {
                [("mean_w", mean), ("min_w", low), ("max_w", high), ("last_w", last)]
            };
            let start = buf.len();
            Self::members(buf, &stats);
            buf[start] = b'{'; // the first member's comma
            buf.push(b'}');
        }
        buf.push(b'}');
    }

    /// What a final window's metadata keeps of its published content, to tell a changed
    /// window (a revision) from an unchanged one: `x` and the hex xxh3-64 of the content's
    /// pieces. A fraction of the cost of `digest`, which earlier versions stored.
    fn fingerprint(&self) -> String {
        let mut buf = Vec::with_capacity(320);
        let mut add = |text: &Text| {
            buf.extend_from_slice(text.bytes());
            buf.push(0xff); // never in JSON text: pieces cannot run into each other
        };
        for text in [&self.size, &self.start, &self.end, &self.energy[IMP], &self.energy[EXP]]
            .into_iter().chain(&self.power) {
            add(text);
        }
        for (name, stats) in &self.phases {
            add(&Text::new(name.as_bytes()));
            for text in stats {
                add(text);
            }
        }
        for text in [&self.samples, &self.resets, &self.first, &self.last] {
            add(text);
        }
        let mut hex = String::with_capacity(17);
        hex.push('x');
        push_hex(&mut hex, &xxh3_64(&buf).to_be_bytes());
        hex
    }

    /// Whether a stored digest is this content's: a fingerprint, or a digest as earlier
    /// versions stored it (in state written before the fingerprint).
    fn matches(&self, stored: &str, fingerprint: &str, device_id: &str) -> bool {
        if stored.starts_with('x') {
            stored == fingerprint
        } else {
            stored == self.digest(device_id)
        }
    }

    /// blake2b-64 (hex) of the content's JSON with sorted keys, as the Python side computed
    /// it (`orjson.dumps(content, option=OPT_SORT_KEYS)`): what earlier versions stored.
    fn digest(&self, device_id: &str) -> String {
        let mut buf = Vec::with_capacity(512);
        buf.push(b'{');
        push_key(&mut buf, "device_id");
        push_str(&mut buf, device_id);
        Self::members(&mut buf, &[("energy_export_wh", &self.energy[EXP]),
                                  ("energy_import_wh", &self.energy[IMP]),
                                  ("first_reading", &self.first), ("last_reading", &self.last)]);
        if !self.phases.is_empty() {
            buf.push(b',');
            push_key(&mut buf, "phases");
            self.write_phases(&mut buf, true);
        }
        let [mean, low, high, last] = &self.power;
        Self::members(&mut buf, &[("power_last_w", last), ("power_max_w", high),
                                  ("power_mean_w", mean), ("power_min_w", low),
                                  ("resets", &self.resets), ("samples", &self.samples),
                                  ("size", &self.size), ("window_end", &self.end),
                                  ("window_start", &self.start)]);
        buf.push(b'}');
        let mut hex = String::with_capacity(16);
        push_hex(&mut hex, &Blake2b::<U8>::digest(&buf));
        hex
    }
}

impl Content {
    /// The content's JSON pieces; window boundaries come from `boundary` (shared by every
    /// device's windows, so formatted once).
    fn pieces(&self, boundary: &dyn Fn(i64) -> Text) -> Pieces {
        let stats = |s: Option<(f64, f64, f64, f64)>| match s {
            Some((mean, low, high, last)) => [mean, low, high, last].map(|v| Text::number(Some(v))),
            None => [Text::number(None); 4],
        };
        Pieces {
            energy_values: self.energy,
            start: boundary(self.start),
            end: boundary(self.end),
            energy: self.energy.map(Text::number),
            power: stats(self.power),
            phases: self.phases.iter().map(|&(name, s)| (name, stats(Some(s)))).collect(),
            samples: Text::integer(self.samples as i64),
            resets: Text::integer(self.resets),
            size: Text::integer(self.size_s),
            first: Text::stamp(self.first_reading),
            last: Text::stamp(self.last_reading),
        }
    }
}

// -- sorted-vector helpers ---------------------------------------------------------------------

fn lower_bound(samples: &[Sample], ts: i64) -> usize {
    samples.partition_point(|s| s.ts < ts)
}

fn bisect_left(values: &[i64], x: i64) -> usize {
    values.partition_point(|v| *v < x)
}

fn bisect_right(values: &[i64], x: i64) -> usize {
    values.partition_point(|v| *v <= x)
}

fn insort(values: &mut Vec<i64>, x: i64) {
    let position = bisect_right(values, x);
    values.insert(position, x);
}

// -- samples from Python -------------------------------------------------------------------------

fn extract_samples(samples: &Bound<'_, PyAny>) -> PyResult<Vec<Sample>> {
    if let Ok(readings) = samples.cast::<DeviceReadings>() {
        return Ok(readings.borrow().samples().to_vec());
    }
    samples.try_iter()?.map(|item| sample_from_py(&item?)).collect()
}

/// A sample from any sequence (ts, import, export, power, l1, l2, l3): a tuple from the
/// caller, a list from a stored head.
fn sample_from_py(item: &Bound<'_, PyAny>) -> PyResult<Sample> {
    if item.len()? != 7 {
        return Err(PyValueError::new_err("a sample has 7 fields: ts, import, export, power, l1, l2, l3"));
    }
    let mut v = [None; 6];
    for (i, slot) in v.iter_mut().enumerate() {
        *slot = item.get_item(i + 1)?.extract()?;
    }
    Ok(Sample { ts: item.get_item(0)?.extract()?, v })
}

// -- the head's window keys ------------------------------------------------------------------------

impl Head {
    fn read(dict: &Bound<'_, PyDict>) -> PyResult<Head> {
        let py = dict.py();
        let mut head = Head {
            event_time: optional(dict, intern!(py, "event_time"))?,
            arrival: optional(dict, intern!(py, "arrival"))?,
            ..Head::default()
        };
        if let Some(chunks) = dict.get_item(intern!(py, "chunks"))? {
            head.chunks = chunks.extract()?;
        }
        if let Some(pending) = dict.get_item(intern!(py, "pending"))? {
            let pending = pending.cast::<PyDict>().map_err(
                |_| PyTypeError::new_err("head[\"pending\"] must be a dict"))?;
            for (label, starts) in pending.iter() {
                head.pending.push((label.extract()?, starts.extract()?));
            }
        }
        if let Some(anchors) = dict.get_item(intern!(py, "anchors"))? {
            if !anchors.is_none() {
                for (slot, name) in [intern!(py, "import"), intern!(py, "export")].into_iter().enumerate() {
                    if let Some(anchor) = anchors.get_item(name).ok().filter(|a| !a.is_none()) {
                        head.anchors[slot] = Some((anchor.get_item(0)?.extract()?,
                                                   anchor.get_item(1)?.extract()?));
                    }
                }
            }
        }
        if let Some(latest) = dict.get_item(intern!(py, "latest"))? {
            if !latest.is_none() {
                head.latest = Some(sample_from_py(&latest)?);
            }
        }
        Ok(head)
    }

    /// Writes the window keys into `dict`: all of them, or (given the head as read) only
    /// those that changed, since rebuilding unchanged lists was a visible cost per device.
    fn store(&self, py: Python<'_>, dict: &Bound<'_, PyDict>, read: Option<&Head>) -> PyResult<()> {
        let all = read.is_none();
        let nothing = Head::default();
        let read = read.unwrap_or(&nothing);
        if all || self.event_time != read.event_time {
            dict.set_item(intern!(py, "event_time"), self.event_time)?;
        }
        if all || self.arrival != read.arrival {
            dict.set_item(intern!(py, "arrival"), self.arrival)?;
        }
        if all || self.chunks != read.chunks {
            dict.set_item(intern!(py, "chunks"), PyList::new(py, &self.chunks)?)?;
        }
        if all || self.pending != read.pending {
            let pending = PyDict::new(py);
            for (label, starts) in &self.pending {
                pending.set_item(PyString::new(py, label), PyList::new(py, starts)?)?;
            }
            dict.set_item(intern!(py, "pending"), pending)?;
        }
        if all || self.anchors != read.anchors {
            let anchors = PyDict::new(py);
            for (slot, name) in [intern!(py, "import"), intern!(py, "export")].into_iter().enumerate() {
                match self.anchors[slot] {
                    Some((ts, value)) => anchors.set_item(name, PyList::new(py, [
                        ts.into_pyobject(py)?.into_any(), value.into_pyobject(py)?.into_any()])?)?,
                    None => anchors.set_item(name, py.None())?,
                }
            }
            dict.set_item(intern!(py, "anchors"), anchors)?;
        }
        if all || self.latest != read.latest {
            match &self.latest {
                Some(sample) => dict.set_item(intern!(py, "latest"), sample_to_list(py, sample)?)?,
                None => dict.set_item(intern!(py, "latest"), py.None())?,
            }
        }
        Ok(())
    }
}

fn optional(dict: &Bound<'_, PyDict>, key: &Bound<'_, PyString>) -> PyResult<Option<i64>> {
    match dict.get_item(key)? {
        Some(value) if !value.is_none() => Ok(Some(value.extract()?)),
        _ => Ok(None),
    }
}

fn sample_to_list<'py>(py: Python<'py>, sample: &Sample) -> PyResult<Bound<'py, PyList>> {
    let mut items = vec![sample.ts.into_pyobject(py)?.into_any()];
    for value in sample.v {
        items.push(value.into_pyobject(py)?.into_any());
    }
    PyList::new(py, items)
}

// -- chunks as JSON ------------------------------------------------------------------------------

fn chunk_json(chunk: &Chunk) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + chunk.samples.len() * 64 + chunk.windows.len() * 48);
    buf.extend_from_slice(b"{\"samples\":[");
    for (n, sample) in chunk.samples.iter().enumerate() {
        if n > 0 {
            buf.push(b',');
        }
        buf.push(b'[');
        push_i64(&mut buf, sample.ts);
        for value in sample.v {
            buf.push(b',');
            push_opt_f64(&mut buf, value);
        }
        buf.push(b']');
    }
    buf.extend_from_slice(b"],\"windows\":{");
    for (n, meta) in chunk.windows.iter().enumerate() {
        if n > 0 {
            buf.push(b',');
        }
        buf.push(b'"');
        push_i64(&mut buf, meta.size_s);
        buf.push(b':');
        push_i64(&mut buf, meta.start);
        buf.extend_from_slice(b"\":[");
        push_i64(&mut buf, meta.revision);
        buf.push(b',');
        push_str(&mut buf, &meta.digest);
        buf.push(b']');
    }
    buf.extend_from_slice(b"}}");
    buf
}

fn parse_chunk(raw: &[u8]) -> Result<Chunk, serde_json::Error> {
    let stored: StoredChunk = serde_json::from_slice(raw)?;
    Ok(Chunk {
        samples: stored.samples.into_iter().map(|s| Sample { ts: s.0, v: [s.1, s.2, s.3, s.4, s.5, s.6] }).collect(),
        windows: stored.windows.0,
    })
}

type StoredSample = (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

#[derive(Deserialize)]
struct StoredChunk {
    samples: Vec<StoredSample>,
    windows: StoredMetas,
}

/// `{"size:start": [revision, digest], ...}` in the stored order.
struct StoredMetas(Vec<Meta>);

impl<'de> Deserialize<'de> for StoredMetas {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Metas;
        impl<'de> Visitor<'de> for Metas {
            type Value = StoredMetas;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of \"size:start\" to [revision, digest]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StoredMetas, A::Error> {
                let mut metas = Vec::new();
                while let Some((key, (revision, digest))) = map.next_entry::<String, (i64, String)>()? {
                    let (size, start) = key.split_once(':')
                        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                        .ok_or_else(|| de::Error::custom(format!("window key {key:?}")))?;
                    metas.push(Meta { size_s: size, start, revision, digest });
                }
                Ok(StoredMetas(metas))
            }
        }
        deserializer.deserialize_map(Metas)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Windows>()?;
    m.add_class::<Device>()?;
    m.add_class::<Window>()?;
    m.add_class::<Outcome>()?;
    Ok(())
}
