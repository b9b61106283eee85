"""Ctrl-C and SIGTERM while a command runs: raised once, remembered, and checked between the steps of long loops.

`install()` puts `on_signal` in place (the CLI does, for the duration of a command). The handler raises
KeyboardInterrupt for SIGINT and `Terminated` for SIGTERM, so every `with` and `finally` on the way out runs (the
cache lock released, temporary files removed, rows written so far kept). It also records the signal: Python drops
an exception raised while a garbage-collection callback runs ("Exception ignored in ..."), so the long loops call
`check()` between steps and stop there instead. A second signal within SECOND_SIGNAL_SECONDS of the first (a double
press, a scheduler's SIGTERM after a Ctrl-C) is the same request and raises nothing: raising again would cut the
first one's clean-up short. Without `install()` (a library caller), `check()` never raises.
"""

from __future__ import annotations

import signal
import threading
import time

SECOND_SIGNAL_SECONDS = 2.0
_received: dict = {"signum": None, "at": 0.0}


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler's time limit, a Kubernetes eviction): ends a command as Ctrl-C does."""


def on_signal(signum: int, frame) -> None:
    """SIGINT and SIGTERM handler: record the signal, then raise its interruption (unless it repeats one just
    received)."""
    now = time.monotonic()
    if _received["signum"] is not None and now - _received["at"] < SECOND_SIGNAL_SECONDS:
        return
    _received.update(signum=signum, at=now)
    raise _interruption(signum)


def check() -> None:
    """Raise the interruption again if a signal was received since the last `reset()`."""
    if _received["signum"] is not None:
        raise _interruption(_received["signum"])


def reset() -> None:
    """Forget a received signal (a new command starts)."""
    _received.update(signum=None, at=0.0)


def install() -> dict:
    """Make `on_signal` the handler of SIGTERM, and of SIGINT unless the process was started with Ctrl-C ignored or
    handled by its caller (nohup, a background job, an embedding program). Returns the handlers it replaced, for
    the caller to put back; outside the main thread (where Python cannot set handlers) nothing, and {}."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    replaced = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_signal)}
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_DFL):
        replaced[signal.SIGINT] = signal.signal(signal.SIGINT, on_signal)
    return replaced


def _interruption(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
