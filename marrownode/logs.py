"""One event per line: key=value (default) or JSON; no timestamps when journald adds its own."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import IO

from marrownode.config import LoggingSettings


def _under_journald() -> bool:
    # systemd sets JOURNAL_STREAM when stderr goes to the journal.
    return bool(os.environ.get("JOURNAL_STREAM"))


#: Characters that end or rewrite a line on a terminal or in a log file: C0 and C1 controls,
#: DEL, and Unicode's line and paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Keys a JSON log line always has: never taken from the message.
_FIXED_KEYS = frozenset({"level", "logger", "ts", "msg", "exc"})


def escape_controls(text: str) -> str:
    """text with every control character written as an escape (\n, \x1b ...): it stays one
    line and cannot move the cursor."""
    return _CONTROLS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"),
                         text)


def _message(record: logging.LogRecord) -> str:
    """The record's message, every string argument with its controls and spaces escaped (a
    value is one token: a peer's UID with a newline or ' level=error' in it stays inside its
    key), and the whole kept on one line."""
    if record.args and isinstance(record.args, tuple):
        args = tuple(escape_controls(a).replace(" ", "\\x20") if isinstance(a, str) else a
                     for a in record.args)
        try:
            return escape_controls(str(record.msg) % args)
        except (TypeError, ValueError):
            pass
    return escape_controls(record.getMessage())


class KeyValueFormatter(logging.Formatter):
    def __init__(self, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            parts.append(f"ts={stamp}.{int(record.msecs):03d}Z")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"logger={record.name}")
        message = _message(record)
        parts.append(message if message.startswith("event=") else f"msg={json.dumps(message)}")
        if record.exc_info:
            parts.append(f"exc={json.dumps(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JSONFormatter(logging.Formatter):
    def __init__(self, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {"level": record.levelname.lower(), "logger": record.name}
        if self.timestamps:
            body["ts"] = record.created
        message = _message(record)
        if message.startswith("event="):
            for token in message.split(" "):
                key, _, value = token.partition("=")
                if key not in _FIXED_KEYS:
                    body.setdefault(key, value)  # the first event= is the event
        else:
            body["msg"] = message
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def peer_text(value: object, limit: int = 80) -> str:
    """A peer-supplied string as one log token: control characters, spaces and non-ASCII
    escaped, so a calling AE title with a newline cannot forge a log line."""
    text = str(value)[:limit]
    return text.encode("unicode_escape").decode("ascii").replace(" ", "\\x20") or '""'


def configure_logging(settings: LoggingSettings, stream: IO[str] | None = None) -> None:
    """One key=value line per event on stream (stderr), at the configured level."""
    timestamps = not _under_journald()
    formatter: logging.Formatter = (
        JSONFormatter(timestamps) if settings.format == "json" else KeyValueFormatter(timestamps)
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # pynetdicom logs every PDU at INFO; keep it to warnings unless debugging.
    for noisy in ("highdicom", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG if settings.level == "DEBUG" else logging.WARNING
    )
