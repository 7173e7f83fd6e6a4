"""Standard output and error whose reader may go away (`lossbench compare ... | head -1`).

Once a write finds the pipe closed, the stream is pointed at the null device and everything
written afterwards is dropped: the command keeps working silently to its end, so no run is
left half-trained by a reader that stopped reading, and it exits with the code it would have
had. (Python ignores SIGPIPE, so a closed pipe is a `BrokenPipeError` on write; unguarded, it
would end the command at its next print.)
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO


class ReaderMayLeave:
    """A text stream that drops writes, quietly, from the first one its reader did not take."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._lose_reader()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._lose_reader()

    def _lose_reader(self) -> None:
        """Point the descriptor at the null device, so that what the stream still buffers (and
        the interpreter flushes at exit) goes nowhere instead of raising again."""
        self.reader_gone = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
        except (OSError, ValueError):  # no descriptor (a test's stream): the flag suffices
            pass

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno... of the stream
        return getattr(self._stream, name)


def guard_standard_streams() -> None:
    """Replace sys.stdout and sys.stderr by guarded ones (once; the console script's start)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ReaderMayLeave):
            setattr(sys, name, ReaderMayLeave(stream))
