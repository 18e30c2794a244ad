"""protocol/header_memo.py: a header whose shape was checked is well formed without a walk,
and the memory never changes a verdict."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.header import ContentHeader
from test_validate import pamqp_headers

from leveret.protocol import header_memo
from leveret.protocol.errors import SyntaxError_
from leveret.protocol.header_memo import HeaderChecker, string_spans
from leveret.protocol.validate import check_content_header


def _verdict(check, payload: bytes) -> bool:  # type: ignore[no-untyped-def]
    try:
        check(payload)
    except SyntaxError_:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(pamqp_headers(), st.data())
def test_the_memory_never_changes_a_verdict(payload: bytes, data: st.DataObject) -> None:
    """After a well-formed header, any header of its length (octets changed anywhere: in
    its strings, its lengths, its flags, its tags) gets the full check's verdict."""
    checker = HeaderChecker()
    checker.check(payload)
    changed = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        changed[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    assert _verdict(checker.check, bytes(changed)) == _verdict(check_content_header,
                                                               bytes(changed))


@settings(max_examples=100, deadline=None)
@given(pamqp_headers(), st.data())
def test_string_contents_are_free_and_the_rest_is_shape(payload: bytes,
                                                        data: st.DataObject) -> None:
    """Whatever the octets inside the spans, the header stays well formed."""
    spans = string_spans(payload)
    changed = bytearray(payload)
    for start, end in spans:
        changed[start:end] = data.draw(st.binary(min_size=end - start, max_size=end - start))
    check_content_header(bytes(changed))


def _task_header(ident: str, body_size: int) -> bytes:
    """amqp-perf's --task-props (kombu's task protocol 2 headers)."""
    return ContentHeader(0, body_size, commands.Basic.Properties(
        content_type="application/json", content_encoding="utf-8", message_id=ident,
        correlation_id=ident, priority=0, delivery_mode=2,
        headers={"lang": "py", "task": "tasks.add", "id": ident, "root_id": ident,
                 "parent_id": None, "retries": 0, "argsrepr": "(2, 2)",
                 "ignore_result": False})).marshal()


def test_task_headers_are_walked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """New ids and body sizes in every header: one full check, then none."""
    walked = []
    monkeypatch.setattr(header_memo, "check_content_header",
                        lambda payload: walked.append(payload) or check_content_header(payload))
    checker = HeaderChecker()
    for number in range(100):
        checker.check(_task_header(f"{number:036d}", 100 + number))
    assert len(walked) == 1
    checker.check(_task_header("x" * 35, 1))  # another length: checked, then remembered
    checker.check(_task_header("y" * 35, 2))
    assert len(walked) == 2
    broken = bytearray(_task_header("z" * 36, 1))
    broken[13] |= 0x04  # a cluster-id flag: a shortstr more than the octets hold
    assert not _verdict(checker.check, bytes(broken))
    assert len(walked) == 3  # a shape not seen: walked, and refused


def test_shapes_that_never_repeat_cost_little(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client whose headers table comes in a new order every time (a Go map): the memory
    is tried less and less often (at most every MEMO_BACKOFF_MAX + 1 headers), and used
    again once shapes repeat."""
    learned = []
    monkeypatch.setattr(header_memo, "string_spans",
                        lambda payload: learned.append(1) or string_spans(payload))

    def shape(number: int, field: str) -> bytes:
        return ContentHeader(0, 1, commands.Basic.Properties(
            message_id=f"{number:08d}", headers={field: None, "task": "t"})).marshal()

    checker = HeaderChecker()
    for number in range(1000):
        checker.check(shape(number, f"k{number:04d}"))  # a new field name each time
    assert len(learned) <= 1000 // (header_memo.MEMO_BACKOFF_MAX + 1) + 8
    walked = []
    monkeypatch.setattr(header_memo, "check_content_header",
                        lambda payload: walked.append(1) or check_content_header(payload))
    for number in range(200):
        checker.check(shape(number, "same"))
    assert len(walked) <= header_memo.MEMO_BACKOFF_MAX + 1
