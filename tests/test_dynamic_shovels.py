"""Dynamic shovels (broker/shovels.py): declared in the config or over the management API, run
inside the broker, reconnect after either side restarts, wait (never drop) when refused.
Leveret <-> RabbitMQ both ways when one answers on 127.0.0.1:5673."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_shovel import (
    RABBITMQ_URL,
    _channel,
    _check_moved,
    _count,
    _publish,
    _rabbitmq_queue,
    _take_all,
    needs_rabbitmq,
)

from leveret.broker.embedded import EmbeddedBroker
from leveret.broker.settings import SettingsError, resolve

FAST = {"reconnect-delay": 0.2}


def _wait(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or condition}")


def _count_or_none(url: str, queue: str) -> int | None:
    try:
        return _count(url, queue)
    except Exception:
        return None


def _http(broker: EmbeddedBroker, method: str, path: str, body: Any = None) -> Any:
    token = base64.b64encode(b"guest:guest").decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.broker.management_port}/api{path}", method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        data = response.read()
        return response.status, (json.loads(data) if data else None)


def _shovel_value(src: EmbeddedBroker | str, dest: EmbeddedBroker | str,
                  **extra: Any) -> dict[str, Any]:
    return {"src-uri": src if isinstance(src, str) else src.url, "src-queue": "work",
            "dest-uri": dest if isinstance(dest, str) else dest.url, "dest-queue": "work",
            **FAST, **extra}


@pytest.fixture
def dest() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port=0) as broker:
        yield broker


def _declare(url: str, queue: str = "work", **arguments: Any) -> None:
    with _channel(url) as channel:
        channel.queue_declare(queue, durable=True, arguments=arguments or None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_configured_shovel_moves_messages_as_they_come(dest: EmbeddedBroker) -> None:
    _declare(dest.url)
    port = _free_port()
    source_url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    with EmbeddedBroker(port=port, shovels={"to-dest": _shovel_value(source_url, dest)}
                        ) as source:
        _publish(source.url, "work", 300)  # declares the source queue
        _wait(lambda: _count(dest.url, "work") == 300, what="300 moved")
        _publish(source.url, "work", 0, declare=False)
        assert _count(source.url, "work") == 0
        _check_moved(_take_all(dest.url, "work"), 300)
        status = source.call(lambda: source.broker.shovels.status())
        assert status[0]["state"] == "running" and status[0]["messages_moved"] == 300


def test_the_management_api_sets_lists_and_deletes_shovels(dest: EmbeddedBroker,
                                                            tmp_path: Path) -> None:
    _declare(dest.url)
    with EmbeddedBroker(port=0, management_port=0, data_dir=tmp_path) as source:
        _declare(source.url)
        status, _ = _http(source, "PUT", "/parameters/shovel/%2F/move",
                          {"value": _shovel_value(source, dest)})
        assert status == 201
        shovels = _wait(lambda: [s for s in _http(source, "GET", "/shovels")[1]
                                 if s["state"] == "running"], what="running")
        assert shovels[0]["name"] == "move" and shovels[0]["vhost"] == "/"
        assert "guest:***@" in shovels[0]["src_uri"]  # the password is not shown
        _, listed = _http(source, "GET", "/parameters/shovel")
        assert [p["name"] for p in listed] == ["move"]
        _publish(source.url, "work", 50, declare=False)
        _wait(lambda: _count(dest.url, "work") == 50, what="50 moved")
        # kept across a restart of the broker that runs it
        source.restart()
        _publish(source.url, "work", 20, declare=False)
        _wait(lambda: _count(dest.url, "work") == 70, what="70 moved after a restart")
        definitions = _http(source, "GET", "/definitions")[1]
        assert [p["name"] for p in definitions["parameters"]] == ["move"]
        status, _ = _http(source, "DELETE", "/parameters/shovel/%2F/move")
        assert status == 204
        assert _http(source, "GET", "/shovels")[1] == []
        _publish(source.url, "work", 5, declare=False)
        time.sleep(0.5)
        assert _count(source.url, "work") == 5  # nothing moves them now
        source.restart()
        assert source.call(lambda: source.broker.shovels.status()) == []


def test_a_bad_shovel_is_refused_with_the_reason(dest: EmbeddedBroker) -> None:
    with EmbeddedBroker(port=0, management_port=0) as source:
        with pytest.raises(urllib.error.HTTPError) as refused:
            _http(source, "PUT", "/parameters/shovel/%2F/bad",
                  {"value": {"src-uri": source.url, "src-queue": "work",
                             "dest-uri": dest.url}})
        assert refused.value.code == 400
        assert "exactly one of dest-queue and dest-exchange" in refused.value.read().decode()

def test_the_config_file_checks_shovels(tmp_path: Path) -> None:
    config = tmp_path / "leveret.toml"
    config.write_text('[shovels.x]\nsrc-uri = "http://nope"\nsrc-queue = "q"\n'
                      'dest-uri = "amqp://a:b@h/"\ndest-queue = "q"\n')
    with pytest.raises(SettingsError, match=r"shovel 'x'.*src-uri"):
        resolve({"config": config}, {})
    config.write_text('[shovels.x]\nsrc-uri = "amqp://u:secret@h/"\nsrc-queue = "q"\n'
                      'dest-uri = "amqp://a:b@h/"\ndest-queue = "q"\nvhost = "v"\n')
    settings = resolve({"config": config}, {})
    assert settings.broker_config().shovels["x"]["vhost"] == "v"
    assert "secret" not in settings.to_toml()


def test_it_survives_a_restart_of_the_destination(tmp_path: Path) -> None:
    dest = EmbeddedBroker(port=0, data_dir=tmp_path / "dest")
    with dest:
        _declare(dest.url)
        with EmbeddedBroker(port=0) as source:
            _declare(source.url)
            source.call(lambda: source.broker.admin.set_parameter(
                "shovel", "/", "move", _shovel_value(source, dest)))
            _publish(source.url, "work", 100, declare=False)
            _wait(lambda: _count(dest.url, "work") == 100, what="first 100")
            dest.stop()
            _publish(source.url, "work", 100, declare=False)  # they wait at the source
            time.sleep(0.5)
            # (plus any the destination confirmed whose ack the stop cut off: at least once)
            assert _count(source.url, "work") >= 100
            assert source.call(lambda: source.broker.shovels.status())[0]["state"] != "running"
            dest.start()
            _wait(lambda: (_count_or_none(dest.url, "work") or 0) >= 200
                  and _count(source.url, "work") == 0, what="200 after the restart")
            taken = _take_all(dest.url, "work")
            bodies = [body for _, body in taken]
            assert set(bodies) == {f"body {i}".encode() for i in range(100)}
            assert len(bodies) >= 200  # both batches, duplicates only of those cut off


def test_a_refusing_destination_makes_it_wait_not_drop(dest: EmbeddedBroker) -> None:
    _declare(dest.url, "work", **{"x-max-length": 10, "x-overflow": "reject-publish"})
    with EmbeddedBroker(port=0) as source:
        _declare(source.url)
        _publish(source.url, "work", 30, declare=False)
        source.call(lambda: source.broker.admin.set_parameter(
            "shovel", "/", "move", _shovel_value(source, dest)))
        _wait(lambda: _count(dest.url, "work") == 10, what="10 accepted")
        time.sleep(0.5)
        assert _count(source.url, "work") == 20  # refused ones are back at the source
        status = source.call(lambda: source.broker.shovels.status())[0]
        assert status["messages_failed"] >= 1 and "refused" in status.get("reason", "")
        received = []
        deadline = time.monotonic() + 30
        while len(received) < 30 and time.monotonic() < deadline:
            received += [body for _, body in _take_all(dest.url, "work")]
            time.sleep(0.2)
        assert sorted(received) == sorted(f"body {i}".encode() for i in range(30))


@needs_rabbitmq
def test_leveret_to_rabbitmq_and_back() -> None:
    with EmbeddedBroker(port=0) as leveret, _rabbitmq_queue() as queue:
        _declare(leveret.url)
        _declare(leveret.url, "back")
        with _channel(RABBITMQ_URL) as channel:
            channel.queue_declare(queue, durable=True)
        # out: Leveret's queue "work" -> RabbitMQ; back: RabbitMQ -> Leveret's queue "back"
        leveret.call(lambda: leveret.broker.admin.set_parameter("shovel", "/", "out", {
            **_shovel_value(leveret, RABBITMQ_URL), "dest-queue": queue}))
        _publish(leveret.url, "work", 200, declare=False)
        _wait(lambda: _count(RABBITMQ_URL, queue) == 200, what="200 at RabbitMQ")
        leveret.call(lambda: leveret.broker.admin.clear_parameter("shovel", "/", "out"))
        leveret.call(lambda: leveret.broker.admin.set_parameter("shovel", "/", "back", {
            **_shovel_value(RABBITMQ_URL, leveret), "src-queue": queue, "dest-queue": "back"}))
        _wait(lambda: _count(leveret.url, "back") == 200, what="200 back at Leveret")
        assert _count(RABBITMQ_URL, queue) == 0
        _check_moved(_take_all(leveret.url, "back"), 200)
