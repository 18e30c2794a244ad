"""Method handlers, one module per AMQP class; ``HANDLERS`` maps a method index to its handler.

Connection-class methods and channel.open/close live in ``broker.connection`` because they
drive the connection's own state machine. The per-message methods (basic.publish, ack, nack,
reject) take the fast path in ``broker.channel``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from leveret.broker.handlers import basic, channel, confirm, exchange, queue, tx

Handler = Callable[[Any, Any], None]

HANDLERS: dict[int, Handler] = {}
for _module in (channel, exchange, queue, basic, confirm, tx):
    for _method_class, _handler in _module.HANDLERS.items():
        HANDLERS[_method_class.index] = _handler
