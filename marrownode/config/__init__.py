"""Typed settings loaded from TOML.

Every key is optional; a missing file section means the embedded defaults. Every error names the
file, the key and what is allowed, because the person reading it is a PACS administrator editing
a file over SSH, not a Python developer. The schema is in schema.py, the wording of errors in
errors.py, the TOML that check-config prints in render.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from marrownode.config.errors import ConfigError, format_errors
from marrownode.config.render import effective_settings_toml
from marrownode.config.schema import (
    AE_TITLE_PATTERN,
    AnalysisSettings,
    CompletionSettings,
    ConsoleUser,
    Destination,
    HTTPSettings,
    LoggingSettings,
    NodeSettings,
    OutboxSettings,
    OutputSettings,
    Settings,
    StorageSettings,
    ThresholdEntry,
    TLSSettings,
    Webhook,
    content_digest,
)

__all__ = ["AE_TITLE_PATTERN", "AnalysisSettings", "CompletionSettings", "ConfigError",
           "ConsoleUser", "Destination", "HTTPSettings", "LoggingSettings", "NodeSettings",
           "OutboxSettings", "OutputSettings", "Settings", "StorageSettings", "TLSSettings",
           "ThresholdEntry", "Webhook", "content_digest", "effective_settings_toml",
           "load_settings", "settings_from_mapping"]


def load_settings(path: Path | str | None = None) -> Settings:
    """Read settings from a TOML file, or the embedded defaults when path is None."""
    if path is None:
        return Settings()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from exc
    return settings_from_mapping(raw, source=str(path), text=text)


def settings_from_mapping(raw: dict[str, Any], source: str = "<mapping>",
                          text: str = "") -> Settings:
    """Validate a parsed configuration; ConfigError names source, line (from text), key and
    what is allowed."""
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc, Settings, raw, text)) from exc
    tls = settings.node.tls
    if tls is not None:
        for name in ("cert", "key", "ca"):
            file = getattr(tls, name)
            if file is not None and not Path(file).is_file():
                raise ConfigError(
                    f"invalid configuration in {source}:\n  node.tls.{name}: "
                    f"file not found (got {str(file)!r})"
                )
    return settings
