"""Type stubs of the compiled module built from native/ (Rust, PyO3)."""

__version__: str

def float_json(value: float) -> bytes: ...
def format_timestamp(timestamp_us: int) -> str: ...

# -- decoding (native/src/decode.rs) ---------------------------------------------------------

# -- window aggregation (native/src/windows.rs) ----------------------------------------------
