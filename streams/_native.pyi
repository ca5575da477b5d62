"""Type stubs of the compiled module built from native/ (Rust, PyO3)."""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, final

__version__: str

def float_json(value: float) -> bytes: ...
def format_timestamp(timestamp_us: int) -> str: ...

# -- decoding (native/src/decode.rs) ---------------------------------------------------------

@final
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
    def records_by_partition(
        self, body: bytes, extra: bytes, earliest_us: int, latest_us: int,
        partition_of: Callable[[str], int],
    ) -> tuple[list[tuple[str, int, bytes]], list[tuple[int, bytes]]] | None: ...

# -- Kafka record batches (native/src/kafka.rs) -----------------------------------------------

@final
class RecordBatch:
    def __init__(self, batch_size: int) -> None: ...
    def append(self, records: list[Any], start: int) -> int: ...
    def close(self) -> None: ...
    def closed(self) -> bool: ...
    def record_count(self) -> int: ...
    def size(self) -> int: ...
    def _set_producer_state(self, producer_id: int, producer_epoch: int,
                            base_sequence: int) -> None: ...
    def _build(self) -> bytes: ...

# -- window aggregation (native/src/readings.rs, native/src/windows.rs) ----------------------

@final
class ReadingParser:
    def __init__(self, codes: dict[str, int], decoder: RecordDecoder | None = None) -> None: ...
    def group(self, values: list[bytes]
              ) -> tuple[list[DeviceReadings], list[tuple[int, bytes, str]]]: ...

@final
class DeviceReadings:
    device_id: str
    last_value: int
    received: list[tuple[str, int]]
    def __len__(self) -> int: ...
    def record(self, i: int) -> bytes: ...
    def value_index(self, i: int) -> int: ...

@final
class Window:
    device_id: str
    size: int
    start_us: int
    revision: int
    final: bool
    energy_import_wh: float | None
    energy_export_wh: float | None
    json: bytes
    key: bytes

_Record = tuple[bytes, bytes, int | None, list[tuple[str, bytes]]]

@final
class Outcome:
    emitted: list[Window]  # made on each access: the records hold the same
    records: list[_Record]
    counts: list[tuple[int, str, int]]
    newest: list[tuple[int, int, float | None, float | None]]
    late: list[tuple[int, str]]
    duplicates: int
    conflicting_duplicates: int
    revisions: int
    finals: int
    def finals_of(self, size: int) -> list[tuple[int, float | None, float | None]]: ...

@final
class Device:
    id: str
    head: dict[str, Any]
    def __init__(self, device_id: str, head: dict[str, Any] | None,
                 load: Callable[[str], bytes | None], annotation: bytes | None = None
                 ) -> None: ...
    def mark_head(self) -> None: ...
    def take_writes(self) -> tuple[list[tuple[str, bytes]], list[str], bool]: ...

_Sample = tuple[int, float | None, float | None, float | None, float | None, float | None,
                float | None]

@final
class Windows:
    def __init__(self, sizes: list[int], grace: int, allowed_lateness: int, chunk: int,
                 emit_interim: bool) -> None: ...
    def apply(self, device: Device, samples: DeviceReadings | Sequence[_Sample],
              arrival_us: int) -> Outcome: ...
    def due(self, head: dict[str, Any], now_us: int) -> bool: ...
    def sweep(self, device: Device, now_us: int) -> Outcome: ...
    def open_windows(self, device: Device) -> list[Window]: ...
    def window_content(self, device_id: str, size_s: int, start: int,
                       samples: Iterable[_Sample],
                       before: tuple[_Sample | None, _Sample | None],
                       after: tuple[_Sample | None, _Sample | None]) -> tuple[bytes, str]: ...
