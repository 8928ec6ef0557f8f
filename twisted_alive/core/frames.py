"""
Sans-IO codec for the twisted_alive wire protocol, version 2.

A connection carries a sequence of frames::

    frame  = length:u32 | kind:u8 | body
    length = 1 + len(body)

All integers are unsigned big-endian.  This module turns frame objects
into bytes (:func:`encode`, :func:`encodeData`, :func:`encodeAck`) and bytes,
in any chunking, into frame objects (:class:`FrameDecoder`).  It performs no
I/O, reads no clock and imports nothing from Twisted.  The full wire format
is described in ``docs/protocol.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import IntEnum
from struct import Struct
from typing import Any, NamedTuple

__all__ = [
    "DATA_OVERHEAD",
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "HELLO_ASSIGNED",
    "HELLO_KNOWN_FLAGS",
    "HELLO_RESUMED",
    "HELLO_SIZE",
    "MIN_MAX_FRAME_SIZE",
    "NO_SESSION",
    "PROTOCOL_VERSION",
    "Ack",
    "Data",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "Goodbye",
    "GoodbyeCode",
    "Hello",
    "Kind",
    "Ping",
    "Pong",
    "Reject",
    "VersionError",
    "encode",
    "encodeAck",
    "encodeData",
    "encodeDataHeader",
    "encodePing",
    "encodePong",
]

PROTOCOL_VERSION = 2
"""The protocol version this codec speaks (the first byte of a HELLO body)."""

NO_SESSION = bytes(16)
"""The all-zero session token: "start a new session" / "no session store"."""

HELLO_RESUMED = 0x01
"""HELLO flag bit: the server resumed the session the client asked for."""

HELLO_ASSIGNED = 0x02
"""HELLO flag bit: this HELLO is a server's answer, and its session field is
the token the server assigned (new or resumed), not a request to resume."""

HELLO_KNOWN_FLAGS = HELLO_RESUMED | HELLO_ASSIGNED
"""The flag bits version 2 defines; the others are sent as 0 and ignored."""

DEFAULT_MAX_FRAME_SIZE = 1_048_576
"""Default largest frame ``length`` a :class:`FrameDecoder` accepts."""

MIN_MAX_FRAME_SIZE = 64
"""Smallest allowed ``maxFrameSize`` setting (a HELLO frame has length 47)."""

HEADER_SIZE = 5
"""Bytes before a frame's body: the 4-byte length and the kind byte."""

DATA_OVERHEAD = 13
"""Bytes a DATA frame adds around its payload: the header and the sequence number."""

_SESSION_SIZE = 16
_HELLO_BODY_SIZE = 46

HELLO_SIZE = 4 + 1 + _HELLO_BODY_SIZE
"""Bytes a HELLO frame takes on the wire."""

_MAX_U8 = 0xFF
_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFF_FFFF
_MAX_U64 = 0xFFFF_FFFF_FFFF_FFFF


class Kind(IntEnum):
    """
    The kind byte of a frame.
    """

    HELLO = 0x01
    DATA = 0x02
    ACK = 0x03
    PING = 0x04
    PONG = 0x05
    GOODBYE = 0x06
    REJECT = 0x07


class GoodbyeCode(IntEnum):
    """
    Why a side sends GOODBYE.
    """

    NORMAL = 0
    """The application closed the connection."""
    SHUTTING_DOWN = 1
    """The process is shutting down."""
    GO_AWAY = 2
    """Do not reconnect."""
    PROTOCOL_ERROR = 3
    """The peer broke the wire protocol; the reason says how."""
    SESSION_UNKNOWN = 4
    """The session token is unknown or expired."""


class Hello(NamedTuple):
    """
    HELLO: the first frame each side sends.

    :param version: protocol version, :data:`PROTOCOL_VERSION`.
    :param flags: flag bits: :data:`HELLO_RESUMED`, :data:`HELLO_ASSIGNED`.
    :param interval: the sender's heartbeat interval in seconds (whole
        milliseconds on the wire; the encoder rounds to the nearest one).
    :param maxFrameSize: the largest frame ``length`` the sender accepts.
    :param window: how many unacknowledged DATA frames the sender accepts.
    :param nextExpected: the next DATA sequence number the sender needs.
    :param session: the 16-byte session token, or :data:`NO_SESSION`.
    :param nonce: 64 random bits the sender draws for this connection: a
        side that receives its own nonce back is talking to a reflection of
        itself (an echo server, a connection to itself), not to a peer.
    """

    version: int
    flags: int
    interval: float
    maxFrameSize: int
    window: int
    nextExpected: int
    session: bytes
    nonce: int = 0


class Data(NamedTuple):
    """
    DATA: one application message.

    :param seq: sequence number, from 1, increasing by 1 per session.
    :param payload: the message bytes (may be empty).
    """

    seq: int
    payload: bytes


class Ack(NamedTuple):
    """
    ACK: every DATA with a sequence number up to ``seq`` was processed.

    :param seq: the highest processed sequence number (0: none yet).
    """

    seq: int


class Ping(NamedTuple):
    """
    PING: asks the peer for a PONG with the same id.

    :param id: an opaque 64-bit identifier.
    """

    id: int


class Pong(NamedTuple):
    """
    PONG: the answer to a PING.

    :param id: the id of the PING being answered.
    """

    id: int


class Goodbye(NamedTuple):
    """
    GOODBYE: the sender is closing the connection in an orderly way.

    :param code: why, a :class:`GoodbyeCode`.
    :param reason: human-readable text (may be empty).
    """

    code: GoodbyeCode
    reason: str


class Reject(NamedTuple):
    """
    REJECT: the application failed on DATA ``seq``; it counts as processed.

    :param seq: the sequence number of the rejected DATA.
    :param reason: human-readable text (may be empty).
    """

    seq: int
    reason: str


Frame = Hello | Data | Ack | Ping | Pong | Goodbye | Reject
"""Any frame object."""


class FrameError(ValueError):
    """
    The bytes received do not follow the wire protocol.

    :ivar frames: the frames completed before the bad one in the
        :meth:`FrameDecoder.feed` call that raised; the caller should act on them
        before handling the error.
    """

    frames: list[Frame]

    def __init__(self, message: str, frames: list[Frame] | None = None) -> None:
        """
        :param message: what is wrong, as an English sentence fragment.
        :param frames: frames decoded before the error in the same call.
        """
        super().__init__(message)
        self.frames = [] if frames is None else frames


class VersionError(FrameError):
    """
    The peer's HELLO announces a protocol version this side does not speak.
    """


# --- structs ---------------------------------------------------------------

_LENGTH = Struct(">I")
_HEADER = Struct(">IB")
_U64 = Struct(">Q")
_U16 = Struct(">H")
_HEADER_U64 = Struct(">IBQ")
_HEADER_U16 = Struct(">IBH")
_HELLO_FIELDS = Struct(">BBIIIQ16sQ")
_HELLO_FRAME = Struct(">IBBBIIIQ16sQ")

_unpackLength = _LENGTH.unpack_from
_unpackHeader = _HEADER.unpack_from
_unpackU64 = _U64.unpack_from
_unpackHeaderU64 = _HEADER_U64.unpack_from
_packHeaderU64 = _HEADER_U64.pack
_tupleNew = tuple.__new__


# --- encoding --------------------------------------------------------------


def _checkRange(what: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"{what} {value} is outside the range 0..{maximum}")


def _checkLength(what: str, length: int) -> None:
    if length > _MAX_U32:
        raise ValueError(
            f"{what} frame of {length} bytes exceeds the largest encodable "
            f"length of {_MAX_U32} bytes"
        )


def _encodeText(what: str, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} reason cannot be encoded as UTF-8") from None


def encodeData(seq: int, payload: bytes) -> bytes:
    """
    Encode a DATA frame without building a :class:`Data` object.

    :param seq: the sequence number, 0..2**64-1.
    :param payload: the message bytes.
    :returns: the encoded frame.
    :raises ValueError: if ``seq`` does not fit 64 bits or the frame is
        longer than a 32-bit length can say.
    """
    length = len(payload) + 9
    if not 0 <= seq <= _MAX_U64:
        _checkRange("DATA sequence number", seq, _MAX_U64)
    if length > _MAX_U32:
        _checkLength("DATA", length)
    return _packHeaderU64(length, 2, seq) + payload


def encodeDataHeader(seq: int, size: int) -> bytes:
    """
    The 13 bytes that go before a DATA frame's payload, for a sender that
    writes the payload separately (saving a copy of it). Unlike
    `encodeData`, it checks nothing: ``seq`` must fit 64 bits and ``size``
    must be at most ``2**32 - 10``.

    :param seq: the sequence number.
    :param size: the payload's length.
    :returns: the frame header and sequence number.
    """
    return _packHeaderU64(size + 9, 2, seq)


def encodeAck(seq: int) -> bytes:
    """
    Encode an ACK frame without building an :class:`Ack` object.

    :param seq: the highest processed sequence number, 0..2**64-1.
    :returns: the encoded frame.
    :raises ValueError: if ``seq`` does not fit 64 bits.
    """
    _checkRange("ACK sequence number", seq, _MAX_U64)
    return _packHeaderU64(9, 3, seq)


def encodePing(id: int) -> bytes:
    """
    Encode a PING frame without building a :class:`Ping` object.

    :param id: the PING's id, 0..2**64-1.
    :returns: the encoded frame.
    :raises ValueError: if ``id`` does not fit 64 bits.
    """
    return _encodeId("PING", 4, id)


def encodePong(id: int) -> bytes:
    """
    Encode a PONG frame without building a :class:`Pong` object.

    :param id: the id of the PING answered, 0..2**64-1.
    :returns: the encoded frame.
    :raises ValueError: if ``id`` does not fit 64 bits.
    """
    return _encodeId("PONG", 5, id)


def _encodeId(name: str, type: int, id: int) -> bytes:
    """A PING (type 4) or PONG (type 5) frame: an 8-byte id."""
    if not 0 <= id <= _MAX_U64:
        _checkRange(f"{name} id", id, _MAX_U64)
    return _packHeaderU64(9, type, id)


def _encodeHello(frame: Hello) -> bytes:
    version, flags, interval, maxFrameSize, window, nextExpected, session, nonce = frame
    _checkRange("HELLO version", version, _MAX_U8)
    _checkRange("HELLO flags", flags, _MAX_U8)
    if not math.isfinite(interval):
        raise ValueError(f"HELLO interval {interval} s is not a finite number")
    intervalMs = round(interval * 1000)
    if not 0 <= intervalMs <= _MAX_U32:
        raise ValueError(f"HELLO interval {interval} s is outside the range 0..{_MAX_U32 / 1000} s")
    _checkRange("HELLO maxFrameSize", maxFrameSize, _MAX_U32)
    _checkRange("HELLO window", window, _MAX_U32)
    _checkRange("HELLO nextExpected", nextExpected, _MAX_U64)
    if not isinstance(session, bytes) or len(session) != _SESSION_SIZE:
        raise ValueError(f"HELLO session must be {_SESSION_SIZE} bytes, got {session!r}")
    _checkRange("HELLO nonce", nonce, _MAX_U64)
    return _HELLO_FRAME.pack(
        1 + _HELLO_BODY_SIZE,
        Kind.HELLO,
        version,
        flags,
        intervalMs,
        maxFrameSize,
        window,
        nextExpected,
        session,
        nonce,
    )


def _encodeData(frame: Data) -> bytes:
    return encodeData(frame[0], frame[1])


def _encodeAck(frame: Ack) -> bytes:
    return encodeAck(frame[0])


def _encodePing(frame: Ping) -> bytes:
    return encodePing(frame[0])


def _encodePong(frame: Pong) -> bytes:
    return encodePong(frame[0])


def _encodeGoodbye(frame: Goodbye) -> bytes:
    code, reason = frame
    _checkRange("GOODBYE code", code, _MAX_U16)
    length, text = _withText("GOODBYE", 3, reason)
    return _HEADER_U16.pack(length, Kind.GOODBYE, code) + text


def _encodeReject(frame: Reject) -> bytes:
    seq, reason = frame
    _checkRange("REJECT sequence number", seq, _MAX_U64)
    length, text = _withText("REJECT", 9, reason)
    return _packHeaderU64(length, Kind.REJECT, seq) + text


def _withText(name: str, fixed: int, reason: str) -> tuple[int, bytes]:
    """The length of a GOODBYE or REJECT frame whose fields before the
    text take ``fixed`` bytes (the type byte included), and the text."""
    text = _encodeText(name, reason)
    length = fixed + len(text)
    _checkLength(name, length)
    return length, text


def encode(frame: Frame) -> bytes:
    """
    Encode any frame.

    The encoder checks that every field fits its place on the wire; it does
    not apply the decoder's protocol checks, so it can also produce frames a
    peer will refuse (a DATA with sequence number 0, an unknown GOODBYE code,
    another protocol version), which is useful to test a peer.  A :class:`Hello`'s
    ``interval`` is sent rounded to the nearest millisecond.

    :param frame: the frame to encode.
    :returns: the encoded frame, header included.
    :raises ValueError: if a field cannot be encoded (an integer outside its
        range, a session token that is not 16 bytes, a reason that is not
        encodable as UTF-8, a frame longer than a 32-bit length can say).
    :raises TypeError: if ``frame`` is not a frame object.
    """
    try:
        encoder = _ENCODERS[type(frame)]
    except KeyError:
        raise TypeError(f"cannot encode {type(frame).__name__}: not a frame") from None
    return encoder(frame)


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    Hello: _encodeHello,
    Data: _encodeData,
    Ack: _encodeAck,
    Ping: _encodePing,
    Pong: _encodePong,
    Goodbye: _encodeGoodbye,
    Reject: _encodeReject,
}


# --- decoding --------------------------------------------------------------


def _decodeHello(body: bytes) -> Hello:
    if body and body[0] != PROTOCOL_VERSION:
        raise VersionError(
            f"unsupported protocol version {body[0]} (this side speaks {PROTOCOL_VERSION})"
        )
    if len(body) != _HELLO_BODY_SIZE:
        raise FrameError(f"HELLO body is {len(body)} bytes, expected {_HELLO_BODY_SIZE}")
    fields = _HELLO_FIELDS.unpack_from(body)
    version, flags, intervalMs, maxFrameSize, window, nextExpected, session, nonce = fields
    if not nextExpected:
        raise FrameError("HELLO next_expected 0 is invalid (sequence numbers start at 1)")
    return Hello(
        version,
        flags,
        intervalMs / 1000,
        maxFrameSize,
        window,
        nextExpected,
        session,
        nonce,
    )


def _decodeU64(name: str, body: bytes) -> int:
    if len(body) != 8:
        raise FrameError(f"{name} body is {len(body)} bytes, expected 8")
    value: int = _unpackU64(body)[0]
    return value


def _decodeAck(body: bytes) -> Ack:
    return Ack(_decodeU64("ACK", body))


def _decodePing(body: bytes) -> Ping:
    return Ping(_decodeU64("PING", body))


def _decodePong(body: bytes) -> Pong:
    return Pong(_decodeU64("PONG", body))


def _decodeSeq(name: str, body: bytes) -> int:
    if len(body) < 8:
        raise FrameError(f"{name} body is {len(body)} bytes, expected at least 8")
    seq: int = _unpackU64(body)[0]
    if not seq:
        raise FrameError(f"{name} sequence number 0 is invalid (sequence numbers start at 1)")
    return seq


def _decodeText(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(f"{name} reason is not valid UTF-8") from None


def _decodeData(body: bytes) -> Data:
    return Data(_decodeSeq("DATA", body), body[8:])


def _decodeGoodbye(body: bytes) -> Goodbye:
    if len(body) < 2:
        raise FrameError(f"GOODBYE body is {len(body)} bytes, expected at least 2")
    (rawCode,) = _U16.unpack_from(body)
    try:
        code = GoodbyeCode(rawCode)
    except ValueError:
        raise FrameError(f"unknown GOODBYE code {rawCode}") from None
    return Goodbye(code, _decodeText("GOODBYE", body[2:]))


def _decodeReject(body: bytes) -> Reject:
    seq = _decodeSeq("REJECT", body)
    return Reject(seq, _decodeText("REJECT", body[8:]))


_DECODERS: dict[int, Callable[[bytes], Frame]] = {
    Kind.HELLO: _decodeHello,
    Kind.DATA: _decodeData,
    Kind.ACK: _decodeAck,
    Kind.PING: _decodePing,
    Kind.PONG: _decodePong,
    Kind.GOODBYE: _decodeGoodbye,
    Kind.REJECT: _decodeReject,
}


_U64_FRAMES: dict[int, type] = {Kind.ACK: Ack, Kind.PING: Ping, Kind.PONG: Pong}

_NO_CHUNKS: list[bytes] = []


class FrameDecoder:
    """
    Incremental decoder: bytes in, in any chunking; frames out.

    A frame whose declared length exceeds ``maxFrameSize`` is refused as soon
    as its 4 length bytes arrive, and a frame of unknown kind as soon as its
    kind byte arrives, so the decoder never holds more than one frame (at
    most ``maxFrameSize + 4`` bytes).  After the first error the decoder is
    failed: every later :meth:`feed` raises a :class:`FrameError` with the
    same message.
    """

    __slots__ = ("maxFrameSize", "_chunks", "_size", "_needed", "_error")

    def __init__(self, maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        """
        :param maxFrameSize: the largest frame ``length`` accepted,
            :data:`MIN_MAX_FRAME_SIZE`..2**32-1.
        :raises ValueError: if ``maxFrameSize`` is outside that range.
        """
        if not MIN_MAX_FRAME_SIZE <= maxFrameSize <= _MAX_U32:
            raise ValueError(
                f"maxFrameSize {maxFrameSize} is outside the range {MIN_MAX_FRAME_SIZE}..{_MAX_U32}"
            )
        self.maxFrameSize = maxFrameSize
        # Bytes held back, as a list of chunks joined on demand, so that a
        # large frame arriving in many pieces is copied once, not per piece.
        # Nothing held: the shared empty list, never appended to (see feed).
        self._chunks: list[bytes] = _NO_CHUNKS
        self._size = 0
        # Bytes needed before decoding is worth trying again: the whole size
        # of the partial frame once its header is known, else 0.
        self._needed = 0
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """
        The number of bytes held: the start of an incomplete frame.
        """
        return self._size

    @property
    def failed(self) -> bool:
        """
        Whether the decoder has met an error and refuses further input.
        """
        return self._error is not None

    def feed(self, data: bytes) -> list[Frame]:
        """
        Decode as many frames as ``data`` completes.

        :param data: the next bytes received, of any length.
        :returns: every frame completed, in order; the start of an
            incomplete frame is kept for the next call.
        :raises FrameError: on the first protocol violation, with ``.frames``
            holding the frames completed before it in this call; and on
            every later call, with the same message and no frames.
        """
        if self._error is not None:
            raise type(self._error)(str(self._error))
        if type(data) is not bytes:
            data = bytes(data)
        if self._size:
            size = self._size + len(data)
            self._chunks.append(data)
            if size < self._needed:
                self._size = size
                return []
            buf = b"".join(self._chunks)
        else:
            buf = data

        frames: list[Frame] = []
        append = frames.append
        maxFrameSize = self.maxFrameSize
        end = len(buf)
        offset = 0
        try:
            while True:
                available = end - offset
                if available >= 13:
                    # Room for a DATA header and sequence number: read them
                    # in one call, which is all a DATA frame needs.
                    length, kind, seq = _unpackHeaderU64(buf, offset)
                    frameEnd = offset + 4 + length
                    if kind == 2 and 9 <= length <= maxFrameSize:
                        if frameEnd > end:
                            break
                        if not seq:
                            raise FrameError(
                                "DATA sequence number 0 is invalid (sequence numbers start at 1)"
                            )
                        append(_tupleNew(Data, (seq, buf[offset + 13 : frameEnd])))
                        offset = frameEnd
                        continue
                    if length == 9 and 3 <= kind <= 5:
                        # ACK, PING, PONG: all of the frame is read already.
                        append(_tupleNew(_U64_FRAMES[kind], (seq,)))
                        offset = frameEnd
                        continue
                elif available >= 5:
                    length, kind = _unpackHeader(buf, offset)
                    frameEnd = offset + 4 + length
                else:
                    if available == 4:
                        self._checkLength(_unpackLength(buf, offset)[0])
                    break
                self._checkLength(length)
                decoder = _DECODERS.get(kind)
                if decoder is None:
                    raise FrameError(f"unknown frame kind 0x{kind:02x}")
                if frameEnd > end:
                    break
                append(decoder(buf[offset + 5 : frameEnd]))
                offset = frameEnd
        except FrameError as error:
            error.frames = frames
            self._error = error
            self._chunks = _NO_CHUNKS
            self._size = self._needed = 0
            raise

        if offset == end:
            if self._size:
                self._chunks = _NO_CHUNKS
                self._size = self._needed = 0
            return frames
        rest = buf[offset:] if offset else buf
        self._chunks = [rest]
        self._size = len(rest)
        self._needed = 4 + _unpackLength(rest)[0] if len(rest) >= 5 else 0
        return frames

    def _checkLength(self, length: int) -> None:
        if length > self.maxFrameSize:
            raise FrameError(
                f"frame of {length} bytes exceeds the maximum of {self.maxFrameSize} bytes"
            )
        if not length:
            raise FrameError("frame length 0: a frame holds at least its kind byte")
