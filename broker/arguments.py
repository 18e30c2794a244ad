"""Validation and equivalence of declare arguments, with RabbitMQ's reply texts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from leveret.protocol import errors


def type_name(value: Any) -> str:
    """RabbitMQ's name for the AMQP type a client most likely sent ``value`` as."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str | bytes):
        return "longstr"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "void"
    return type(value).__name__


def show(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class WrongType(Exception):
    """An argument of the wrong AMQP type, reported in RabbitMQ's 'invalid type' form."""


Check = Callable[[Any], "str | None"]


def _integer(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f'"expected integer, got {type_name(value)}"'
    return None


def _non_negative(value: Any) -> str | None:
    problem = _integer(value)
    if problem is None and value < 0:
        return f"{{value_negative,{value}}}"
    return problem


def _positive(value: Any) -> str | None:
    problem = _non_negative(value)
    if problem is None and value == 0:
        return "{value_zero,0}"
    return problem


def _priority(value: Any) -> str | None:
    problem = _non_negative(value)
    if problem is None and value > 255:
        return f"{{max_value_exceeded,{value}}}"
    return problem


def _exchange_name(value: Any) -> str | None:
    if not isinstance(value, str | bytes):
        raise WrongType(type_name(value))  # reported in RabbitMQ's "invalid type" form
    return None


def _string(value: Any) -> str | None:
    if not isinstance(value, str | bytes):
        return f"{{unacceptable_type,{type_name(value)}}}"
    return None


def _boolean(value: Any) -> str | None:
    if not isinstance(value, bool):
        return f"{{unacceptable_type,{type_name(value)}}}"
    return None


def _integer_any(value: Any) -> str | None:
    return _integer(value)


def _one_of(*choices: str, problem: str = '{{invalid_value,<<"{text}">>}}') -> Check:
    def check(value: Any) -> str | None:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not isinstance(text, str):
            return f"{{unacceptable_type,{type_name(value)}}}"
        return None if text in choices else problem.format(text=text)

    return check


QUEUE_ARGUMENTS: dict[str, Check] = {
    "x-message-ttl": _non_negative,
    "x-expires": _positive,
    "x-max-length": _non_negative,
    "x-max-length-bytes": _non_negative,
    "x-max-priority": _priority,
    "x-dead-letter-exchange": _exchange_name,
    "x-dead-letter-routing-key": _string,
    "x-overflow": _one_of("drop-head", "reject-publish", "reject-publish-dlx",
                          problem="invalid_overflow"),
    "x-queue-mode": _one_of("default", "lazy", problem="\"unsupported queue mode '{text}'\""),
    "x-queue-type": _one_of("classic", "quorum",
                            problem="\"unsupported queue type '{text}'\""),
    "x-single-active-consumer": _boolean,
    "x-delivery-limit": _integer_any,
    "x-consumer-timeout": _non_negative,
}

# Arguments RabbitMQ compares when a queue is declared again.
COMPARED_QUEUE_ARGUMENTS = (
    "x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes", "x-max-priority",
    "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-overflow", "x-queue-type",
    "x-single-active-consumer",
)


def validate_queue_arguments(queue: str, vhost: str, arguments: dict[str, Any]) -> None:
    """Raise 406 PRECONDITION_FAILED for an argument RabbitMQ would refuse."""
    for name, check in QUEUE_ARGUMENTS.items():
        if name not in arguments:
            continue
        try:
            problem = check(arguments[name])
        except WrongType as wrong:
            raise errors.PreconditionFailed(
                f"invalid type '{wrong}' for arg '{name}' in queue '{queue}' in vhost '{vhost}'"
            ) from None
        if problem:
            raise errors.PreconditionFailed(
                f"invalid arg '{name}' for queue '{queue}' in vhost '{vhost}': {problem}"
            )
    if "x-dead-letter-routing-key" in arguments and "x-dead-letter-exchange" not in arguments:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-dead-letter-routing-key' for queue '{queue}' in vhost '{vhost}': "
            "routing_key_but_no_dlx_defined"
        )


def validate_consumer_priority(queue: str, vhost: str, arguments: dict[str, Any]) -> int:
    """The x-priority of a basic.consume (0 when absent); 406 when it is not an integer."""
    if "x-priority" not in arguments:
        return 0
    value = arguments["x-priority"]
    problem = _integer(value)
    if problem:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-priority' for queue '{queue}' in vhost '{vhost}': {problem}"
        )
    return value


def check_equivalent_arguments(what: str, vhost: str, current: dict[str, Any],
                               received: dict[str, Any],
                               compared: tuple[str, ...] = COMPARED_QUEUE_ARGUMENTS) -> None:
    """Raise 406 when a redeclare changes an argument RabbitMQ compares.

    ``what`` names the object as RabbitMQ does, e.g. ``queue 'q'`` or ``exchange 'x'``.
    """
    for name in compared:
        old, new = current.get(name), received.get(name)
        if old == new:
            continue
        if old is not None and new is not None:
            new_text, old_text = f"'{show(new)}'", f"'{show(old)}'"
        else:
            new_text = "none" if new is None else (
                f"the value '{show(new)}' of type '{type_name(new)}'")
            old_text = "none" if old is None else (
                f"the value '{show(old)}' of type '{type_name(old)}'")
        raise errors.PreconditionFailed(
            f"inequivalent arg '{name}' for {what} in vhost '{vhost}': "
            f"received {new_text} but current is {old_text}"
        )
