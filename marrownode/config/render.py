"""The effective settings rendered back as TOML (what check-config prints)."""

from __future__ import annotations

from typing import Any

from marrownode.config.schema import Settings

#: Keys whose values check-config does not print (hashes are still worth guessing against).
_SECRETS = ("password_hash", "token_sha256")
_HIDDEN = '"(set, not shown)"'


def effective_settings_toml(settings: Settings, reveal_secrets: bool = False) -> str:
    """Render settings back as TOML so check-config shows exactly what will run (password
    hashes and token digests as "(set, not shown)" unless reveal_secrets)."""
    data = settings.model_dump(mode="json", exclude_none=True)
    out: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        if isinstance(value, dict):
            hidden = {k for k, v in value.items() if k in _SECRETS and v and not reveal_secrets}
            return "{" + ", ".join(f"{k} = {_HIDDEN if k in hidden else scalar(v)}"
                                   for k, v in value.items()) + "}"
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'

    for section, body in data.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{section}]]")
                out.extend(f"{k} = {scalar(v)}" for k, v in item.items())
                out.append("")
            continue
        out.append(f"[{section}]")
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        out.extend(f"{k} = {scalar(v)}" for k, v in body.items() if k not in nested)
        out.append("")
        for key, sub in nested.items():
            out.append(f"[{section}.{key}]")
            out.extend(f"{k} = {scalar(v)}" for k, v in sub.items())
            out.append("")
    return "\n".join(out)
