"""One event per line: key=value (default) or JSON; no timestamps when journald adds its own."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO

from marrownode.config import LoggingSettings


def _under_journald() -> bool:
    # systemd sets JOURNAL_STREAM when stderr goes to the journal.
    return bool(os.environ.get("JOURNAL_STREAM"))


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
        message = record.getMessage()
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
        message = record.getMessage()
        if message.startswith("event="):
            for token in message.split(" "):
                key, _, value = token.partition("=")
                body[key] = value
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
