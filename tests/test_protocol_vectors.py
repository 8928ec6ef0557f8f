"""
The hex test vectors of ``docs/protocol.md`` hold for the frame codec.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from twisted_alive._frames import (
    HELLO_RESUMED,
    NO_SESSION,
    Ack,
    Data,
    Frame,
    FrameDecoder,
    FrameError,
    Goodbye,
    GoodbyeCode,
    Hello,
    Ping,
    Pong,
    Reject,
    VersionError,
    encode,
)

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

TOKEN = bytes.fromhex("00112233445566778899aabbccddeeff")

# What each valid vector of docs/protocol.md decodes to.
EXPECTED: dict[str, Frame] = {
    "hello-client-new": Hello(1, 0, 5.0, 1_048_576, 64, 1, NO_SESSION),
    "hello-client-resume": Hello(1, 0, 5.0, 1_048_576, 64, 8, TOKEN),
    "hello-server-resumed": Hello(1, HELLO_RESUMED, 2.5, 65536, 32, 43, TOKEN),
    "data-empty": Data(1, b""),
    "data-hello": Data(42, b"hello"),
    "ack-none": Ack(0),
    "ack-42": Ack(42),
    "ping": Ping(0x0102030405060708),
    "pong": Pong(0x0102030405060708),
    "goodbye-normal": Goodbye(GoodbyeCode.NORMAL, ""),
    "goodbye-shutting-down": Goodbye(GoodbyeCode.SHUTTING_DOWN, "restarting"),
    "goodbye-go-away": Goodbye(GoodbyeCode.GO_AWAY, "maintenance"),
    "goodbye-protocol-error": Goodbye(GoodbyeCode.PROTOCOL_ERROR, "expected HELLO first, got DATA"),
    "goodbye-session-unknown": Goodbye(GoodbyeCode.SESSION_UNKNOWN, ""),
    "reject": Reject(7, "bad input"),
    "reject-utf8": Reject(8, "naïve ✓"),
}

_VECTOR = re.compile(r"^vector (?P<name>[\w-]+): (?P<hex>[0-9a-f ]+)$")
_INVALID = re.compile(r"^invalid (?P<name>[\w-]+): (?P<hex>[0-9a-f ]+) -> (?P<error>.+)$")


def _vectorBlock(text: str) -> list[str]:
    """
    Return the lines of the first ``text`` code block under the "Test vectors" heading.
    """
    heading = re.search(r"^#+ Test vectors\s*$", text, re.MULTILINE)
    assert heading is not None, "docs/protocol.md has no 'Test vectors' heading"
    block = re.search(r"^```text\n(.*?)^```", text[heading.end() :], re.MULTILINE | re.DOTALL)
    assert block is not None, "no ```text block under 'Test vectors'"
    return block.group(1).splitlines()


def _parse() -> tuple[dict[str, bytes], dict[str, tuple[bytes, str]]]:
    """
    Parse the vectors: valid ones by name, and invalid ones with their error text.
    """
    valid: dict[str, bytes] = {}
    invalid: dict[str, tuple[bytes, str]] = {}
    for line in _vectorBlock(PROTOCOL_MD.read_text(encoding="utf-8")):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := _VECTOR.match(line):
            name = match["name"]
            assert name not in valid, f"duplicate vector {name}"
            valid[name] = bytes.fromhex(match["hex"])
        elif match := _INVALID.match(line):
            name = match["name"]
            assert name not in invalid, f"duplicate invalid vector {name}"
            invalid[name] = (bytes.fromhex(match["hex"]), match["error"])
        else:
            raise AssertionError(f"unparsable line in the test vectors: {line!r}")
    return valid, invalid


VALID, INVALID = _parse()


def test_vectorSet() -> None:
    """The document has enough vectors and every valid one has an expected value."""
    assert set(VALID) == set(EXPECTED)
    assert len(VALID) >= 10
    assert len(INVALID) >= 5


def test_everyKindCovered() -> None:
    """The valid vectors cover every frame kind and every GOODBYE code."""
    assert {type(frame) for frame in EXPECTED.values()} == {
        Hello,
        Data,
        Ack,
        Ping,
        Pong,
        Goodbye,
        Reject,
    }
    codes = {frame.code for frame in EXPECTED.values() if isinstance(frame, Goodbye)}
    assert codes == set(GoodbyeCode)


@pytest.mark.parametrize("name", sorted(VALID))
def test_validVector(name: str) -> None:
    """A valid vector decodes to the expected frame and re-encodes to the same bytes."""
    data = VALID[name]
    decoder = FrameDecoder()
    assert decoder.feed(data) == [EXPECTED[name]]
    assert decoder.buffered == 0
    assert encode(EXPECTED[name]) == data


@pytest.mark.parametrize("name", sorted(VALID))
def test_validVectorByteByByte(name: str) -> None:
    """A valid vector fed one byte at a time decodes to the same frame."""
    data = VALID[name]
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for i in range(len(data)):
        frames.extend(decoder.feed(data[i : i + 1]))
    assert frames == [EXPECTED[name]]


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalidVector(name: str) -> None:
    """An invalid vector raises FrameError with exactly the documented text."""
    data, message = INVALID[name]
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        decoder.feed(data)
    assert str(info.value) == message
    assert info.value.frames == []
    assert isinstance(info.value, VersionError) == message.startswith(
        "unsupported protocol version"
    )


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalidVectorByteByByte(name: str) -> None:
    """An invalid vector fed one byte at a time raises the same error."""
    data, message = INVALID[name]
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        for i in range(len(data)):
            decoder.feed(data[i : i + 1])
    assert str(info.value) == message
