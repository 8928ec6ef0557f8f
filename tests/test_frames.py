"""
Tests for the sans-IO frame codec, ``twisted_alive.core.frames``.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_alive.core.frames import (
    DATA_OVERHEAD,
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    HELLO_RESUMED,
    MIN_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    Ack,
    Data,
    Frame,
    FrameDecoder,
    FrameError,
    Goodbye,
    GoodbyeCode,
    Hello,
    Kind,
    Ping,
    Pong,
    Reject,
    VersionError,
    encode,
    encodeAck,
    encodeData,
)

MAX_U64 = 2**64 - 1
MAX_U32 = 2**32 - 1
TOKEN = bytes(range(0xA0, 0xB0))


def raw(kind: int, body: bytes, length: int | None = None) -> bytes:
    """
    Build a frame by hand, bypassing the encoder.
    """
    if length is None:
        length = 1 + len(body)
    return struct.pack(">IB", length, kind) + body


def helloBody(
    version: int = 2,
    flags: int = 0,
    intervalMs: int = 5000,
    maxFrame: int = 65536,
    window: int = 32,
    nextExpected: int = 1,
    session: bytes = NO_SESSION,
    nonce: int = 0,
) -> bytes:
    """
    Build a HELLO body by hand.
    """
    return (
        struct.pack(">BBIIIQ", version, flags, intervalMs, maxFrame, window, nextExpected)
        + session
        + struct.pack(">Q", nonce)
    )


def decodeAll(data: bytes, maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE) -> list[Frame]:
    """
    Decode ``data`` in one call and check nothing is left over.
    """
    decoder = FrameDecoder(maxFrameSize)
    frames = decoder.feed(data)
    assert decoder.buffered == 0
    return frames


def errorOf(data: bytes, maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE) -> FrameError:
    """
    Feed ``data`` in one call and return the :class:`FrameError` it raises.
    """
    decoder = FrameDecoder(maxFrameSize)
    with pytest.raises(FrameError) as info:
        decoder.feed(data)
    return info.value


# --- round trips ----------------------------------------------------------

EXAMPLES: list[Frame] = [
    Hello(2, 0, 5.0, 1_048_576, 64, 1, NO_SESSION, 1),
    Hello(2, HELLO_RESUMED, 0.25, 65536, 1, 43, TOKEN),
    Hello(2, 0, 0.0, 0, 0, MAX_U64, b"\xff" * 16),
    Hello(2, 0xFF, MAX_U32 / 1000, MAX_U32, MAX_U32, 1, TOKEN, MAX_U64),
    Data(1, b""),
    Data(7, b"hello"),
    Data(MAX_U64, bytes(range(256))),
    Ack(0),
    Ack(42),
    Ack(MAX_U64),
    Ping(0),
    Ping(MAX_U64),
    Pong(123456789),
    Goodbye(GoodbyeCode.NORMAL, ""),
    Goodbye(GoodbyeCode.SHUTTING_DOWN, "restarting"),
    Goodbye(GoodbyeCode.GO_AWAY, "moved"),
    Goodbye(GoodbyeCode.PROTOCOL_ERROR, "expected HELLO first, got DATA"),
    Goodbye(GoodbyeCode.SESSION_UNKNOWN, "ünïcödé ✓"),
    Reject(1, ""),
    Reject(99, "handler failed: KeyError('x')"),
]


@pytest.mark.parametrize("frame", EXAMPLES, ids=repr)
def test_roundTrip(frame: Frame) -> None:
    """Every kind of frame decodes back to an equal frame."""
    encoded = encode(frame)
    assert decodeAll(encoded) == [frame]


@pytest.mark.parametrize(
    "frame,kind,length",
    [
        (EXAMPLES[0], Kind.HELLO, 47),
        (Data(1, b"abc"), Kind.DATA, 12),
        (Ack(1), Kind.ACK, 9),
        (Ping(1), Kind.PING, 9),
        (Pong(1), Kind.PONG, 9),
        (Goodbye(GoodbyeCode.NORMAL, "ab"), Kind.GOODBYE, 5),
        (Reject(1, "ab"), Kind.REJECT, 11),
    ],
)
def test_header(frame: Frame, kind: Kind, length: int) -> None:
    """The encoder writes the length (kind byte + body) and the kind byte."""
    encoded = encode(frame)
    assert struct.unpack_from(">IB", encoded) == (length, kind)
    assert len(encoded) == 4 + length


def test_decodedTypes() -> None:
    """Decoded GOODBYE codes are GoodbyeCode members and payloads are bytes."""
    [goodbye, data] = decodeAll(encode(Goodbye(GoodbyeCode.GO_AWAY, "x")) + encode(Data(1, b"p")))
    assert isinstance(goodbye, Goodbye)
    assert type(goodbye.code) is GoodbyeCode
    assert isinstance(data, Data)
    assert type(data.payload) is bytes


def test_constants() -> None:
    """The module constants match the wire spec."""
    assert PROTOCOL_VERSION == 2
    assert NO_SESSION == b"\x00" * 16
    assert HELLO_RESUMED == 1
    assert DEFAULT_MAX_FRAME_SIZE == 1_048_576
    assert MIN_MAX_FRAME_SIZE == 64
    assert HEADER_SIZE == 5
    assert DATA_OVERHEAD == len(encodeData(1, b""))
    assert [int(k) for k in Kind] == [1, 2, 3, 4, 5, 6, 7]
    assert [int(c) for c in GoodbyeCode] == [0, 1, 2, 3, 4]


def test_encodeFastPaths() -> None:
    """encodeData and encodeAck give the same bytes as encode."""
    assert encodeData(5, b"xyz") == encode(Data(5, b"xyz"))
    assert encodeAck(5) == encode(Ack(5))
    assert encodeData(1, b"") == bytes.fromhex("00000009 02 0000000000000001")


def test_helloLayout() -> None:
    """The HELLO body is laid out field by field as the spec says."""
    frame = Hello(
        2, HELLO_RESUMED, 1.5, 0x01020304, 0x0A0B0C0D, 0x1122334455667788, TOKEN, 0x99AABBCCDDEEFF00
    )
    assert encode(frame) == raw(
        1,
        helloBody(
            2, 1, 1500, 0x01020304, 0x0A0B0C0D, 0x1122334455667788, TOKEN, 0x99AABBCCDDEEFF00
        ),
    )


@pytest.mark.parametrize(
    "interval,milliseconds",
    [(0.0004, 0), (0.0006, 1), (1.0, 1000), (2.5004, 2500), (2.5006, 2501), (3600.0, 3_600_000)],
)
def test_helloIntervalRounding(interval: float, milliseconds: int) -> None:
    """HELLO interval is sent rounded to the nearest millisecond."""
    encoded = encode(Hello(2, 0, interval, 64, 1, 1, NO_SESSION))
    assert struct.unpack_from(">I", encoded, 7)[0] == milliseconds
    [hello] = decodeAll(encoded)
    assert isinstance(hello, Hello)
    assert hello.interval == milliseconds / 1000


def test_helloUnknownFlagsIgnored() -> None:
    """Unknown HELLO flag bits are not an error; the flags byte is passed on."""
    [hello] = decodeAll(raw(1, helloBody(flags=0xFE)))
    assert isinstance(hello, Hello)
    assert hello.flags == 0xFE
    assert not hello.flags & HELLO_RESUMED


@pytest.mark.parametrize(
    "frame",
    [
        Data(0, b""),
        Reject(0, ""),
        Hello(2, 0, 1.0, 64, 1, 0, NO_SESSION),
        Hello(1, 0, 1.0, 64, 1, 1, NO_SESSION),
        Goodbye(99, ""),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_encodeProtocolViolations(frame: Frame) -> None:
    """The encoder only checks what fits on the wire, so tests can send bad frames."""
    with pytest.raises(FrameError):
        FrameDecoder().feed(encode(frame))


@pytest.mark.parametrize(
    "frame,message",
    [
        (Data(-1, b""), "DATA sequence number -1 is outside the range 0..18446744073709551615"),
        (Data(2**64, b""), f"DATA sequence number {2**64} is outside the range 0..{MAX_U64}"),
        (Ack(-1), f"ACK sequence number -1 is outside the range 0..{MAX_U64}"),
        (Ping(2**64), f"PING id {2**64} is outside the range 0..{MAX_U64}"),
        (Pong(-1), f"PONG id -1 is outside the range 0..{MAX_U64}"),
        (Reject(-1, ""), f"REJECT sequence number -1 is outside the range 0..{MAX_U64}"),
        (Goodbye(2**16, ""), "GOODBYE code 65536 is outside the range 0..65535"),  # type: ignore[arg-type]
        (Goodbye(GoodbyeCode.NORMAL, "\udc80"), "GOODBYE reason cannot be encoded as UTF-8"),
        (Reject(1, "\udc80"), "REJECT reason cannot be encoded as UTF-8"),
        (Hello(256, 0, 1.0, 64, 1, 1, NO_SESSION), "HELLO version 256 is outside the range 0..255"),
        (Hello(1, -1, 1.0, 64, 1, 1, NO_SESSION), "HELLO flags -1 is outside the range 0..255"),
        (
            Hello(1, 0, 1.0, 2**32, 1, 1, NO_SESSION),
            f"HELLO maxFrameSize {2**32} is outside the range 0..{MAX_U32}",
        ),
        (
            Hello(1, 0, 1.0, 64, -1, 1, NO_SESSION),
            f"HELLO window -1 is outside the range 0..{MAX_U32}",
        ),
        (
            Hello(1, 0, 1.0, 64, 1, 2**64, NO_SESSION),
            f"HELLO nextExpected {2**64} is outside the range 0..{MAX_U64}",
        ),
        (
            Hello(1, 0, -0.001, 64, 1, 1, NO_SESSION),
            "HELLO interval -0.001 s is outside the range 0..4294967.295 s",
        ),
        (
            Hello(1, 0, 4294967.2956, 64, 1, 1, NO_SESSION),
            "HELLO interval 4294967.2956 s is outside the range 0..4294967.295 s",
        ),
        (
            Hello(1, 0, float("nan"), 64, 1, 1, NO_SESSION),
            "HELLO interval nan s is not a finite number",
        ),
        (
            Hello(1, 0, float("inf"), 64, 1, 1, NO_SESSION),
            "HELLO interval inf s is not a finite number",
        ),
        (Hello(1, 0, 1.0, 64, 1, 1, b"short"), "HELLO session must be 16 bytes, got b'short'"),
    ],
    ids=repr,
)
def test_encodeRefusesUnencodable(frame: Frame, message: str) -> None:
    """A field that cannot be put on the wire raises ValueError with a clear message."""
    with pytest.raises(ValueError) as info:
        encode(frame)
    assert str(info.value) == message


class _Huge(bytes):
    """
    Bytes that claim to be 4 GiB long, to test the length limit cheaply.
    """

    def __len__(self) -> int:
        return 2**32


class _HugeText(str):
    """
    Text whose UTF-8 encoding claims to be 4 GiB long.
    """

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return _Huge()


@pytest.mark.parametrize(
    "frame,message",
    [
        (
            Data(1, _Huge()),
            f"DATA frame of {2**32 + 9} bytes exceeds the largest encodable length of "
            f"{MAX_U32} bytes",
        ),
        (
            Goodbye(GoodbyeCode.NORMAL, _HugeText()),
            f"GOODBYE frame of {2**32 + 3} bytes exceeds the largest encodable length of "
            f"{MAX_U32} bytes",
        ),
        (
            Reject(1, _HugeText()),
            f"REJECT frame of {2**32 + 9} bytes exceeds the largest encodable length of "
            f"{MAX_U32} bytes",
        ),
    ],
    ids=["DATA", "GOODBYE", "REJECT"],
)
def test_encodeRefusesTooLong(frame: Frame, message: str) -> None:
    """A frame longer than a 32-bit length can say raises ValueError."""
    with pytest.raises(ValueError) as info:
        encode(frame)
    assert str(info.value) == message


def test_encodeNotAFrame() -> None:
    """Encoding something that is not a frame raises TypeError."""
    with pytest.raises(TypeError, match="^cannot encode tuple: not a frame$"):
        encode((1, b"x"))  # type: ignore[arg-type]


# --- every decoder error message ------------------------------------------

INVALID: list[tuple[str, bytes, str]] = [
    (
        "oversize",
        struct.pack(">I", DEFAULT_MAX_FRAME_SIZE + 1),
        "frame of 1048577 bytes exceeds the maximum of 1048576 bytes",
    ),
    ("zero-length", bytes(4), "frame length 0: a frame holds at least its kind byte"),
    ("kind-0x00", raw(0x00, b""), "unknown frame kind 0x00"),
    ("kind-0x08", raw(0x08, b"abc"), "unknown frame kind 0x08"),
    ("kind-0xff", raw(0xFF, b""), "unknown frame kind 0xff"),
    ("hello-empty", raw(1, b""), "HELLO body is 0 bytes, expected 46"),
    ("hello-short", raw(1, helloBody()[:45]), "HELLO body is 45 bytes, expected 46"),
    ("hello-long", raw(1, helloBody() + b"x"), "HELLO body is 47 bytes, expected 46"),
    (
        "hello-next-expected-0",
        raw(1, helloBody(nextExpected=0)),
        "HELLO next_expected 0 is invalid (sequence numbers start at 1)",
    ),
    ("ack-short", raw(3, bytes(7)), "ACK body is 7 bytes, expected 8"),
    ("ack-long", raw(3, bytes(9)), "ACK body is 9 bytes, expected 8"),
    ("ping-empty", raw(4, b""), "PING body is 0 bytes, expected 8"),
    ("ping-long", raw(4, bytes(12)), "PING body is 12 bytes, expected 8"),
    ("pong-short", raw(5, bytes(1)), "PONG body is 1 bytes, expected 8"),
    ("data-empty", raw(2, b""), "DATA body is 0 bytes, expected at least 8"),
    ("data-short", raw(2, bytes(7)), "DATA body is 7 bytes, expected at least 8"),
    (
        "data-seq-0",
        raw(2, bytes(8) + b"payload"),
        "DATA sequence number 0 is invalid (sequence numbers start at 1)",
    ),
    ("reject-short", raw(7, bytes(3)), "REJECT body is 3 bytes, expected at least 8"),
    (
        "reject-seq-0",
        raw(7, bytes(8) + b"why"),
        "REJECT sequence number 0 is invalid (sequence numbers start at 1)",
    ),
    (
        "reject-bad-utf8",
        raw(7, struct.pack(">Q", 1) + b"\xc3\x28"),
        "REJECT reason is not valid UTF-8",
    ),
    ("goodbye-empty", raw(6, b""), "GOODBYE body is 0 bytes, expected at least 2"),
    ("goodbye-short", raw(6, b"\x00"), "GOODBYE body is 1 bytes, expected at least 2"),
    ("goodbye-code-5", raw(6, b"\x00\x05"), "unknown GOODBYE code 5"),
    ("goodbye-code-65535", raw(6, b"\xff\xffbye"), "unknown GOODBYE code 65535"),
    ("goodbye-bad-utf8", raw(6, b"\x00\x00\xff"), "GOODBYE reason is not valid UTF-8"),
    (
        "goodbye-truncated-utf8",
        raw(6, b"\x00\x01" + "✓".encode()[:2]),
        "GOODBYE reason is not valid UTF-8",
    ),
]


@pytest.mark.parametrize(
    "data,message", [(d, m) for _, d, m in INVALID], ids=[n for n, *_ in INVALID]
)
def test_errorMessages(data: bytes, message: str) -> None:
    """Each malformed frame raises FrameError with the exact text of the spec."""
    error = errorOf(data)
    assert type(error) is FrameError
    assert str(error) == message


@pytest.mark.parametrize(
    "body",
    [helloBody(version=3), helloBody(version=3)[:1], helloBody(version=3, nextExpected=0)],
    ids=["full", "version-byte-only", "next-expected-0"],
)
def test_versionCheckedFirst(body: bytes) -> None:
    """A HELLO of another version raises VersionError before any other HELLO check."""
    error = errorOf(raw(1, body))
    assert isinstance(error, VersionError)
    assert isinstance(error, FrameError)
    assert str(error) == "unsupported protocol version 3 (this side speaks 2)"


def test_versionZero() -> None:
    """Version 0 is refused as well."""
    error = errorOf(raw(1, helloBody(version=0)))
    assert isinstance(error, VersionError)
    assert str(error) == "unsupported protocol version 0 (this side speaks 2)"


# --- size limits ----------------------------------------------------------


def test_oversizeRejectedAtOnce() -> None:
    """64 bytes of 0xff are refused immediately, without buffering."""
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        decoder.feed(b"\xff" * 64)
    assert str(info.value) == "frame of 4294967295 bytes exceeds the maximum of 1048576 bytes"
    assert decoder.buffered == 0


def test_oversizeRejectedOnHeaderBytes() -> None:
    """Just the 4 length bytes declaring 2**31 are enough to refuse the frame."""
    decoder = FrameDecoder()
    assert decoder.feed(b"\x80\x00") == []
    assert decoder.buffered == 2
    with pytest.raises(FrameError) as info:
        decoder.feed(b"\x00\x00")
    assert str(info.value) == "frame of 2147483648 bytes exceeds the maximum of 1048576 bytes"
    assert decoder.buffered == 0


def test_zeroLengthRejectedOnHeaderBytes() -> None:
    """A zero length is refused once its 4 bytes arrive, before any kind byte."""
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="^frame length 0: a frame holds at least its kind byte$"):
        decoder.feed(bytes(4))


def test_unknownKindRejectedOnKindByte() -> None:
    """An unknown kind is refused as soon as its kind byte arrives, not after its body."""
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="^unknown frame kind 0x09$"):
        decoder.feed(struct.pack(">IB", 1000, 9))


def test_maximumFrameAccepted() -> None:
    """A frame whose length equals maxFrameSize is accepted; one byte more is refused."""
    decoder = FrameDecoder(MIN_MAX_FRAME_SIZE)
    payload = bytes(MIN_MAX_FRAME_SIZE - 9)
    assert decoder.feed(encodeData(1, payload)) == [Data(1, payload)]
    with pytest.raises(FrameError, match="^frame of 65 bytes exceeds the maximum of 64 bytes$"):
        decoder.feed(encodeData(2, payload + b"x")[:4])


def test_bufferBounded() -> None:
    """While a large frame arrives piece by piece, buffered never exceeds the frame."""
    maxFrameSize = 100_000
    decoder = FrameDecoder(maxFrameSize)
    frame = encodeData(1, bytes(maxFrameSize - 9))
    for start in range(0, len(frame) - 1000, 1000):
        assert decoder.feed(frame[start : start + 1000]) == []
        assert decoder.buffered == start + 1000
        assert decoder.buffered <= maxFrameSize + 4
    assert decoder.feed(frame[len(frame) // 1000 * 1000 :]) == [Data(1, bytes(maxFrameSize - 9))]
    assert decoder.buffered == 0


@pytest.mark.parametrize("size", [0, 1, MIN_MAX_FRAME_SIZE - 1, 2**32])
def test_maxFrameSizeBounds(size: int) -> None:
    """A maxFrameSize below 64 or above 2**32-1 is refused."""
    with pytest.raises(ValueError) as info:
        FrameDecoder(size)
    assert str(info.value) == f"maxFrameSize {size} is outside the range 64..4294967295"


def test_maxFrameSizeAttribute() -> None:
    """The decoder exposes its limit."""
    assert FrameDecoder().maxFrameSize == DEFAULT_MAX_FRAME_SIZE
    assert FrameDecoder(MAX_U32).maxFrameSize == MAX_U32


# --- partial input, poisoning, frames carried on errors -------------------


def test_partialFrameKept() -> None:
    """An incomplete frame is held, counted in buffered, and completed later."""
    decoder = FrameDecoder()
    frame = encodeData(3, b"abcdef")
    assert decoder.feed(frame[:2]) == []
    assert decoder.buffered == 2
    assert decoder.feed(frame[2:10]) == []
    assert decoder.buffered == 10
    assert decoder.feed(frame[10:] + encodeAck(3)[:1]) == [Data(3, b"abcdef")]
    assert decoder.buffered == 1
    assert decoder.feed(encodeAck(3)[1:]) == [Ack(3)]
    assert decoder.buffered == 0


def test_emptyFeed() -> None:
    """Feeding no bytes returns no frames and changes nothing."""
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    decoder.feed(b"\x00")
    assert decoder.feed(b"") == []
    assert decoder.buffered == 1


def test_bytesLikeInput() -> None:
    """A bytearray or memoryview is accepted and payloads come out as bytes."""
    decoder = FrameDecoder()
    frame = encodeData(1, b"xy")
    [data] = decoder.feed(bytearray(frame[:20]))  # type: ignore[arg-type]
    assert data == Data(1, b"xy")
    assert type(data.payload) is bytes
    assert decoder.feed(memoryview(encodeAck(1))) == [Ack(1)]  # type: ignore[arg-type]


def test_errorCarriesEarlierFrames() -> None:
    """Frames completed before the bad one in the same feed are carried in .frames."""
    decoder = FrameDecoder()
    assert decoder.feed(encodeData(1, b"a")) == [Data(1, b"a")]
    with pytest.raises(FrameError) as info:
        decoder.feed(encodeData(2, b"b") + encodeAck(2) + raw(6, b"\x00\x09"))
    assert str(info.value) == "unknown GOODBYE code 9"
    assert info.value.frames == [Data(2, b"b"), Ack(2)]


def test_errorCarriesFramesBeforeOversizeHeader() -> None:
    """Frames before an oversize header in the same feed are not lost."""
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        decoder.feed(encode(Ping(1)) + b"\xff\xff\xff\xff")
    assert info.value.frames == [Ping(1)]


def test_errorWithoutEarlierFrames() -> None:
    """An error on the first frame of a feed carries an empty .frames."""
    assert errorOf(raw(9, b"")).frames == []


def test_poisoned() -> None:
    """After an error every later feed raises the same error, with no frames."""
    decoder = FrameDecoder()
    with pytest.raises(VersionError) as first:
        decoder.feed(encodeAck(1) + raw(1, helloBody(version=3)))
    assert first.value.frames == [Ack(1)]
    assert decoder.failed
    for more in [b"", encodeAck(2), encode(EXAMPLES[0])]:
        with pytest.raises(VersionError) as later:
            decoder.feed(more)
        assert str(later.value) == "unsupported protocol version 3 (this side speaks 2)"
        assert later.value.frames == []
    assert decoder.buffered == 0


def test_notFailedInitially() -> None:
    """A fresh decoder is not failed."""
    assert not FrameDecoder().failed


def test_manyFramesOneFeed() -> None:
    """A feed holding many frames of mixed kinds returns them all, in order."""
    frames = EXAMPLES * 10
    assert decodeAll(b"".join(encode(f) for f in frames)) == frames


# --- properties -------------------------------------------------------------

u64 = st.integers(0, MAX_U64)
u32 = st.integers(0, MAX_U32)
seqs = st.integers(1, MAX_U64)

frameStrategy: st.SearchStrategy[Frame] = st.one_of(
    st.builds(
        Hello,
        st.just(PROTOCOL_VERSION),
        st.integers(0, 255),
        u32.map(lambda ms: ms / 1000),
        u32,
        u32,
        seqs,
        st.binary(min_size=16, max_size=16),
        u64,
    ),
    st.builds(Data, seqs, st.binary(max_size=300)),
    st.builds(Ack, u64),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(Goodbye, st.sampled_from(GoodbyeCode), st.text(max_size=50)),
    st.builds(Reject, seqs, st.text(max_size=50)),
)


def chunked(data: st.DataObject, stream: bytes) -> list[bytes]:
    """
    Draw a random split of ``stream`` into consecutive pieces (empty ones included).
    """
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def decodeChunks(chunks: list[bytes], maxFrameSize: int) -> tuple[list[Frame], str | None, int]:
    """
    Feed ``chunks``; return the frames, the error message (if any) and bytes left buffered.
    """
    decoder = FrameDecoder(maxFrameSize)
    frames: list[Frame] = []
    for chunk in chunks:
        try:
            frames.extend(decoder.feed(chunk))
        except FrameError as error:
            frames.extend(error.frames)
            return frames, str(error), decoder.buffered
    return frames, None, decoder.buffered


# Byte streams that stay near the protocol: valid frames, frames with a
# plausible header but random body, and random bytes.
nearFrames = st.one_of(
    frameStrategy.map(encode),
    st.builds(
        lambda kind, body: raw(kind, body),
        st.integers(0, 9),
        st.binary(max_size=60),
    ),
    st.builds(
        lambda length, kind, body: struct.pack(">IB", length, kind) + body,
        st.integers(0, 80),
        st.integers(0, 9),
        st.binary(max_size=80),
    ),
    st.binary(max_size=20),
)
fuzzStreams = st.lists(nearFrames, max_size=10).map(b"".join)
maxFrameSizes = st.sampled_from([MIN_MAX_FRAME_SIZE, 100, DEFAULT_MAX_FRAME_SIZE])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(frameStrategy, max_size=20), data=st.data())
def test_propertyRoundTripAnyChunking(frames: list[Frame], data: st.DataObject) -> None:
    """Any list of frames, encoded and fed in any chunking, decodes to the same list."""
    stream = b"".join(encode(f) for f in frames)
    assert decodeChunks(chunked(data, stream), DEFAULT_MAX_FRAME_SIZE) == (frames, None, 0)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.one_of(st.binary(max_size=400), fuzzStreams),
    maxFrameSize=maxFrameSizes,
    data=st.data(),
)
def test_propertyGarbageOnlyFrameError(
    stream: bytes, maxFrameSize: int, data: st.DataObject
) -> None:
    """Any bytes in any chunking give frames or FrameError, never another exception."""
    decoder = FrameDecoder(maxFrameSize)
    for chunk in chunked(data, stream):
        try:
            decoder.feed(chunk)
        except FrameError:
            break
        assert decoder.buffered <= maxFrameSize + 4


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.one_of(st.binary(max_size=400), fuzzStreams),
    maxFrameSize=maxFrameSizes,
    data=st.data(),
)
def test_propertyChunkingIndependent(stream: bytes, maxFrameSize: int, data: st.DataObject) -> None:
    """Frames, error and leftover do not depend on how the bytes are split."""
    whole = decodeChunks([stream], maxFrameSize)
    assert decodeChunks(chunked(data, stream), maxFrameSize) == whole
    single = [stream[i : i + 1] for i in range(len(stream))]
    assert decodeChunks(single, maxFrameSize) == whole
