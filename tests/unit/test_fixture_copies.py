"""tests/shared mirrors the published ../shared vectors and fixtures.

On a machine with ../shared next to the clone (the team's layout, and CI's) every copied
file must be byte-identical to the published one; a clone on its own has only the copy.
"""

from __future__ import annotations

from tests.conftest import LOCAL_SHARED, SHARED, fixture_path


def test_local_copy_matches_published_files() -> None:
    copies = [p for p in LOCAL_SHARED.rglob("*") if p.is_file()]
    assert copies, "tests/shared is empty"
    for copy in copies:
        published = SHARED / copy.relative_to(LOCAL_SHARED)
        if SHARED.exists():
            assert published.exists(), f"{published} disappeared; update tests/shared"
            assert copy.read_bytes() == published.read_bytes(), f"{copy} differs from {published}"


def test_tests_read_the_published_vectors_when_present() -> None:
    expected = SHARED if SHARED.exists() else LOCAL_SHARED
    assert fixture_path("vectors/realtime.json") == expected / "vectors" / "realtime.json"
