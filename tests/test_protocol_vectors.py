"""
The hex test vectors of ``docs/protocol.md`` hold for the frame codec.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from coresupport import fed

from twisted_alive.core.connection import (
    Connection,
    HelloReceived,
    Opened,
    Role,
    SessionUnknown,
    Settings,
    Violation,
)
from twisted_alive.core.frames import (
    HELLO_ASSIGNED,
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
NEW_TOKEN = bytes.fromhex("3f9c0000000000000000000000000ae1")

# What each valid vector of docs/protocol.md decodes to.
EXPECTED: dict[str, Frame] = {
    "hello-client-new": Hello(2, 0, 5.0, 1_048_576, 64, 1, NO_SESSION, 0x5B1E0C2A9D4F8807),
    "hello-client-resume": Hello(2, 0, 5.0, 1_048_576, 64, 8, TOKEN, 0x0123456789ABCDEF),
    "hello-server-new": Hello(
        2, HELLO_ASSIGNED, 5.0, 1_048_576, 64, 1, NEW_TOKEN, 0xC40A11F0E2D3B793
    ),
    "hello-server-resumed": Hello(
        2, HELLO_ASSIGNED | HELLO_RESUMED, 2.5, 65536, 32, 43, TOKEN, 0xFEDCBA9876543210
    ),
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


# -- handshake vectors ---------------------------------------------------------------------------

_HANDSHAKE = re.compile(
    r"^handshake (?P<name>[\w-]+): (?P<role>client|server|peer) (?P<nonce>[0-9a-f]{16}|-) "
    r"(?P<asked>[0-9a-f]{32}|-) <- (?P<hex>[0-9a-f ]+) -> (?P<outcome>.+)$"
)


def _handshakeVectors() -> dict[str, re.Match[str]]:
    """The ``handshake`` lines of the block under "Handshake vectors", by name."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    heading = re.search(r"^#+ Handshake vectors\s*$", text, re.MULTILINE)
    assert heading is not None, "docs/protocol.md has no 'Handshake vectors' heading"
    block = re.search(r"^```text\n(.*?)^```", text[heading.end() :], re.MULTILINE | re.DOTALL)
    assert block is not None
    vectors: dict[str, re.Match[str]] = {}
    for line in block.group(1).splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _HANDSHAKE.match(line)
        assert match is not None, f"unparsable handshake vector: {line!r}"
        assert match["name"] not in vectors
        vectors[match["name"]] = match
    return vectors


HANDSHAKES = _handshakeVectors()
VECTOR_SETTINGS = Settings(interval=5.0, maxFrameSize=1_048_576, window=64)


def test_handshakeVectorSet() -> None:
    """The handshake vectors cover each outcome and each new HELLO rule."""
    outcomes = {m["outcome"].split(":")[0] for m in HANDSHAKES.values()}
    assert {"open", "open resumed", "accept", "session unknown"} <= outcomes
    assert {"echo", "server-to-server", "ssh-banner", "version-1-peer"} <= set(HANDSHAKES)


@pytest.mark.parametrize("name", sorted(HANDSHAKES))
def test_handshakeVector(name: str) -> None:
    """A side fed a handshake vector does exactly what the spec says, and nothing else."""
    vector = HANDSHAKES[name]
    role = Role(vector["role"])
    asked = NO_SESSION if vector["asked"] == "-" else bytes.fromhex(vector["asked"])
    nonce = None if vector["nonce"] == "-" else int(vector["nonce"], 16)
    conn = Connection(
        VECTOR_SETTINGS, role, 0.0, VECTOR_SETTINGS.newSession(asked), nonce=nonce
    )
    own = conn.dataToSend(0.0)
    if nonce is not None:
        (hello,) = FrameDecoder().feed(own)
        assert isinstance(hello, Hello) and hello.nonce == nonce and hello.session == asked
    events = fed(conn, bytes.fromhex(vector["hex"]), 0.0)
    sent = FrameDecoder().feed(conn.dataToSend(0.0))
    outcome = vector["outcome"]
    if outcome.startswith("goodbye "):
        code, text = outcome[len("goodbye ") :].split(": ", 1)
        assert sent == [Goodbye(GoodbyeCode[code], text)]
        last = events[-1]
        assert isinstance(last, Violation) and last == Violation(text, notAlive=last.notAlive)
        assert conn.state.name == "FAILED"
    elif outcome == "accept":
        assert [type(e) for e in events] == [HelloReceived]
        assert sent == []
    elif outcome == "session unknown":
        assert [type(e) for e in events] == [SessionUnknown]
        assert sent == []
    else:
        assert outcome in ("open", "open resumed")
        assert events == [Opened(outcome == "open resumed")]
