"""The migration procedure of README ("Moving to a RabbitMQ cluster"), end to end with stock
Celery and a real RabbitMQ 3.10.8 (skipped when none answers on 127.0.0.1:5673), both ways:

1. a Celery app runs against one broker, with a backlog (plain and priority tasks, plus raw
   messages carrying a TTL and an ``x-death`` history); its worker stops (warm shutdown);
2. the definitions are exported from that broker and imported into the other;
3. ``leveret shovel --drain`` moves every queue's backlog;
4. a worker and the app's producer start on the other broker;
5. every task ran exactly once (a clean switch duplicates nothing; at-least-once would only
   allow duplicates of messages in flight when a side dies), the raw messages kept their
   headers and TTL.

Each direction uses a vhost of its own at RabbitMQ, deleted afterwards.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from admin_helpers import RabbitAdmin
from test_shovel import needs_rabbitmq

from leveret.broker.embedded import EmbeddedBroker

from .app import DEFAULT_QUEUE, PRIORITY_QUEUE, create_app
from .conftest import PYTHON, ROOT, Records, close_app, start_worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration, needs_rabbitmq]

BACKLOG = 150  # plain tasks waiting when the switch begins
PRIORITY_BACKLOG = 30
AFTER = 60  # tasks sent to the new broker after the switch
RAW_QUEUE = "raw.held"  # raw messages: a remaining TTL and an x-death history


@pytest.fixture
def rabbit_vhost() -> Iterator[tuple[RabbitAdmin, str]]:
    admin = RabbitAdmin()
    vhost = f"celery-migration-{uuid.uuid4().hex[:10]}"
    admin.add_vhost(vhost)
    admin.set_permissions("guest", vhost)
    yield admin, vhost
    admin.delete_vhost(vhost)


def _rabbit_url(vhost: str, scheme: str = "amqp") -> str:
    return f"{scheme}://guest:guest@127.0.0.1:5673/{urllib.parse.quote(vhost, safe='')}"


def _leveret_url(broker: EmbeddedBroker, scheme: str = "amqp") -> str:
    return broker.url_for(scheme=scheme)


def _http_definitions(broker: EmbeddedBroker) -> dict[str, Any]:
    """GET /api/definitions from Leveret's management API (what `leveret ctl` reads)."""
    token = base64.b64encode(b"guest:guest").decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.broker.management_port}/api/definitions",
        headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _one_vhost(definitions: dict[str, Any], source: str, target: str) -> dict[str, Any]:
    """Exchanges, queues and bindings of vhost ``source``, renamed to ``target`` (the
    format of ``POST /api/definitions/{vhost}``; users and permissions stay as they are)."""
    out: dict[str, Any] = {}
    for kind in ("exchanges", "queues", "bindings"):
        out[kind] = [{**item, "vhost": target} for item in definitions.get(kind, [])
                     if item.get("vhost", source) == source]
    return out


def _shovel_all(src: str, dest: str, queues: list[str]) -> None:
    for queue in queues:
        done = subprocess.run(
            [PYTHON, "-m", "leveret", "shovel", "--src-uri", src, "--src-queue", queue,
             "--dest-uri", dest, "--dest-queue", queue, "--drain"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "failed 0" in done.stdout + done.stderr, done.stdout + done.stderr


def _raw_backlog(url: str) -> None:
    """Messages only a careful move keeps intact: a TTL, and a dead-lettering history."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    ch = connection.channel()
    ch.queue_declare(RAW_QUEUE, durable=True)
    ch.queue_declare("raw.expiring", durable=True, arguments={
        "x-message-ttl": 0, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": RAW_QUEUE})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", RAW_QUEUE, f"raw {i}".encode(), pika.BasicProperties(
            delivery_mode=2, expiration="600000", headers={"i": i}, priority=3))
    for i in range(5, 10):  # dead-lettered at once into RAW_QUEUE, with x-death
        ch.basic_publish("", "raw.expiring", f"raw {i}".encode(), pika.BasicProperties(
            delivery_mode=2, headers={"i": i}))
    connection.close()


def _check_raw(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    ch = connection.channel()
    taken = []
    while True:
        method, properties, body = ch.basic_get(RAW_QUEUE, auto_ack=True)
        if method is None:
            break
        taken.append((properties, body))
    connection.close()

    def dead(i: int) -> bool:
        return i >= 5

    by_index = {properties.headers["i"]: (properties, body) for properties, body in taken}
    assert sorted(by_index) == list(range(10))
    for i, (properties, body) in by_index.items():
        assert body == f"raw {i}".encode()
        assert properties.delivery_mode == 2
        if dead(i):
            death = properties.headers["x-death"][0]
            assert death["queue"] == "raw.expiring" and death["reason"] == "expired"
        else:
            assert properties.expiration == "600000" and properties.priority == 3


def _moved_queues(definitions: dict[str, Any]) -> list[str]:
    """The queues whose backlog moves: not auto-delete ones, which belong to clients that are
    connected now (Celery's rpc:// reply queues) and go away with them."""
    return [q["name"] for q in definitions["queues"] if not q.get("auto_delete")]


def _send(app: Any, prefix: str, count: int, priority_count: int = 0) -> None:
    for i in range(count):
        app.send_task("e2e.record", args=(f"{prefix}{i}",))
    for i in range(priority_count):
        app.send_task("e2e.record", args=(f"{prefix}p{i}",), queue=PRIORITY_QUEUE,
                      priority=i % 10)


def _check_ran_once(records: Records, labels: list[str]) -> None:
    done: dict[str, int] = {}
    for entry in records.all():
        if entry["phase"] == "done":
            done[entry["label"]] = done.get(entry["label"], 0) + 1
    missing = [label for label in labels if label not in done]
    twice = {label: n for label, n in done.items() if n > 1}
    assert not missing, f"{len(missing)} tasks never ran: {missing[:10]}"
    assert not twice, f"tasks ran more than once: {twice}"


def _migrate(tmp_path: Path, old_url: str, new_url: str, export: Any, import_: Any,
             queues_of: Any) -> None:
    """The README procedure from the broker at ``old_url`` to the one at ``new_url``."""
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    records = Records(record_dir)
    pyamqp = ("pyamqp" + old_url[4:], "pyamqp" + new_url[4:])
    app = create_app(broker_url=pyamqp[0])
    _send(app, "old-", BACKLOG, PRIORITY_BACKLOG)
    close_app(app)
    _raw_backlog(old_url)
    # the old worker runs part of the backlog, then stops (warm shutdown: acks what it ran)
    worker = start_worker(pyamqp[0], tmp_path, record_dir, "old",
                          [DEFAULT_QUEUE, PRIORITY_QUEUE], concurrency=2)
    wait_until(lambda: len([e for e in records.all() if e["phase"] == "done"]) >= 40, 60,
               "the old worker ran 40 tasks")
    worker.stop(30)
    # definitions, then every queue's backlog
    definitions = export()
    import_(definitions)
    _shovel_all(old_url, new_url, queues_of(definitions))
    # the new worker, and the producer switched to the new URL
    worker = start_worker(pyamqp[1], tmp_path, record_dir, "new",
                          [DEFAULT_QUEUE, PRIORITY_QUEUE], concurrency=2)
    try:
        app = create_app(broker_url=pyamqp[1])
        _send(app, "new-", AFTER)
        close_app(app)
        labels = ([f"old-{i}" for i in range(BACKLOG)]
                  + [f"old-p{i}" for i in range(PRIORITY_BACKLOG)]
                  + [f"new-{i}" for i in range(AFTER)])
        wait_until(lambda: {e["label"] for e in records.all() if e["phase"] == "done"}
                   >= set(labels), 120, "every task ran")
    finally:
        worker.stop(30)
    _check_ran_once(records, labels)
    _check_raw(new_url)


def test_from_leveret_to_rabbitmq(tmp_path: Path,
                                  rabbit_vhost: tuple[RabbitAdmin, str]) -> None:
    rabbit, vhost = rabbit_vhost
    with EmbeddedBroker(port=0, data_dir=tmp_path / "leveret", management_port=0) as leveret:
        _migrate(
            tmp_path, _leveret_url(leveret), _rabbit_url(vhost),
            export=lambda: _one_vhost(_http_definitions(leveret), "/", vhost),
            import_=lambda d: rabbit._call("POST", f"/definitions/{RabbitAdmin._q(vhost)}", d),
            queues_of=_moved_queues)
        assert leveret.call(lambda: sum(q.message_count for q in
                                        leveret.broker.vhosts["/"].queues.values()
                                        if not q.auto_delete)) == 0


def test_from_rabbitmq_to_leveret(tmp_path: Path,
                                  rabbit_vhost: tuple[RabbitAdmin, str]) -> None:
    rabbit, vhost = rabbit_vhost
    with EmbeddedBroker(port=0, data_dir=tmp_path / "leveret") as leveret:
        _migrate(
            tmp_path, _rabbit_url(vhost), _leveret_url(leveret),
            export=lambda: _one_vhost(rabbit._call("GET", "/definitions"), vhost, "/"),
            import_=lambda d: leveret.call(lambda: leveret.broker.admin.import_definitions(d)),
            queues_of=_moved_queues)
        # (RabbitMQ's management API counts lag by seconds: ask over AMQP)
        definitions = _one_vhost(rabbit._call("GET", "/definitions"), vhost, vhost)
        connection = pika.BlockingConnection(pika.URLParameters(_rabbit_url(vhost)))
        ch = connection.channel()
        left = {name: ch.queue_declare(name, passive=True).method.message_count
                for name in _moved_queues(definitions)}
        connection.close()
        assert set(left.values()) == {0}, left
