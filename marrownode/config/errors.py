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


#: Keys whose values an error never repeats (a plain password put in the wrong place, too).
SECRET_KEYS = ("password_hash", "token_sha256", "password", "token")
#: Arrays of tables whose entries an error names by their name, not by their position.
NAMED_TABLES = {"destinations": "[[destinations]]", "users": "[[http.users]]",
                "webhooks": "[[webhooks]]"}
_PREFIXES = ("Value error, ", "Assertion failed, ")


def _key_words(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """node.port; [[destinations]] "pacs" port; [[http.users]] "admin" password_hash."""
    label, keys = "", list[str]()
    value: Any = raw
    for step, part in enumerate(loc):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            value = None
        if isinstance(part, int) and step and loc[step - 1] in NAMED_TABLES:
            name = value.get("name") if isinstance(value, dict) else None
            label = NAMED_TABLES[loc[step - 1]] + (f' "{name}"' if name else f" #{part + 1}")
            keys = []
        elif isinstance(part, int) and keys:
            keys[-1] += f"[{part}]"
        else:
            keys.append(str(part))
    words = " ".join(w for w in (label, ".".join(keys)) if w)
    return words or "(the whole file)"


_HEADER = re.compile(r"\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")
_KEY = re.compile(r"([A-Za-z0-9_-]+)\s*=")


def _written_keys(text: str) -> dict[tuple[str, int | None, str], int]:
    """(table, index in its array of tables or None, key or '') -> line, as written."""
    found: dict[tuple[str, int | None, str], int] = {}
    table, index = "", None
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0].strip()
        header = _HEADER.fullmatch(stripped)
        if header:
            table = header.group(1)
            index = None
            if stripped.startswith("[["):
                index = seen[table] = seen.get(table, -1) + 1
            found.setdefault((table, index, ""), number)
            continue
        key = _KEY.match(stripped)
        if key:
            found.setdefault((table, index, key.group(1)), number)
    return found


def line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line of the key at loc in the TOML text, or of its table when the key is not
    written (a missing key), or None."""
    table = ".".join(str(p) for p in loc[:-1] if not isinstance(p, int))
    indices = [p for p in loc[:-1] if isinstance(p, int)]
    index = indices[-1] if indices else None
    key = "" if not loc or isinstance(loc[-1], int) else str(loc[-1])
    written = _written_keys(text)
    for candidate in ((table, index, key), (table, index, ""), ("", None, table)):
        if candidate in written:
            return written[candidate]
    return None


def format_errors(source: str, error: ValidationError, model: type[BaseModel],
                  raw: dict[str, Any] | None = None, text: str = "") -> str:
    """One line per problem: where (line, key), what is wrong, what was given (never a
    secret's value)."""
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        loc = tuple(item["loc"])
        key = _key_words(loc, raw or {})
        message = str(item["msg"])
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            message = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif item["type"] == "string_pattern_mismatch" and "ae_title" in key:
            message = "AE title must be 1-16 printable ASCII characters without backslash"
        elif item["type"] == "list_type" and loc == ("destinations",):
            message += ": write each destination as a [[destinations]] table (two brackets)"
        got = item.get("input")
        secret = any(str(part) in SECRET_KEYS for part in loc)
        if (item["type"] != "extra_forbidden" and not isinstance(got, dict | list)
                and "(got " not in message):
            message += " (the value is not shown)" if secret else f" (got {got!r})"
        number = line_of(text, loc) if text and loc else None
        lines.append(f"  {f'line {number}: ' if number else ''}{key}: {message}")
    return "\n".join(lines)
