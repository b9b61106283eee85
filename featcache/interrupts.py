"""Ctrl-C and SIGTERM as the CLI receives them: remembered, and taken once.

Remembered: Python drops a KeyboardInterrupt raised while a garbage-collection callback runs in the main thread (it
prints "Exception ignored in: ..." and carries on): with a dask cluster waiting on futures, 1 interrupt in 6 timed
into its start was lost that way and the run went on to its end. The handler also records the signal, and the long
loops (fitting tasks, extraction batches) `check()` between steps, so a lost interrupt stops the run at the next
one. Taken once: a second signal within SECOND_SIGNAL_SECONDS of the first (a double press, SLURM's SIGTERM after a
Ctrl-C) is the same request, and raising again would cut the first one's clean-up short (joblib's printed a
resource_tracker warning under the one line). Only the CLI installs these handlers; `reset()` when a command ends.
"""

from __future__ import annotations

import signal
import time

SECOND_SIGNAL_SECONDS = 2.0
_received: dict = {"signum": None, "at": 0.0}


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, SLURM's time limit, a Kubernetes eviction) ends a command as Ctrl-C does: rows kept, the
    lock and temporary files removed, worker processes stopped (without a handler the process died at once and a
    `fit --jobs N` left its worker processes computing on)."""


def on_signal(signum, frame) -> None:
    """The CLI's SIGINT and SIGTERM handler: remember, then interrupt as Python's default handler does."""
    now = time.monotonic()
    if _received["signum"] is not None and now - _received["at"] < SECOND_SIGNAL_SECONDS:
        return
    _received.update(signum=signum, at=now)
    raise _interruption(signum)


def check() -> None:
    """Raise the interruption again if a signal was received (and possibly dropped) since the command started."""
    if _received["signum"] is not None:
        raise _interruption(_received["signum"])


def reset() -> None:
    _received.update(signum=None, at=0.0)


def _interruption(signum) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def while_starting(signum, frame) -> None:
    """The console script's handler until the CLI installs `on_signal`: a signal during the imports (about 0.3 s)
    printed a Python traceback and exited -2. Nothing is written yet, so the process ends at once with the code and
    line a later signal gets."""
    import os

    os.write(2, b"interrupted\n")
    os._exit(143 if signum == signal.SIGTERM else 130)


def takes_over_from(handler) -> bool:
    """Whether the CLI may install its own handler where `handler` is: Python's default or the start-up one, not
    where the caller chose to ignore the signal (nohup, a background job) or handles it itself."""
    return handler in (signal.default_int_handler, signal.SIG_DFL, while_starting)
