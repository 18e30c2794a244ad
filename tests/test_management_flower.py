"""Flower, unchanged, reads queue lengths from Leveret's management API.

Flower (a separate process, as users run it) is pointed at the embedded broker with
``--broker_api``; its own API (``/api/queues/length``) and its broker page must show the
lengths of queues made over AMQP. A named vhost: Flower asks for ``queues/<vhost>``, and for
``/`` it asks for ``queues//``, which RabbitMQ 3.10.8 answers 404 as well.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pika
import pytest
from management_helpers import Api

from leveret.broker.embedded import EmbeddedBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

APP = textwrap.dedent("""
    import os
    from celery import Celery
    from kombu import Queue

    app = Celery("flowerapp", broker=os.environ["FLOWER_TEST_BROKER"])
    app.conf.task_queues = [Queue("celery"), Queue("video")]
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fetch(url: str, auth: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def test_flower_shows_queue_lengths(tmp_path: Path) -> None:
    pytest.importorskip("flower")
    with EmbeddedBroker(management_port=0) as embedded:
        management = embedded.broker.management_port
        Api(f"http://127.0.0.1:{management}").ok("PUT", "/api/vhosts/flower")
        url = embedded.url_for(vhost="flower")
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        for queue, count in (("celery", 3), ("video", 5)):
            channel.queue_declare(queue, durable=True)
            for _ in range(count):
                channel.basic_publish("", queue, b"task")
        unacked = connection.channel()  # one "video" message delivered and not yet acked
        unacked.basic_qos(prefetch_count=1)
        unacked.basic_consume("video", lambda *args: None)
        connection.process_data_events(0.2)

        (tmp_path / "flowerapp.py").write_text(APP)
        port = _free_port()
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "flowerapp", "flower", f"--port={port}",
             "--address=127.0.0.1", "--basic_auth=fl:pw",
             f"--broker_api=http://guest:guest@127.0.0.1:{management}/api/"],
            cwd=tmp_path, env={**os.environ, "FLOWER_TEST_BROKER": url, "PYTHONPATH": str(
                tmp_path)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        auth = base64.b64encode(b"fl:pw").decode()
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    lengths = json.loads(_fetch(f"http://127.0.0.1:{port}/api/queues/length",
                                                auth))
                    break
                except OSError:
                    assert flower.poll() is None, flower.stderr.read().decode()[-2000:]
                    assert time.monotonic() < deadline, "Flower did not answer within 20 s"
                    time.sleep(0.2)
            shown = {q["name"]: (q["messages"], q["messages_ready"],
                                 q["messages_unacknowledged"])
                     for q in lengths["active_queues"]}
            assert shown == {"celery": (3, 3, 0), "video": (5, 4, 1)}
            page = _fetch(f"http://127.0.0.1:{port}/broker", auth).decode()
            row = page[page.index('<tr id="video">'):]
            cells = [cell.split(">")[-1] for cell in row.split("</td>")[:5]]
            # Queue, Messages, Unacked, Ready, Consumers
            assert cells == ["video", "5", "1", "4", "1"], cells
        finally:
            flower.terminate()
            flower.wait(10)
            connection.close()
