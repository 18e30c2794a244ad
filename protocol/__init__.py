"""AMQP 0-9-1 wire format, sans I/O: framing, codecs, constants and the error model.

Nothing here knows about sockets, asyncio or broker state: bytes go in, frames and
decoded methods come out, and encoders turn values back into bytes.
"""
