"""Command line: ``leveret serve`` and ``leveret --version`` (also ``python -m leveret``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

from leveret.broker import __version__
from leveret.broker.config import BrokerConfig, physical_memory
from leveret.broker.server import Broker
from leveret.broker.store import StoreError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leveret", description="Leveret AMQP 0-9-1 broker")
    parser.add_argument("--version", action="version", version=f"leveret {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the broker")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=5672, help="port to listen on (0: any)")
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where durable state lives (default: ./data)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="heartbeat interval offered to clients, seconds (0 disables)",
    )
    serve.add_argument(
        "--max-message-size",
        type=int,
        default=128 * 1024 * 1024,
        help="largest accepted message body in bytes",
    )
    serve.add_argument("--no-fsync", dest="fsync", action="store_false",
                       help="confirm persistent messages once written, without fsync "
                            "(faster, like RabbitMQ; a machine crash can lose confirmed ones)")
    serve.add_argument("--sync-interval", type=float, default=0.0, metavar="MS",
                       help="group-commit window: one fsync per this many ms "
                            "(default 0: one per event-loop iteration)")
    serve.add_argument("--disk-free-limit", type=int, default=50_000_000, metavar="BYTES",
                       help="block publishers while free disk space is below this "
                            "(default 50 MB, as RabbitMQ)")
    serve.add_argument("--memory-high-watermark", type=float, default=0.4, metavar="FRACTION",
                       help="block publishers while resident memory is above this fraction "
                            "of the machine's RAM (default 0.4, as RabbitMQ; 0 disables)")
    serve.add_argument("--consumer-timeout", type=int, default=0, metavar="MS",
                       help="cancel a consumer that holds a delivery unacked this long, "
                            "requeueing its messages (default 0: off)")
    return parser


def install_event_loop_policy() -> str:
    """Use uvloop when it is installed; returns the loop's name."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(config: BrokerConfig) -> None:
    broker = Broker(config)
    await broker.start()
    # Queued and scheduled messages are long-lived objects without cycles; full collections
    # over millions of them paused the loop for up to 0.6 s. Collect less often, and keep
    # everything created at start-up out of the collector's sight.
    gc.set_threshold(50_000, 50, 100)
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    logging.getLogger("leveret").info("shutting down")
    await broker.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args.data_dir.mkdir(parents=True, exist_ok=True)
    config = BrokerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        heartbeat=args.heartbeat,
        max_message_size=args.max_message_size,
        consumer_timeout=args.consumer_timeout / 1000 or None,
        fsync=args.fsync,
        sync_interval=args.sync_interval / 1000,
        disk_free_limit=args.disk_free_limit,
        memory_high_watermark=int(args.memory_high_watermark * physical_memory()),
    )
    loop_name = install_event_loop_policy()
    logging.getLogger("leveret").debug("event loop: %s", loop_name)
    try:
        asyncio.run(serve(config))
    except StoreError as error:
        logging.getLogger("leveret").error("cannot start: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
