"""The one error model: an AMQPError carries what goes into channel.close or connection.close.

Raise ``ChannelError`` or ``ConnectionError`` subclasses (named after the reply codes) with a
detail text; the reply text is then written as RabbitMQ writes it, ``"NOT_FOUND - detail"``.
"""

from __future__ import annotations

from leveret.protocol import constants as c


class AMQPError(Exception):
    """A protocol-level error with an AMQP reply code."""

    reply_code: int = c.INTERNAL_ERROR
    closes_connection: bool = True

    def __init__(self, detail: str = "", class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(detail)
        self.detail = detail
        self.class_id = class_id
        self.method_id = method_id

    @property
    def reply_name(self) -> str:
        return c.REPLY_NAMES.get(self.reply_code, "UNKNOWN")

    @property
    def reply_text(self) -> str:
        text = f"{self.reply_name} - {self.detail}" if self.detail else self.reply_name
        # Names that were not UTF-8 on the wire are carried as surrogate escapes and go
        # back out as the bytes they were (protocol.methods.shortstr).
        encoded = text.encode("utf-8", "surrogateescape")
        if len(encoded) > 255:  # a shortstr: cut as RabbitMQ does, octets (not characters)
            text = (encoded[:252] + b"...").decode("utf-8", "surrogateescape")
        return text

    def with_method(self, class_id: int, method_id: int) -> AMQPError:
        """Attach the offending method's ids unless already set."""
        if not self.class_id:
            self.class_id, self.method_id = class_id, method_id
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.reply_code} {self.reply_text!r}>"


class ChannelError(AMQPError):
    """An error that closes the channel (soft error)."""

    closes_connection = False


class ConnectionError_(AMQPError):
    """An error that closes the whole connection (hard error)."""

    closes_connection = True


class ContentTooLarge(ChannelError):
    """CONTENT_TOO_LARGE — closes the channel."""

    reply_code = c.CONTENT_TOO_LARGE


class NoRoute(ChannelError):
    """NO_ROUTE — closes the channel."""

    reply_code = c.NO_ROUTE


class NoConsumers(ChannelError):
    """NO_CONSUMERS — closes the channel."""

    reply_code = c.NO_CONSUMERS


class AccessRefused(ChannelError):
    """ACCESS_REFUSED — closes the channel."""

    reply_code = c.ACCESS_REFUSED


class NotFound(ChannelError):
    """NOT_FOUND — closes the channel."""

    reply_code = c.NOT_FOUND


class ResourceLocked(ChannelError):
    """RESOURCE_LOCKED — closes the channel."""

    reply_code = c.RESOURCE_LOCKED


class PreconditionFailed(ChannelError):
    """PRECONDITION_FAILED — closes the channel."""

    reply_code = c.PRECONDITION_FAILED


class ConnectionForced(ConnectionError_):
    """CONNECTION_FORCED — closes the connection."""

    reply_code = c.CONNECTION_FORCED


class InvalidPath(ConnectionError_):
    """INVALID_PATH — closes the connection."""

    reply_code = c.INVALID_PATH


class ConnectionAccessRefused(ConnectionError_):
    """ACCESS_REFUSED — closes the connection."""

    reply_code = c.ACCESS_REFUSED


class FrameError(ConnectionError_):
    """FRAME_ERROR — closes the connection."""

    reply_code = c.FRAME_ERROR


class SyntaxError_(ConnectionError_):
    """SYNTAX_ERROR — closes the connection."""

    reply_code = c.SYNTAX_ERROR


class CommandInvalid(ConnectionError_):
    """COMMAND_INVALID — closes the connection."""

    reply_code = c.COMMAND_INVALID


class ChannelErrorHard(ConnectionError_):
    """CHANNEL_ERROR — closes the connection."""

    reply_code = c.CHANNEL_ERROR


class UnexpectedFrame(ConnectionError_):
    """UNEXPECTED_FRAME — closes the connection."""

    reply_code = c.UNEXPECTED_FRAME


class ResourceError(ConnectionError_):
    """RESOURCE_ERROR — closes the connection."""

    reply_code = c.RESOURCE_ERROR


class NotAllowed(ConnectionError_):
    """NOT_ALLOWED — closes the connection."""

    reply_code = c.NOT_ALLOWED


class NotImplemented_(ConnectionError_):
    """NOT_IMPLEMENTED — closes the connection."""

    reply_code = c.NOT_IMPLEMENTED


class InternalError(ConnectionError_):
    """INTERNAL_ERROR — closes the connection."""

    reply_code = c.INTERNAL_ERROR
