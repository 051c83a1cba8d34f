"""Ctrl-C that is not lost.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be. Raised inside a
garbage-collection or weakref callback (an import's module-lock cleanup, say), it is printed as "Exception ignored"
and dropped, and the run went on to its end (seen in tests/test_bad_input.py's Ctrl-C test). The handler installed
here raises as Python's does and also remembers the signal, so that a run checks it between stages and as it ends.
"""

from __future__ import annotations

import signal
import threading

# Process-wide, as the signal is: set by the handler, read between stages.
_SEEN = threading.Event()


def _handler(signum, frame) -> None:
    _SEEN.set()
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT here unless Python's own handler is not the one in place (SIGINT ignored, as in a background
    job, or another handler set by the caller)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handler)


def interrupted() -> bool:
    return _SEEN.is_set()


def raise_if_interrupted() -> None:
    """Raise the KeyboardInterrupt a callback swallowed, if one did."""
    if _SEEN.is_set():
        raise KeyboardInterrupt
