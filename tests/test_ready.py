"""The ready list keeps FIFO order whatever part of it lives on disk only (no sockets)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from leveret.broker.message import Entry, Message
from leveret.broker.ready import FifoReady, spillable

ROUTE = b"\x00\x01q"
HEADER = b"\x00\x3c\x00\x00" + bytes(8) + b"\x00\x00"


def _entry(seq: int, stored: bool) -> Entry:
    """An entry whose body is its number; a stored one holds a copy with id 1e6 + seq."""
    return Entry(seq, Message(ROUTE, HEADER, str(seq).encode()), False,
                 1_000_000 + seq if stored else None)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.booleans()),  # a message, stored or not
        st.tuples(st.just("pop"), st.just(False)),
        st.tuples(st.just("spill"), st.integers(0, 5)),
        st.tuples(st.just("spill-bytes"), st.integers(0, 8)),
        st.tuples(st.just("write-all"), st.just(False)),  # the writer wrote every record
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(operations)
def test_fifo_order_survives_spilling(ops: list[tuple[str, object]]) -> None:
    ready = FifoReady()
    written: set[int] = set()
    ready.can_spill = lambda entry: spillable(entry) and entry.msg_id in written
    ready.loader = lambda pairs: [_entry(seq, True) for seq, _msg_id in pairs]
    stored: list[int] = []
    expected: list[int] = []
    popped: list[int] = []
    for op, arg in ops:
        if op == "push":
            entry = _entry(len(expected), bool(arg))
            if entry.msg_id is not None:
                stored.append(entry.msg_id)
            ready.push(entry)
            expected.append(entry.seq)
        elif op == "pop" and len(ready):
            popped.append(int(ready.pop().message.body))
        elif op == "spill":
            ready.spill(int(arg), 1 << 30)  # type: ignore[arg-type]
        elif op == "spill-bytes":
            ready.spill(1 << 30, int(arg))  # type: ignore[arg-type]
        elif op == "write-all":
            written.update(stored)
        assert len(ready) == len(expected) - len(popped)
        assert ready.spilled_bytes >= 0
    while len(ready):
        popped.append(int(ready.pop().message.body))
    assert popped == expected
    assert ready.spilled_bytes == 0


def test_spill_moves_stored_entries_even_behind_unwritten_newest() -> None:
    """Under a steady stream the newest records are never written yet; spilling still works."""
    ready = FifoReady()
    ready.can_spill = lambda entry: spillable(entry) and entry.seq < 90  # 90+: not written
    ready.loader = lambda pairs: [_entry(seq, True) for seq, _ in pairs]
    for number in range(100):
        ready.push(_entry(number, stored=True))
    assert ready.spill(10, 1 << 30) == 80
    assert ready.in_memory == 20
    assert [int(ready.pop().message.body) for _ in range(100)] == list(range(100))


def test_spill_keeps_a_head_bounded_by_bytes() -> None:
    ready = FifoReady()
    ready.loader = lambda pairs: [_entry(seq, True) for seq, _ in pairs]
    for number in range(100):
        ready.push(_entry(number, stored=True))
    assert ready.spill(50, 5) == 95  # bodies "0".."4" make the 5 bytes kept in memory
    assert ready.in_memory == 5
