"""A Ctrl-C the CLI received, remembered.

Python drops a KeyboardInterrupt raised while a garbage-collection callback runs in the main thread (it prints
"Exception ignored in: ..." and carries on): with a dask cluster waiting on futures, 1 interrupt in 6 timed into
its start was lost that way and the run went on to the end. The CLI's SIGINT handler also sets a flag, and the long
loops (fitting tasks, extraction batches) check it between steps, so a lost interrupt stops the run at the next
step. Nothing sets the flag for library callers, whose own handlers stay in place.
"""

from __future__ import annotations

import threading

_RECEIVED = threading.Event()


def on_sigint(signum, frame) -> None:
    """The CLI's SIGINT handler: remember, then interrupt as Python's default handler does."""
    _RECEIVED.set()
    raise KeyboardInterrupt


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C was received (and possibly lost) since the command started."""
    if _RECEIVED.is_set():
        raise KeyboardInterrupt


def reset() -> None:
    _RECEIVED.clear()
