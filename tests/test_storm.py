"""
A reconnect storm against ``twistd -n alive`` with its default options: many
clients connect at the same moment (as after a server restart) and each must
get its HELLO answered promptly. Twisted's default listen backlog (50) makes
the connections beyond it wait for SYN retransmissions (1, 3, 7, 15 s...);
the plugin listens with a backlog of 4096 unless told otherwise.

The clients are raw non-blocking sockets driven by one ``selectors`` loop
in this process (no reactor: lean enough for thousands), each sending a
client HELLO built with the frame codec.
"""

from __future__ import annotations

import re
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import environment, killGroup

from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    encode,
)

LOOPBACK = "127.0.0.1"
CLIENTS = 2000
BOUND = 5.0
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def clientHello() -> bytes:
    """A client's first HELLO (no session yet), from the frame codec."""
    return encode(Hello(PROTOCOL_VERSION, 0, 5.0, DEFAULT_MAX_FRAME_SIZE, 1024, 1, NO_SESSION))


def raiseFileLimit(needed: int) -> None:
    """Raise this process's soft limit on open files to ``needed`` (children
    inherit it), or skip the test if the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def storm(port: int, count: int, deadline: float) -> list[float]:
    """
    Connect ``count`` sockets to ``port`` at once, send each a client HELLO,
    and wait (at most ``deadline`` seconds) for the server's HELLO on each.

    :returns: for each socket answered, the seconds from the start of the
        storm to its server HELLO.
    """
    hello = clientHello()
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    decoders: dict[socket.socket, FrameDecoder] = {}
    answered: list[float] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex((LOOPBACK, port))
            decoders[sock] = FrameDecoder()
            selector.register(sock, selectors.EVENT_WRITE)
        while decoders and time.monotonic() - started < deadline:
            for key, mask in selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if mask & selectors.EVENT_WRITE:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise AssertionError("a connect failed")
                    sock.send(hello)
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                data = sock.recv(65536)
                assert data, "the server closed a connection before its HELLO"
                if any(isinstance(f, Hello) for f in decoders[sock].feed(data)):
                    answered.append(time.monotonic() - started)
                    selector.unregister(sock)
                    del decoders[sock]
                    sock.close()
    finally:
        for sock in decoders:
            sock.close()
        selector.close()
    return answered


def startTwistd(tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``twistd -n alive ARGS`` (its log in ``tmp``); return it and its port once
    it listens."""
    log = tmp / "twistd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "alive", *args],
            cwd=tmp,
            env=environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    limit = time.monotonic() + 30
    while time.monotonic() < limit:
        match = re.search(r"--listen listening on [\d.]+:(\d+)", log.read_text(errors="replace"))
        if match:
            return process, int(match.group(1))
        assert process.poll() is None, log.read_text(errors="replace")
        time.sleep(0.05)
    killGroup(process)
    raise AssertionError("twistd did not start listening:\n" + log.read_text(errors="replace"))


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_reconnectStormServed(tmp_path: Path) -> None:
    """2,000 simultaneous connects against twistd -n alive (default options) all get their
    HELLO answered within 5 s."""
    raiseFileLimit(2 * CLIENTS + 256)
    process, port = startTwistd(tmp_path, "--listen", f"tcp:0:interface={LOOPBACK}")
    try:
        answered = storm(port, CLIENTS, deadline=BOUND + 10)
    finally:
        killGroup(process)
    log = (tmp_path / "twistd.log").read_text(errors="replace")
    assert "Traceback" not in log
    assert len(answered) == CLIENTS, f"{len(answered)}/{CLIENTS} answered in {BOUND + 10} s"
    assert max(answered) < BOUND, f"the last HELLO came after {max(answered):.2f} s"
