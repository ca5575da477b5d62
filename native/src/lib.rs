//! `streams._native`: the per-reading work of a worker, compiled. The Python side keeps
//! everything that happens per batch or per device (Kafka, Faust, metrics, alerts).
use pyo3::prelude::*;
use pyo3::types::PyBytes;

mod decode;
mod json;
mod kafka;
mod readings;
mod windows;

/// The JSON text orjson would write for a float (tests compare the two).
#[pyfunction]
fn float_json<'py>(py: Python<'py>, value: f64) -> Bound<'py, PyBytes> {
    let mut buf = Vec::with_capacity(24);
    json::push_f64(&mut buf, value);
    PyBytes::new(py, &buf)
}

/// `streams.codec.format_timestamp`, as the native side writes it (tests compare them).
#[pyfunction]
fn format_timestamp(timestamp_us: i64) -> String {
    json::format_timestamp(timestamp_us)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(float_json, m)?)?;
    m.add_function(wrap_pyfunction!(format_timestamp, m)?)?;
    decode::register(m)?;
    kafka::register(m)?;
    readings::register(m)?;
    windows::register(m)?;
    Ok(())
}
