"""Validation of queue.declare arguments, as RabbitMQ validates them."""

from __future__ import annotations

from typing import Any

from protocol import errors


def _type_name(value: Any) -> str:
    """RabbitMQ's name for the AMQP type a Python value was decoded from."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "long"
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


def _non_negative_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{{unacceptable_type,{_type_name(value)}}}"
    if value < 0:
        return f"{{value_negative,{value}}}"
    return None


def _positive_int(value: Any) -> str | None:
    problem = _non_negative_int(value)
    if problem is None and value == 0:
        return f"{{value_zero,{value}}}"
    return problem


def _string(value: Any) -> str | None:
    if not isinstance(value, str | bytes):
        return f"{{unacceptable_type,{_type_name(value)}}}"
    return None


def _boolean(value: Any) -> str | None:
    if not isinstance(value, bool):
        return f"{{unacceptable_type,{_type_name(value)}}}"
    return None


def _priority(value: Any) -> str | None:
    problem = _non_negative_int(value)
    if problem is None and value > 255:
        return f"{{value_too_large,{value},255}}"
    return problem


def _one_of(*choices: str):
    def check(value: Any) -> str | None:
        text = value.decode() if isinstance(value, bytes) else value
        if not isinstance(text, str):
            return f"{{unacceptable_type,{_type_name(value)}}}"
        if text not in choices:
            return f'{{invalid_value,<<"{text}">>}}'
        return None

    return check


QUEUE_ARGUMENTS = {
    "x-message-ttl": _non_negative_int,
    "x-expires": _positive_int,
    "x-max-length": _non_negative_int,
    "x-max-length-bytes": _non_negative_int,
    "x-max-priority": _priority,
    "x-dead-letter-exchange": _string,
    "x-dead-letter-routing-key": _string,
    "x-overflow": _one_of("drop-head", "reject-publish", "reject-publish-dlx"),
    "x-queue-mode": _one_of("default", "lazy"),
    "x-queue-type": _one_of("classic", "quorum"),
    "x-single-active-consumer": _boolean,
    "x-delivery-limit": _non_negative_int,
    "x-consumer-timeout": _non_negative_int,
}

# Arguments compared on redeclare (RabbitMQ's equivalence check).
COMPARED_QUEUE_ARGUMENTS = (
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-overflow",
    "x-queue-type",
    "x-single-active-consumer",
)


def validate_queue_arguments(queue: str, vhost: str, arguments: dict[str, Any]) -> None:
    """Raise 406 PRECONDITION_FAILED for an argument RabbitMQ would refuse."""
    for name, check in QUEUE_ARGUMENTS.items():
        if name in arguments:
            problem = check(arguments[name])
            if problem:
                raise errors.PreconditionFailed(
                    f"invalid arg '{name}' for queue '{queue}' in vhost '{vhost}': {problem}"
                )
    if "x-dead-letter-routing-key" in arguments and "x-dead-letter-exchange" not in arguments:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-dead-letter-routing-key' for queue '{queue}' in vhost '{vhost}': "
            "Key 'x-dead-letter-exchange' is mandatory if 'x-dead-letter-routing-key' is set"
        )


def check_equivalent_arguments(
    queue: str, vhost: str, current: dict[str, Any], received: dict[str, Any]
) -> None:
    """Raise 406 when a redeclare changes an argument RabbitMQ compares."""
    for name in COMPARED_QUEUE_ARGUMENTS:
        old, new = current.get(name), received.get(name)
        if old != new:
            new_text = "none" if new is None else (f"the value '{new}' of type '{_type_name(new)}'")
            old_text = "none" if old is None else (f"the value '{old}' of type '{_type_name(old)}'")
            raise errors.PreconditionFailed(
                f"inequivalent arg '{name}' for queue '{queue}' in vhost '{vhost}': "
                f"received {new_text} but current is {old_text}"
            )
