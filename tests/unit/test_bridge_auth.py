from __future__ import annotations

import base64

from streams.bridge import ANONYMOUS, Authenticator
from streams.config import Credential


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = Authenticator((Credential("cloud", "smartme", "pw1"), Credential("lab", "tester", "pw2")),
                     allow_anonymous=False)


def test_each_pair_names_its_source() -> None:
    assert AUTH.source_for(_basic("smartme", "pw1")) == "cloud"
    assert AUTH.source_for(_basic("tester", "pw2")) == "lab"


def test_wrong_or_crossed_credentials_are_refused() -> None:
    assert AUTH.source_for(_basic("smartme", "pw2")) is None
    assert AUTH.source_for(_basic("smartme", "")) is None
    assert AUTH.source_for(_basic("nobody", "pw1")) is None
    assert AUTH.source_for(None) is None
    assert AUTH.source_for("Bearer abc") is None
    assert AUTH.source_for("Basic !!notbase64") is None
    assert AUTH.source_for("Basic " + base64.b64encode(b"no-colon").decode()) is None


def test_anonymous_only_when_allowed() -> None:
    open_auth = Authenticator((), allow_anonymous=True)
    assert open_auth.source_for(None) == ANONYMOUS
