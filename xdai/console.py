"""What the `xdai` command writes to its terminal or log: progress that suits either, and no library noise.

Called once at the entry point. Two problems it solves: faiss logs every instruction-set variant it fails to load
("Could not load library with AVX512-SPR support ...") at INFO, which `xdai serve`'s INFO logging then prints at
each start; and tqdm redraws its bar with carriage returns, which a log file keeps as one endless line. When stderr
is not a terminal, bars become occasional plain lines instead.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TextIO

QUIET_LOGGERS = ("faiss.loader", "faiss", "httpx", "sentence_transformers", "jieba")
LOG_PROGRESS_INTERVAL_S = 15.0  # a progress line in a log at most this often
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LineProgress:
    """A text stream for logs: each carriage-return redraw becomes its own line; blank redraws vanish."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if "\r" in text or "\x1b[" in text:
            lines = [line.rstrip() for line in _ANSI.sub("", text).replace("\r", "\n").split("\n")]
            text = "".join(line + "\n" for line in lines if line.strip())
        return self._stream.write(text)

    def __getattr__(self, name: str):  # flush, fileno, encoding, isatty ... are the stream's
        return getattr(self._stream, name)


def setup_console() -> None:
    """Silence noisy library loggers; make progress bars log-friendly when stderr is not a terminal."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not sys.stderr.isatty() and not isinstance(sys.stderr, LineProgress):
        os.environ.setdefault("TQDM_MININTERVAL", str(LOG_PROGRESS_INTERVAL_S))
        sys.stderr = LineProgress(sys.stderr)  # type: ignore[assignment]
