"""
A raw-socket peer process for ``tests/test_loss_real.py``: it speaks the
twisted_alive framing by hand (or not at all).

Usage::

    raw_peer.py HOST PORT BEHAVIOUR [--count N]

Behaviours:

- ``garbage``: send 64 bytes of 0xff.
- ``halfclose``: send HELLO and ``--count`` DATA frames, then shut down the
  write side (``SHUT_WR``) and keep reading.
- ``silent``: connect and send nothing.

Then it reads until the connection ends and prints one JSON line per frame
received (``{"kind": "Goodbye", "code": 3, "reason": ...}``), then ``EOF``
(a FIN) or ``RESET`` (an RST), and exits.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

from twisted_alive.core.frames import (
    NO_SESSION,
    PROTOCOL_VERSION,
    Data,
    FrameDecoder,
    FrameError,
    Hello,
    encode,
)


def say(*words: object) -> None:
    """One line on stdout, flushed at once."""
    print(*words, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("behaviour", choices=("garbage", "halfclose", "silent"))
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.2)
    options = parser.parse_args(argv)
    sock = socket.create_connection((options.host, options.port), timeout=10)
    if options.behaviour == "garbage":
        sock.sendall(b"\xff" * 64)
    elif options.behaviour == "halfclose":
        out = [encode(Hello(PROTOCOL_VERSION, 0, options.interval, 1_048_576, 1024, 1, NO_SESSION))]
        out += [encode(Data(i, b"half %d" % i)) for i in range(1, options.count + 1)]
        sock.sendall(b"".join(out))
        sock.shutdown(socket.SHUT_WR)
    decoder = FrameDecoder()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            say("RESET")
            return 0
        except TimeoutError:
            say("STILL OPEN")
            return 1
        if not data:
            say("EOF")
            return 0
        try:
            frames = decoder.feed(data)
        except FrameError as e:
            say("UNDECODABLE", e)
            return 1
        for frame in frames:
            fields = {
                k: (v.hex() if isinstance(v, bytes) else v) for k, v in frame._asdict().items()
            }
            say(json.dumps({"kind": type(frame).__name__, **fields}))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
