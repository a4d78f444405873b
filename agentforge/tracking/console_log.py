"""What a run prints goes into its ``agentforge.log`` too: the results a phase prints (the val loss, the ablation
table, the verdicts, where the checkpoint went) are read later from the run directory, not only from a scrolled-away
terminal. Hydra's file handler gets Python logging only; ``print`` went to the console alone.

Each complete line on stdout becomes one INFO record of the logger ``agentforge.console`` in the run's file
handlers (the console already shows it: no second copy there). A line redrawn in place with carriage returns (a
progress bar) is logged as its last drawing."""
from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator

LOGGER = "agentforge.console"
SGR = re.compile(r"\x1b\[[0-9;]*m")                                  # colour / style
CURSOR = re.compile(r"\x1b(\[[0-9;?]*[A-Za-ln-z]|[78])")            # moves, erases, shows / hides the cursor
BAR = re.compile("[━█]")                                               # a progress bar's track


class _Tee:
    """sys.stdout's stand-in: writes pass through; each finished line is also handed to ``handlers``."""

    def __init__(self, stream, handlers: list[logging.Handler]):
        self._stream, self._handlers, self._pending = stream, handlers, ""
        self._logger = logging.getLogger(LOGGER)

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        if CURSOR.search(text) or BAR.search(text):
            return n
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._emit(line)
        return n

    def _emit(self, line: str) -> None:
        line = SGR.sub("", line.rsplit("\r", 1)[-1]).rstrip()
        if not line:
            return
        record = self._logger.makeRecord(LOGGER, logging.INFO, __file__, 0, line, None, None)
        for handler in self._handlers:
            handler.handle(record)

    def flush(self) -> None:
        self._stream.flush()

    def close_line(self) -> None:
        """A last line printed without its newline still reaches the log."""
        if self._pending:
            self._emit(self._pending)
            self._pending = ""

    def __getattr__(self, name):     # isatty, fileno, encoding, ...: the real stream's
        return getattr(self._stream, name)


def file_handlers() -> list[logging.Handler]:
    """The run's log files: the FileHandlers on the root logger and on ``agentforge`` (Hydra's job logging)."""
    seen = [*logging.getLogger().handlers, *logging.getLogger("agentforge").handlers]
    return list(dict.fromkeys(h for h in seen if isinstance(h, logging.FileHandler)))


@contextlib.contextmanager
def stdout_into_log() -> Iterator[None]:
    """Within the block, every line printed to stdout is also a record in the run's log files (none: no change)."""
    handlers = file_handlers()
    if not handlers:
        yield
        return
    real, tee = sys.stdout, _Tee(sys.stdout, handlers)
    sys.stdout = tee
    try:
        yield
    finally:
        tee.close_line()
        if sys.stdout is tee:
            sys.stdout = real
