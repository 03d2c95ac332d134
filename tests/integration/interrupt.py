"""Children that a test stops with SIGINT, as Ctrl-C in a terminal would."""

from __future__ import annotations

import signal


def sigint_reaches_it() -> None:
    """`preexec_fn` for a child a test interrupts: a test run started in the background
    (`make test &` from a script) ignores SIGINT, children inherit that, and Python then sets
    no KeyboardInterrupt handler, so the test's Ctrl-C would never reach the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
