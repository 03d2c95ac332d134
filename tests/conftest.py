"""Settings for the whole suite."""

from __future__ import annotations

import ast
import functools
import gc
import sys

if sys.version_info < (3, 12):
    # CPython 3.11 keeps the AST constructor's recursion depth in one per-interpreter slot. A
    # garbage collection inside `ast.parse` runs finalizers (hivemind's streams, asyncio's
    # tasks), and another thread or a nested parse can move that slot: the parse then fails
    # with "SystemError: AST constructor recursion depth mismatch". pytest parses with
    # `ast.parse` when it rewrites a module's asserts and when it shows a failed test's
    # source, so that error ended whole runs (INTERNALERROR) instead of reporting the failure.
    # Parsing with the collector paused keeps finalizers out of the parse.
    _parse = ast.parse

    @functools.wraps(_parse)
    def _parse_without_collection(*args, **kwargs):  # type: ignore[no-untyped-def]
        collecting = gc.isenabled()
        gc.disable()
        try:
            return _parse(*args, **kwargs)
        finally:
            if collecting:
                gc.enable()

    ast.parse = _parse_without_collection
