"""One-line logging for agents, with token redaction as defence in depth.

Nothing should log a token in the first place; the filter and formatter make sure a
mistake (an exception carrying a header, a debug dump) still does not leak one.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[REDACTED]"
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")


class Redactor:
    """Replaces ``Bearer <anything>`` and each known token with ``[REDACTED]``."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self.set_tokens(tokens)

    def set_tokens(self, tokens: Iterable[str]) -> None:
        # Longest first so a token that contains another is replaced whole.
        self._tokens = sorted({t for t in tokens if len(t) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
        for token in self._tokens:
            if token in text:
                text = text.replace(token, REDACTED)
        return text


class RedactFilter(logging.Filter):
    """Rewrites a record's message (args already merged) with secrets redacted."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # malformed %-args: let the handler report it as usual
            return True
        redacted = self.redactor(message)
        if redacted != message or record.args:
            record.msg = redacted
            record.args = None
        return True


def _utc(secs: float | None) -> time.struct_time:
    return time.gmtime(secs)


class RedactingFormatter(logging.Formatter):
    """Redacts the final line too, which covers tracebacks and exception texts."""

    def __init__(self, redactor: Redactor, fmt: str = LOG_FORMAT) -> None:
        super().__init__(fmt, datefmt="%Y-%m-%dT%H:%M:%SZ")
        self.converter = _utc  # log times in UTC, like everything else
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor(super().format(record))


def setup_logging(
    level: str | int = "INFO", service: str = "watcher", tokens: Iterable[str] = ()
) -> logging.Logger:
    """Configure the root logger (stderr, one line per record); returns ``service``'s logger.

    Idempotent: calling it again replaces the handler it installed before.
    """
    redactor = Redactor(tokens)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("watcher-setup-logging")
    handler.addFilter(RedactFilter(redactor))
    handler.setFormatter(RedactingFormatter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "watcher-setup-logging":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # httpx logs every request at INFO; the sender reports what matters itself.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(service)
