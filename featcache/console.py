"""The `featcache` console script: quiet from its first instruction.

The command's module imports click, numpy and the option tables (about 0.3 s) before the CLI installs its signal
handlers; a Ctrl-C in that time printed a traceback. This entry point installs a handler first and imports the CLI
second. In-process callers (CliRunner, tests) use `cli.main` and are not touched.
"""

from __future__ import annotations

import signal

from featcache.interrupts import takes_over_from, while_starting


def run() -> None:
    """Ends the process with the command (cli.run). The start-up handler is put back to the original after the
    command, so a signal while the interpreter finalises cannot skip flushing what the command printed."""
    originals = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in originals.items():
        if takes_over_from(handler):
            signal.signal(signum, while_starting)
    try:
        import cli

        cli.run()
    finally:
        for signum, handler in originals.items():
            if signal.getsignal(signum) is while_starting:
                signal.signal(signum, handler)
