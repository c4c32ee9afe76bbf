"""Log record formats: ``text`` (``time LEVEL logger message``) and ``json`` (one object per
line), both with UTC ISO 8601 times to the millisecond (``2026-12-08T00:34:55.123Z``).

The time is formatted once per second and reused (a transaction line is about 10 us of the
hot path's budget; ``strftime`` alone would be a tenth of it).
"""

from __future__ import annotations

import json
import logging
import time


class _UtcClock:
    """``created`` -> ``YYYY-MM-DDTHH:MM:SS.mmmZ``, the seconds part cached."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-12-08T00:34:55.123Z INFO trio_mta.transaction txn=...``; with ``stamp=False``
    (syslog, which stamps lines itself) ``INFO trio_mta.transaction txn=...``."""

    def __init__(self, *, stamp: bool = True) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s")
        self._clock = _UtcClock() if stamp else None

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return f"{self._clock(record.created)} {line}" if self._clock else line


class JsonFormatter(logging.Formatter):
    """``{"time": ..., "level": ..., "logger": ..., "message": ..., "pid": ...}``, plus
    ``"exception"`` (the formatted traceback) when the record carries one."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _UtcClock()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self._clock(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)
