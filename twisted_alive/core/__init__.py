"""
The sans-IO core of twisted_alive: frames, liveness, delivery, the
connection's state machine, sessions and the retry policy.

Nothing here imports Twisted, reads a clock or does I/O: the callers pass
the time in and take bytes and events out (``tests/test_layers.py`` checks
it). The Twisted adapter (``HeartbeatMixin``, the factories) moves bytes and
time between a transport and `connection.Connection`.
"""
