"""Type stubs of the compiled module built from native/ (Rust, PyO3)."""

__version__: str

def float_json(value: float) -> bytes: ...
def format_timestamp(timestamp_us: int) -> str: ...

# -- decoding (native/src/decode.rs) ---------------------------------------------------------

from collections.abc import Callable  # noqa: E402  (this section is the decoder's own)

class RecordDecoder:
    """Webhook bodies → ``(device_id, timestamp_us, record)`` for the plain case; see
    streams.codec.Decoder.records, its only user."""

    def __init__(
        self,
        obis_info: Callable[[bytes], tuple[str, str, str | None, float] | None],
        cache_limit: int,
    ) -> None: ...
    def records(
        self, body: bytes, extra: bytes, earliest_us: int, latest_us: int
    ) -> list[tuple[str, int, bytes]] | None: ...

# -- window aggregation (native/src/windows.rs) ----------------------------------------------
