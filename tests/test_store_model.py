"""The message store against a simple model (hypothesis stateful test, no sockets).

Publish to some of three queues, remove, mark delivered, purge, flush, let the writer and
the compactor catch up, crash (abandon the store; only what was handed to the writer
survives) and recover: the recovered queues always equal the model's, in order.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from leveret.broker.message import Message
from leveret.broker.store.store import MessageStore

ROUTE = b"\x00\x01q"
HEADER = b"\x00\x3c\x00\x00" + bytes(8) + b"\x00\x00"
QUEUES = [("/", "a"), ("/", "b"), ("/", "c")]

Model = dict[tuple[str, str], list[int]]


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="leveret-model-"))
        self.loop = asyncio.new_event_loop()
        self.model: Model = {q: [] for q in QUEUES}
        self.bodies: dict[int, bytes] = {}
        self.delivered: set[tuple[tuple[str, str], int]] = set()
        self.handed: Model = {q: [] for q in QUEUES}  # the model when last flushed
        self.handed_delivered: set[tuple[tuple[str, str], int]] = set()
        self.counter = 0
        self.store = self._open()

    def _open(self) -> MessageStore:
        store = MessageStore(self.directory, self.loop, segment_limit=600)
        recovered = store.open()
        got = {q: list(found.ids) for q, found in recovered.queues.items() if found.ids}
        expected = {q: ids for q, ids in self.handed.items() if ids}
        assert got == expected
        for queue, found in recovered.queues.items():
            for msg_id in found.ids:
                assert store.read(msg_id).body == self.bodies[msg_id]
            assert {(queue, i) for i in found.delivered} == {
                (q, i) for q, i in self.handed_delivered if q == queue}
        self.model = {q: list(self.handed[q]) for q in QUEUES}
        self.delivered = set(self.handed_delivered)
        return store

    def _flush(self) -> None:
        self.store.flush()
        self.handed = {q: list(ids) for q, ids in self.model.items()}
        self.handed_delivered = set(self.delivered)

    @rule(queues=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=3, unique=True),
          size=st.integers(0, 300))
    def publish(self, queues: list[tuple[str, str]], size: int) -> None:
        self.counter += 1
        body = str(self.counter).encode() * max(size // 4, 1)
        msg_id = self.store.publish(Message(ROUTE, HEADER, body), list(queues))
        self.bodies[msg_id] = body
        for queue in queues:
            self.model[queue].append(msg_id)

    @rule(queue=st.sampled_from(QUEUES), pick=st.integers(0, 1000))
    def remove(self, queue: tuple[str, str], pick: int) -> None:
        ids = self.model[queue]
        if ids:
            msg_id = ids.pop(pick % len(ids))
            self.store.remove(queue, msg_id)
            self.delivered.discard((queue, msg_id))

    @rule(queue=st.sampled_from(QUEUES), pick=st.integers(0, 1000))
    def deliver(self, queue: tuple[str, str], pick: int) -> None:
        ids = self.model[queue]
        if ids:
            msg_id = ids[pick % len(ids)]
            if (queue, msg_id) not in self.delivered:
                self.store.delivered(queue, msg_id)
                self.delivered.add((queue, msg_id))

    @rule(queue=st.sampled_from(QUEUES))
    def purge(self, queue: tuple[str, str]) -> None:
        self.store.purge(queue, list(self.model[queue]))
        self.model[queue] = []
        self.delivered = {(q, i) for q, i in self.delivered if q != queue}

    @rule()
    def flush(self) -> None:
        self._flush()

    @rule()
    def settle(self) -> None:
        """Let the writer finish and the compactor run its jobs."""
        self._flush()
        store = self.store

        async def wait() -> None:
            for _ in range(500):
                await asyncio.sleep(0.002)
                if store.durable >= store.issued and not store.compactor.busy:
                    return
            raise AssertionError("the store did not settle")

        self.loop.run_until_complete(wait())

    @rule()
    def merge(self) -> None:
        """Merge the sealed segments now, whatever their garbage."""
        self.settle()
        self.store.compactor.check(force=True)
        self.settle()

    @rule()
    def crash(self) -> None:
        """Abandon the store: what it handed to the writer is written, nothing else."""
        store = self.store
        store.compactor.close()  # a merge under way finishes its thread work, no swap
        assert store.writer is not None
        store.writer.close()
        store.writer = None
        store.reader.close()
        store._lock_fd, fd = -1, store._lock_fd
        os.close(fd)
        self.store = self._open()

    @invariant()
    def reads_back(self) -> None:
        for queue in QUEUES:
            for msg_id in self.model[queue][:3]:
                if self.store.is_written(msg_id):
                    assert self.store.read(msg_id).body == self.bodies[msg_id]

    def teardown(self) -> None:
        try:
            self.store.close()
        finally:
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
