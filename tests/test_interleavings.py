"""Random interleavings of publish/consume/get/ack/nack/reject/cancel/close on one queue.

A hypothesis rule-based state machine drives pika clients against a single queue and checks
that nothing is lost or duplicated: at the end every published message was acked exactly once
or is still in the queue, no message is ever held by two clients at once, an acked message is
never delivered again, and every redelivery is flagged redelivered. Passes against
RabbitMQ 3.10.8 (agreed with RabbitMQ 3.10.8).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pika.adapters.blocking_connection import BlockingChannel
from pika_helpers import Broker, connect, drain_queue, wait_for_count

pytestmark = pytest.mark.timeout(90)

MAX_SESSIONS = 2


@dataclass
class Session:
    """One client connection with one channel (and at most one consumer on it)."""

    conn: pika.BlockingConnection
    ch: BlockingChannel
    prefetch: int
    consumer_tag: str | None = None
    outstanding: dict[int, int] = field(default_factory=dict)  # delivery tag -> message id


def _make_machine(url: str, queue: str) -> type[RuleBasedStateMachine]:
    class QueueInterleavings(RuleBasedStateMachine):
        """Model: the set of published ids, acked ids, and who holds which unacked delivery."""

        def __init__(self) -> None:
            super().__init__()
            self.control = connect(url)
            self.control_ch = self.control.channel()
            self.control_ch.queue_declare(queue)
            self.control_ch.queue_purge(queue)
            self.next_id = 0
            self.published: set[int] = set()
            self.acked: Counter[int] = Counter()
            self.delivered: Counter[int] = Counter()
            self.sessions: list[Session] = []

        # --- bookkeeping ---------------------------------------------------------------------

        def _holder(self, msg_id: int) -> Session | None:
            return next((s for s in self.sessions if msg_id in s.outstanding.values()), None)

        def _record(self, session: Session, method: Any, body: bytes) -> None:
            msg_id = int(body)
            assert msg_id in self.published, f"unknown message {msg_id}"
            assert not self.acked[msg_id], f"message {msg_id} delivered again after its ack"
            assert self._holder(msg_id) is None, f"message {msg_id} held by two deliveries"
            if self.delivered[msg_id]:
                assert method.redelivered, f"redelivery of {msg_id} not flagged redelivered"
            self.delivered[msg_id] += 1
            session.outstanding[method.delivery_tag] = msg_id

        def _pick(self, index: int) -> Session:
            return self.sessions[index % len(self.sessions)]

        def _holding(self, index: int) -> Session | None:
            """A session holding unacked deliveries, after dispatching anything pika buffered.

            pika only hands consumer deliveries to callbacks in process_data_events; a
            delivery buffered while a basic.get was answered can carry a lower tag than the
            get-ok, so it must be recorded before an ack(multiple) that would cover it.
            """
            for s in self.sessions:
                s.conn.process_data_events(time_limit=0)
            holders = [s for s in self.sessions if s.outstanding]
            return holders[index % len(holders)] if holders else None

        @staticmethod
        def _pick_tag(session: Session, index: int) -> int:
            tags = sorted(session.outstanding)
            return tags[index % len(tags)]

        def _pump(self) -> None:
            for s in self.sessions:
                s.conn.process_data_events(time_limit=0.01)

        # --- rules ---------------------------------------------------------------------------

        @initialize(prefetch=st.sampled_from([0, 1, 2]), n=st.integers(min_value=1, max_value=4))
        def start(self, prefetch: int, n: int) -> None:
            self.open_session(prefetch)
            self.publish(n)

        @rule(n=st.integers(min_value=1, max_value=3))
        def publish(self, n: int) -> None:
            for _ in range(n):
                self.control_ch.basic_publish("", queue, str(self.next_id).encode())
                self.published.add(self.next_id)
                self.next_id += 1

        @precondition(lambda self: len(self.sessions) < MAX_SESSIONS)
        @rule(prefetch=st.sampled_from([0, 1, 2, 3]))
        def open_session(self, prefetch: int) -> None:
            conn = connect(url)
            ch = conn.channel()
            if prefetch:
                ch.basic_qos(prefetch_count=prefetch)
            self.sessions.append(Session(conn, ch, prefetch))

        @precondition(lambda self: any(s.consumer_tag is None for s in self.sessions))
        @rule(index=st.integers(min_value=0, max_value=MAX_SESSIONS - 1))
        def consume(self, index: int) -> None:
            idle = [s for s in self.sessions if s.consumer_tag is None]
            session = idle[index % len(idle)]

            def on_message(_ch: Any, method: Any, _props: Any, body: bytes) -> None:
                self._record(session, method, body)

            session.consumer_tag = session.ch.basic_consume(queue, on_message)

        @precondition(lambda self: bool(self.sessions))
        @rule(index=st.integers(min_value=0, max_value=MAX_SESSIONS - 1))
        def get(self, index: int) -> None:
            session = self._pick(index)
            method, _props, body = session.ch.basic_get(queue)
            if method is not None:
                self._record(session, method, body)

        @precondition(lambda self: bool(self.sessions))
        @rule()
        def pump(self) -> None:
            self._pump()

        @precondition(lambda self: bool(self.sessions))
        @rule(
            action=st.sampled_from(["ack", "ack-multiple", "nack", "nack-multiple", "reject"]),
            index=st.integers(min_value=0, max_value=MAX_SESSIONS - 1),
            pick=st.integers(min_value=0, max_value=10),
        )
        def settle(self, action: str, index: int, pick: int) -> None:
            session = self._holding(index)
            if session is None:
                return
            tag = self._pick_tag(session, pick)
            multiple = action.endswith("-multiple")
            covered = [t for t in session.outstanding if t <= tag] if multiple else [tag]
            if action.startswith("ack"):
                session.ch.basic_ack(tag, multiple=multiple)
            elif action.startswith("nack"):
                session.ch.basic_nack(tag, multiple=multiple, requeue=True)
            else:
                session.ch.basic_reject(tag, requeue=True)
            for t in covered:
                msg_id = session.outstanding.pop(t)
                if action.startswith("ack"):
                    self.acked[msg_id] += 1

        @precondition(lambda self: any(s.consumer_tag for s in self.sessions))
        @rule(index=st.integers(min_value=0, max_value=MAX_SESSIONS - 1))
        def cancel(self, index: int) -> None:
            busy = [s for s in self.sessions if s.consumer_tag]
            session = busy[index % len(busy)]
            assert session.consumer_tag is not None
            # pika requeues (rejects) deliveries it had buffered but not yet dispatched
            session.ch.basic_cancel(session.consumer_tag)
            session.consumer_tag = None

        @precondition(lambda self: bool(self.sessions))
        @rule(
            what=st.sampled_from(["channel", "connection"]),
            index=st.integers(min_value=0, max_value=MAX_SESSIONS - 1),
        )
        def close(self, what: str, index: int) -> None:
            """Close a channel (reopening one) or a whole connection: unacked go back."""
            session = self._pick(index)
            if what == "connection":
                session.conn.close()
                self.sessions.remove(session)
                return
            session.ch.close()
            session.outstanding.clear()
            session.consumer_tag = None
            session.ch = session.conn.channel()
            if session.prefetch:
                session.ch.basic_qos(prefetch_count=session.prefetch)

        # --- checks --------------------------------------------------------------------------

        @invariant()
        def acked_at_most_once(self) -> None:
            assert all(n == 1 for n in self.acked.values()), self.acked

        def teardown(self) -> None:
            try:
                for s in list(self.sessions):
                    if s.conn.is_open:
                        s.conn.close()
                self.sessions.clear()
                expected_left = len(self.published) - len(self.acked)
                assert wait_for_count(self.control_ch, queue, expected_left) == expected_left
                remaining: list[int] = []
                for body, redelivered in drain_queue(self.control_ch, queue):
                    msg_id = int(body)
                    if self.delivered[msg_id]:
                        assert redelivered, f"{msg_id} came back without the redelivered flag"
                    remaining.append(msg_id)
                assert len(remaining) == len(set(remaining)), f"duplicates left: {remaining}"
                assert not set(remaining) & set(self.acked), "acked message still queued"
                assert set(remaining) | set(self.acked) == self.published, "message lost"
            finally:
                if self.control.is_open:
                    self.control_ch.queue_purge(queue)
                    self.control.close()

    return QueueInterleavings


def test_random_interleavings_lose_and_duplicate_nothing(broker: Broker, unique: str) -> None:
    """Random client interleavings on one queue keep every message exactly accounted for."""
    queue = f"{unique}-interleave"
    machine = _make_machine(broker.url, queue)
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=25,
                stateful_step_count=50,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        cleanup = connect(broker.url)
        try:
            cleanup.channel().queue_delete(queue)
        finally:
            cleanup.close()
