"""Configuration errors in an administrator's words: the file, the key, what is allowed."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """A configuration problem the administrator can fix; the message says what and where."""


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys a section accepts, so 'unknown key' errors can list the alternatives."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:
            return None
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
                break
        else:
            return None
    return sorted(current.model_fields) if hasattr(current, "model_fields") else None


def format_errors(source: str, error: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: key, what is wrong, what was given."""
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc)
        key = re.sub(r"\.\[", "[", key) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            message = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif item["type"] == "string_pattern_mismatch" and "ae_title" in key:
            message = "AE title must be 1-16 printable ASCII characters without backslash"
        elif item["type"] == "list_type" and loc == ("destinations",):
            message += ": write each destination as a [[destinations]] table (two brackets)"
        got = item.get("input")
        if item["type"] != "extra_forbidden" and not isinstance(got, dict | list):
            message += f" (got {got!r})"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)
