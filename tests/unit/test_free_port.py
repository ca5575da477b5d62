import socket

import pytest

from streams import embedded_kafka
from streams.embedded_kafka import HOST, _ephemeral_start, free_port


def test_ports_come_from_outside_the_range_outgoing_connections_use() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    assert all(port < _ephemeral_start() for port in ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind((HOST, port))  # still free: a server can take it


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder, socket.socket() as probe:
        holder.bind((HOST, 0))
        probe.bind((HOST, 0))
        taken, spare = holder.getsockname()[1], probe.getsockname()[1]
        probe.close()
        picks = iter([taken, spare])
        monkeypatch.setattr(embedded_kafka.random, "randrange", lambda *_: next(picks))
        assert free_port() == spare
