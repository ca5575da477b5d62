"""The compiled module writes JSON numbers and timestamps exactly as the Python side does
(orjson, streams.codec.format_timestamp): records and window digests must not depend on
which side produced them."""

from __future__ import annotations

import math
import struct

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streams import _native
from streams.codec import format_timestamp

# The years Python's datetime can format: 0001-01-01 .. 9999-12-31.
_FIRST_US = -62_135_596_800_000_000
_LAST_US = 253_402_300_799_999_999


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_is_written_as_orjson_writes_it(value: float) -> None:
    assert _native.float_json(value) == orjson.dumps(value)


def test_random_bit_patterns_and_edge_values_are_written_as_orjson_writes_them() -> None:
    values = [0.0, -0.0, 1.0, 100.0, 0.1, 1e15, 1e16, 1e17, 1e21, 1e22, 1e-5, 1e-7,
              5e-324, 1.7976931348623157e308, 123456789012345680000.0, 2.5e-5]
    for bits in range(0, 2**64, 2**64 // 20_011):
        value = struct.unpack("<d", struct.pack("<Q", bits))[0]
        if math.isfinite(value):
            values.append(value)
    assert [_native.float_json(v) for v in values] == [orjson.dumps(v) for v in values]


def test_non_finite_floats_are_null_as_in_orjson() -> None:
    for value in (math.nan, math.inf, -math.inf):
        assert _native.float_json(value) == orjson.dumps(value) == b"null"


@given(st.integers(min_value=_FIRST_US, max_value=_LAST_US))
def test_a_timestamp_is_formatted_as_the_python_side_formats_it(timestamp_us: int) -> None:
    assert _native.format_timestamp(timestamp_us) == format_timestamp(timestamp_us)


def test_timestamp_edges() -> None:
    for timestamp_us in (0, -1, 1, _FIRST_US, _LAST_US, 951_782_400_000_000, 1_000_000):
        assert _native.format_timestamp(timestamp_us) == format_timestamp(timestamp_us)
