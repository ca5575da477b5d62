"""``meterstream`` command line: run, bridge, worker, kafka, decode."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from streams.config import ConfigError, Settings

log = logging.getLogger("meterstream")

EXIT_DECODE_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command cannot run as asked (bad input file, missing setting); exit status 2."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _require_bootstrap(settings: Settings) -> None:
    if not settings.kafka_bootstrap:
        raise UsageError(
            "METERSTREAM_KAFKA_BOOTSTRAP is not set (`meterstream run` starts an embedded Kafka "
            "and sets it; `meterstream kafka` starts only the broker)"
        )


# -- decode ----------------------------------------------------------------------------------
def _read_body(path: str, as_hex: bool) -> bytes:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not as_hex:
        return data
    text = b"".join(data.split()).decode("ascii", errors="replace")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{path}: --hex input is not hexadecimal text") from None


def cmd_decode(settings: Settings, args: argparse.Namespace) -> int:
    from streams.codec import DecodeError, Decoder

    body = _read_body(args.file, args.hex)
    try:
        readings = Decoder(settings.obis_scales, settings.local_timezone).decode(body)
    except DecodeError as exc:
        print(f"meterstream decode: malformed body: {exc.reason}", file=sys.stderr)
        return EXIT_DECODE_ERROR
    out = sys.stdout.buffer
    for reading in readings:
        out.write(orjson.dumps(reading.to_dict()) + b"\n")
    out.flush()
    return 0


# -- processes -------------------------------------------------------------------------------
def cmd_bridge(settings: Settings, _args: argparse.Namespace) -> int:
    from streams import bridge

    _require_bootstrap(settings)
    _setup_logging(settings.log_level)
    try:
        asyncio.run(bridge.serve(settings))
    except ValueError as exc:  # configuration the bridge refuses to run with
        raise UsageError(str(exc)) from None
    return 0


def cmd_worker(settings: Settings, _args: argparse.Namespace) -> int:
    from streams import worker

    _require_bootstrap(settings)
    return worker.run(settings)


def cmd_kafka(settings: Settings, _args: argparse.Namespace) -> int:
    from streams import supervisor

    _setup_logging(settings.log_level)
    return supervisor.run_kafka_only(settings)


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from streams import supervisor

    _setup_logging(settings.log_level)
    return supervisor.run_pipeline(settings)


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    from streams import tail

    # Without a configured bootstrap, read from the embedded broker `meterstream run` starts.
    bootstrap = settings.kafka_bootstrap or f"127.0.0.1:{settings.kafka_port}"
    topic = settings.all_topics.get(f"topic_{args.topic}", args.topic)
    return asyncio.run(tail.tail(bootstrap, topic, count=args.count,
                                 follow=args.follow, idle_seconds=args.timeout))


def cmd_settings(_settings: Settings, _args: argparse.Namespace) -> int:
    from streams.config import documented_settings

    print("| Variable | Default | Meaning |")
    print("|---|---|---|")
    for name, default, doc in documented_settings():
        print(f"| `{name}` | `{default}` | {doc} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meterstream",
        description="Realtime stream processor for smart-me energy-meter webhooks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="the whole pipeline on this machine (embedded Kafka, bridge, "
                   "worker)").set_defaults(func=cmd_run)
    sub.add_parser("bridge", help="the webhook → Kafka bridge").set_defaults(func=cmd_bridge)
    sub.add_parser("worker", help="a Faust worker (decode, aggregate, alerts)").set_defaults(
        func=cmd_worker)
    sub.add_parser("kafka", help="only the embedded Kafka broker, in the foreground"
                   ).set_defaults(func=cmd_kafka)
    tail = sub.add_parser("tail", help="print the records of a topic as JSON lines")
    tail.add_argument("topic", help="topic name, or a setting name such as `readings`")
    tail.add_argument("-n", "--count", type=int, default=None,
                      help="stop after this many records")
    tail.add_argument("-f", "--follow", action="store_true", help="keep waiting for new records")
    tail.add_argument("--timeout", type=float, default=10.0,
                      help="seconds to wait for records when not following (default 10)")
    tail.set_defaults(func=cmd_tail)
    sub.add_parser("settings", help="print every setting as a Markdown table").set_defaults(
        func=cmd_settings)
    decode = sub.add_parser("decode", help="decode one webhook body to JSON lines")
    decode.add_argument("file", nargs="?", default="-", help="body file, or - for stdin")
    decode.add_argument("--hex", action="store_true", help="the input is hex text")
    decode.set_defaults(func=cmd_decode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.func(settings, args))
    except (ConfigError, UsageError) as exc:
        print(f"meterstream {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
