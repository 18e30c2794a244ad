"""The ready list keeps FIFO order whatever part of it lives on disk only (no sockets)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.message import Entry, Message
from broker.ready import FifoReady

ROUTE = b"\x00\x01q"
HEADER = b"\x00\x3c\x00\x00" + bytes(8) + b"\x00\x00"


def _message(number: int, stored: bool) -> Message:
    message = Message(ROUTE, HEADER, str(number).encode())
    if stored:
        message.msg_id = 1_000_000 + number
        message.refs = 1
    return message


operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.booleans()),  # a message, stored on disk or not yet
        st.tuples(st.just("pop"), st.just(False)),
        st.tuples(st.just("spill"), st.integers(0, 5)),
        st.tuples(st.just("store-all"), st.just(False)),  # the group commit wrote everything
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(operations)
def test_fifo_order_survives_spilling(ops: list[tuple[str, object]]) -> None:
    ready = FifoReady()
    by_id: dict[int, int] = {}

    def load(pairs: list[tuple[int, int]]) -> list[Entry]:
        return [Entry(seq, _message(by_id[msg_id], True)) for seq, msg_id in pairs]

    ready.loader = load
    expected: list[int] = []
    live: list[Entry] = []
    popped: list[int] = []
    counter = 0
    for op, arg in ops:
        if op == "push":
            entry = Entry(counter, _message(counter, bool(arg)))
            if entry.message.msg_id is not None:
                by_id[entry.message.msg_id] = counter
            ready.push(entry)
            live.append(entry)
            expected.append(counter)
            counter += 1
        elif op == "pop" and len(ready):
            popped.append(int(ready.pop().message.body))
        elif op == "spill":
            ready.spill(int(arg))  # type: ignore[arg-type]
        elif op == "store-all":
            for entry in live:
                if entry.message.msg_id is None:
                    entry.message.msg_id = 1_000_000 + entry.seq
                    entry.message.refs = 1
                    by_id[entry.message.msg_id] = entry.seq
        assert len(ready) == len(expected) - len(popped)
    while len(ready):
        popped.append(int(ready.pop().message.body))
    assert popped == expected


def test_spill_moves_stored_entries_even_behind_unstored_newest() -> None:
    """Under a steady stream the newest entries are never written yet; spilling still works."""
    ready = FifoReady()
    ready.loader = lambda pairs: [Entry(seq, _message(seq, True)) for seq, _ in pairs]
    for number in range(100):
        ready.push(Entry(number, _message(number, stored=number < 90)))
    assert ready.spill(keep=10) == 80
    assert ready.in_memory == 20
    assert [int(ready.pop().message.body) for _ in range(100)] == list(range(100))
