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
from streams.logs import throttle_client_logs

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
    throttle_client_logs()


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


def _with_bootstrap(settings: Settings) -> Settings:
    """Without a configured bootstrap, talk to the embedded broker `meterstream run` starts."""
    if settings.kafka_bootstrap:
        return settings
    return settings.replace(kafka_bootstrap=f"127.0.0.1:{settings.kafka_port}")


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    from streams import tail

    bootstrap = _with_bootstrap(settings).kafka_bootstrap
    topic = settings.all_topics.get(f"topic_{args.topic}", args.topic)
    return asyncio.run(tail.tail(bootstrap, topic, count=args.count,
                                 follow=args.follow, idle_seconds=args.timeout))


def cmd_requeue_readings(settings: Settings, _args: argparse.Namespace) -> int:
    from streams import requeue

    _require_bootstrap(settings)
    try:
        result = asyncio.run(requeue.requeue_readings(settings))
    except requeue.RequeueError as exc:
        raise UsageError(str(exc)) from None
    for line in result.lines:
        print(line)
    return 0


def cmd_settings(_settings: Settings, _args: argparse.Namespace) -> int:
    from streams.config import documented_settings

    print("| Variable | Default | Meaning |")
    print("|---|---|---|")
    for name, default, doc in documented_settings():
        print(f"| `{name}` | `{default}` | {doc} |")
    return 0


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from streams import simulate

    _setup_logging(settings.log_level)
    url = args.url or (f"http://{settings.bridge_host}:{settings.bridge_port}"
                       f"{settings.bridge_path}")
    username, password = args.user, args.password
    if username is None and settings.bridge_credentials:
        username = settings.bridge_credentials[0].username
        password = settings.bridge_credentials[0].password
    counts = asyncio.run(simulate.simulate(
        url, devices=args.devices, rate=args.rate, duration=args.duration,
        username=username or "", password=password or "", duplicates=args.duplicates,
        late=args.late, seed=args.seed))
    print(orjson.dumps(counts).decode())
    return 0 if counts["rejected"] == counts["errors"] == 0 else 1


def cmd_smartme(settings: Settings, args: argparse.Namespace) -> int:
    from streams import smartme_cli

    _setup_logging("warning")
    if args.action == "register":
        return asyncio.run(smartme_cli.register(settings, args.url, args.device,
                                                all_devices=args.all))
    if args.action == "list":
        return asyncio.run(smartme_cli.list_registrations(settings))
    if args.action == "unregister":
        return asyncio.run(smartme_cli.unregister(settings, args.id))
    if args.action == "check-units":
        from streams import unit_check

        return asyncio.run(unit_check.check_units(_with_bootstrap(settings), args.device))
    return asyncio.run(smartme_cli.devices(settings))


def cmd_umeter(settings: Settings, args: argparse.Namespace) -> int:
    from streams import mapping_report, umeter

    _setup_logging("warning")
    if args.action == "unmapped":
        return asyncio.run(mapping_report.unmapped(_with_bootstrap(settings)))
    return asyncio.run(umeter.check(settings, sys.stdout))


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
    sub.add_parser("requeue-readings", help="upgrading: copy the readings older workers "
                   "had not aggregated into the aggregation's input").set_defaults(
        func=cmd_requeue_readings)
    sub.add_parser("settings", help="print every setting as a Markdown table").set_defaults(
        func=cmd_settings)
    simulate = sub.add_parser("simulate", help="POST synthetic smart-me traffic to a bridge")
    simulate.add_argument("--devices", type=int, default=100, help="meters (default 100)")
    simulate.add_argument("--rate", type=float, default=10.0,
                          help="readings per second over the whole fleet (default 10)")
    simulate.add_argument("--url", help="webhook URL (default: the configured bridge)")
    simulate.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    simulate.add_argument("--user", help="Basic user (default: first configured credential)")
    simulate.add_argument("--password", help="Basic password")
    simulate.add_argument("--duplicates", type=float, default=0.0,
                          help="share of readings sent twice, like webhook retries")
    simulate.add_argument("--late", type=float, default=0.01,
                          help="share of meters per round that go quiet for 2-10 rounds and "
                               "then upload their buffered readings at once (default 0.01)")
    simulate.add_argument("--seed", type=int, default=1, help="fleet seed (same ids)")
    simulate.set_defaults(func=cmd_simulate)
    smartme = sub.add_parser("smartme", help="smart-me REST: webhook registration, devices")
    actions = smartme.add_subparsers(dest="action", required=True, metavar="ACTION")
    register = actions.add_parser("register", help="point smart-me's Realtime API at a URL")
    register.add_argument("--url", required=True, help="public URL of the bridge's webhook")
    target = register.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", help="one meter (device id or serial)")
    target.add_argument("--all", action="store_true", help="every meter of the account")
    actions.add_parser("list", help="registrations of the account")
    unregister = actions.add_parser("unregister", help="delete a registration")
    unregister.add_argument("id", help="registration id (from `list`)")
    actions.add_parser("devices", help="the account's meters with their last value's age")
    check_units = actions.add_parser(
        "check-units", help="compare a meter's webhook values with its REST values (units)")
    check_units.add_argument("device", help="smart-me device id")
    smartme.set_defaults(func=cmd_smartme)
    umeter = sub.add_parser("umeter", help="UMeter: check credentials, EANs, measurements")
    umeter_actions = umeter.add_subparsers(dest="action", required=True, metavar="ACTION")
    umeter_actions.add_parser("check", help="log in and print customer, EANs, measurements")
    umeter_actions.add_parser("unmapped", help="meters the pipeline knows without an EAN")
    umeter.set_defaults(func=cmd_umeter)
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
