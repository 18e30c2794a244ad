"""Command line: ``leveret serve``, ``leveret check``, ``leveret shovel``, ``leveret ctl``
and ``leveret --version`` (also ``python -m leveret``).

Exit status: 0 after a clean stop, 2 for a usage or settings error (nothing is started or
created), 1 when start-up fails (a busy port, an unusable data directory...), with one
line saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import sys

from leveret.broker import __version__, allocator, ctl, logs, settings
from leveret.broker.check import check
from leveret.broker.config import BrokerConfig
from leveret.broker.server import Broker
from leveret.broker.store import StoreError

log = logging.getLogger("leveret")


class StartupError(Exception):
    """The broker could not start; the message says why in one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leveret", description="Leveret AMQP 0-9-1 broker")
    parser.add_argument("--version", action="version", version=f"leveret {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the broker", usage="leveret serve [options]",
        description="Run the broker. Each setting can also be set in the config file (the "
                    "flag's name with underscores) and some in the environment; the command "
                    "line beats the environment, which beats the file.")
    settings.add_arguments(serve)
    serve.set_defaults(parser=serve)
    probe = commands.add_parser(
        "check", help="exit 0 if a broker answers AMQP (health checks)",
        description="Connect, send the AMQP protocol header and wait for connection.start "
                    "(no login). Exit 0 if it came, 1 if not.")
    probe.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    probe.add_argument("--port", type=int, help="(default: $LEVERET_PORT, else 5672)")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    shovel = commands.add_parser(
        "shovel", help="move a queue's messages to another broker",
        description="Move messages from a queue on one broker to a queue or exchange on "
                    "another; each is acked at the source once the destination confirmed it "
                    "(at least once). Exit 0 when everything taken moved, 1 on a connection "
                    "error or messages the destination refused (they stay in the source).")
    add_shovel_arguments(shovel)
    shovel.set_defaults(parser=shovel)
    manage = commands.add_parser(
        "ctl", help="rabbitmqctl's commands over the management HTTP API",
        usage="leveret ctl [options] COMMAND [args]", description=ctl.DESCRIPTION)
    ctl.add_arguments(manage)
    return parser


def add_shovel_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``leveret shovel`` options."""
    parser.add_argument("--src-uri", required=True, metavar="URI",
                        help="source broker, e.g. amqp://guest:guest@host:5672/%%2F")
    parser.add_argument("--src-queue", required=True, metavar="QUEUE",
                        help="queue to take messages from")
    parser.add_argument("--dest-uri", required=True, metavar="URI", help="destination broker")
    to = parser.add_mutually_exclusive_group(required=True)
    to.add_argument("--dest-queue", metavar="QUEUE",
                    help="publish to this queue (through the default exchange)")
    to.add_argument("--dest-exchange", metavar="EXCHANGE", help="publish to this exchange")
    parser.add_argument("--dest-key", metavar="KEY",
                        help="routing key with --dest-exchange (default: each message's own)")
    parser.add_argument("--drain", action="store_true",
                        help="stop once the source queue is empty (default: run until "
                             "SIGINT or SIGTERM)")
    parser.add_argument("--prefetch", type=int, default=500, metavar="N",
                        help="messages in flight at once (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no rate display on stderr")


def install_event_loop_policy() -> str:
    """Use uvloop when it is installed; returns the loop's name."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def describe_start_error(error: Exception, config: BrokerConfig) -> str:
    """One line for what stopped start-up."""
    if isinstance(error, ssl.SSLError):
        return f"TLS certificate or key not usable: {error.reason or error}"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host {config.host!r}: {error.strerror}"
    if isinstance(error, UnicodeError):
        return f"invalid host name {config.host!r}: {error}"
    if isinstance(error, OSError):
        if error.strerror and "attempting to bind" in error.strerror:
            return f"cannot listen: {error.strerror}"  # asyncio names the address
        data_dir = config.data_dir
        if data_dir is not None and data_dir.exists() and not data_dir.is_dir():
            return f"data directory {data_dir} is not a directory"
        if error.filename is not None:
            return f"cannot use {error.filename}: {error.strerror}"
    return str(error)


async def serve(config: BrokerConfig, log_handler: logging.Handler) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("%s", logs.reopen(log_handler)))
    broker = Broker(config)
    try:
        await broker.start()
    except (StoreError, OSError, ValueError) as error:
        log.debug("start-up failed", exc_info=True)
        raise StartupError(describe_start_error(error, config)) from None
    # Queued and scheduled messages are long-lived objects without cycles; full collections
    # over millions of them paused the loop for up to 0.6 s. Collect less often, and keep
    # everything created at start-up out of the collector's sight.
    gc.set_threshold(50_000, 50, 100)
    gc.freeze()
    allocator.tune()  # large bodies reuse freed memory (see broker/allocator.py)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down (a second SIGINT or SIGTERM stops waiting for clients)")
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, broker.hurry)
    await broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "check":
        return check_command(args)
    if args.command == "shovel":
        from leveret.broker.shovel import command  # aiormq only when shovelling

        install_event_loop_policy()
        return command(args, args.parser)
    if args.command == "ctl":
        return ctl.command(args)
    return serve_command(args)


def check_command(args: argparse.Namespace) -> int:
    if args.port is None:
        try:
            args.port = settings.BY_NAME["port"].kind.from_text(
                os.environ.get("LEVERET_PORT") or "5672")
        except ValueError:
            print("leveret check: LEVERET_PORT is not a port", file=sys.stderr)
            return 2
    try:
        answer = check(args.host, args.port, args.timeout)
    except OSError as error:
        print(f"leveret check: amqp://{args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    print(f"leveret check: amqp://{args.host}:{args.port}: {answer} answered")
    return 0


def serve_command(args: argparse.Namespace) -> int:
    try:
        found = settings.resolve(vars(args), os.environ)
    except settings.SettingsError as error:
        args.parser.error(str(error))  # usage and the message on stderr, exit status 2
    if args.print_config:
        sys.stdout.write(found.to_toml())
        return 0
    values = found.values
    try:
        handler = logs.configure(values["log_level"], values["log_file"],
                                 values["log_max_bytes"], values["log_backups"])
    except OSError as error:
        print(f"leveret: cannot open log file {values['log_file']}: {error.strerror}",
              file=sys.stderr)
        return 1
    config = found.broker_config()
    log.debug("event loop: %s", install_event_loop_policy())
    try:
        asyncio.run(serve(config, handler))
    except StartupError as error:
        log.error("cannot start: %s", error)
        if values["log_file"] is not None:  # say it where the operator is looking too
            print(f"leveret: cannot start: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # during start-up, before the signal handlers are in place
        log.warning("interrupted during start-up")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
