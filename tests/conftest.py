"""Fixtures shared by every test layer.

Vendor test data lives in ../shared (next to the project root) where it was published;
tests/shared holds a copy so a clone on its own still runs. When both exist,
tests/unit/test_fixture_copies.py fails on any drift between them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
LOCAL_SHARED = Path(__file__).resolve().parent / "shared"

SEED_HEX = (
    "0A5A0A1209E9FCD03B8E9F834111B3D10C1622A22CA1120B08C0C9EAD3A98FE93710051A110A060100010800FF"
    "11333333331FAE3C411A110A060100020800FF1100000000000000001A110A060100010700FF11713D0AD7A3303840"
)


def fixture_path(relative: str) -> Path:
    """The published copy in ../shared when present, else the copy in tests/shared."""
    shared = SHARED / relative
    return shared if shared.exists() else LOCAL_SHARED / relative


def load_json(relative: str) -> Any:
    return json.loads(fixture_path(relative).read_text())


def vector_cases() -> list[dict[str, Any]]:
    return list(load_json("vectors/realtime.json")["cases"])


@pytest.fixture(scope="session")
def seed_body() -> bytes:
    """smart-me's documented parsing example, as the webhook would POST it."""
    case = next(c for c in vector_cases() if c["name"] == "seed-example")
    assert case["hex"] == SEED_HEX
    return bytes.fromhex(case["hex"])
