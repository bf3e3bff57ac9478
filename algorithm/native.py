"""Capture what native libraries (ITK, ONNX Runtime) print straight to file descriptor 2.

The container's contract is one clear line on stderr when it fails; C++ code writing to the
process's stderr bypasses Python's logging. Around the calls known to do so, the text is
captured and handed back, to be logged or folded into that one error line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["native_stderr"]


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 while the body runs; the yielded list receives its lines afterwards."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                captured.extend(line.strip() for line in sink.read().decode("utf-8", "replace").splitlines()
                                if line.strip())
    finally:
        os.close(saved)
