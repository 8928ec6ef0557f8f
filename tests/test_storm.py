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
import threading
import time
from pathlib import Path

import pytest
from support import LOOPBACK, TWISTD, killGroup, startProcess

from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    encode,
)

CLIENTS = 2000
BOUND = 5.0


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
                assert isinstance(key.fileobj, socket.socket)
                sock = key.fileobj
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


class Log(threading.Thread):
    """Copies a process's output to a file, line by line, and tells when the
    line giving the port it listens on went by."""

    def __init__(self, process: subprocess.Popen[str], path: Path) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.path = path
        self.port: int | None = None
        self.listening = threading.Event()
        """Set once the port is known, or the output ended."""

    def run(self) -> None:
        assert self.process.stdout is not None
        with self.path.open("w") as out:
            for line in self.process.stdout:
                out.write(line)
                out.flush()
                match = re.search(r"--listen listening on [\d.]+:(\d+)", line)
                if match and self.port is None:
                    self.port = int(match.group(1))
                    self.listening.set()
        self.listening.set()


def startTwistd(tmp: Path, *args: str) -> tuple[subprocess.Popen[str], int, Log]:
    """Start ``twistd -n alive ARGS`` (its output copied to ``tmp/twistd.log``);
    return it, its port once it listens, and the copier."""
    process = startProcess(*TWISTD, "-n", "--pidfile=", "alive", *args, cwd=tmp)
    log = Log(process, tmp / "twistd.log")
    log.start()
    if not log.listening.wait(30) or log.port is None:
        killGroup(process)
        log.join(10)
        raise AssertionError("twistd did not start listening:\n" + log.path.read_text())
    return process, log.port, log


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_reconnectStormServed(tmp_path: Path) -> None:
    """2,000 simultaneous connects against twistd -n alive (default options) all get their
    HELLO answered within 5 s."""
    raiseFileLimit(2 * CLIENTS + 256)
    process, port, output = startTwistd(tmp_path, "--listen", f"tcp:0:interface={LOOPBACK}")
    try:
        answered = storm(port, CLIENTS, deadline=BOUND + 10)
    finally:
        killGroup(process)
        output.join(10)
    log = (tmp_path / "twistd.log").read_text(errors="replace")
    assert "Traceback" not in log
    assert len(answered) == CLIENTS, f"{len(answered)}/{CLIENTS} answered in {BOUND + 10} s"
    assert max(answered) < BOUND, f"the last HELLO came after {max(answered):.2f} s"
