"""What the commands share: where the configuration comes from, exit codes, the index and
the operator's actions as the command line opens them, times in the operator's words."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marrownode.config import Settings, load_settings

if TYPE_CHECKING:
    from marrownode.actions import Operator


EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INDEX_DAMAGED = 0, 1, 2, 3


DEFAULT_CONFIG = Path("/etc/marrownode/marrownode.toml")


CONFIG_ENVIRONMENT = "MARROWNODE_CONFIG"


def config_path(given: Path | None, default: Path = DEFAULT_CONFIG) -> Path | None:
    """--config, else $MARROWNODE_CONFIG, else the default file if it exists; None means the
    embedded defaults."""
    if given is not None:
        return given
    if os.environ.get(CONFIG_ENVIRONMENT):
        return Path(os.environ[CONFIG_ENVIRONMENT])
    return default if default.is_file() else None


def load_for(given: Path | None) -> Settings:
    """The settings of --config, $MARROWNODE_CONFIG, /etc/marrownode or the defaults."""
    return load_settings(config_path(given))


def format_time(epoch: float | None) -> str:
    """An epoch time in the operator's local time ('-' when there is none)."""
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def format_age(seconds: float) -> str:
    """12 s, 4 min 05 s, 3 h 20 min."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def command_line_operator(settings: Settings) -> Operator:
    """The operator's actions on the configured node's index and spool."""
    from marrownode.actions import Operator
    from marrownode.receiving import open_spool

    return Operator(open_index(settings), open_spool(settings),
                    [d.name for d in settings.destinations])


def command_line_actor() -> str:
    """Who acts, as the trail records it: the user on the command line."""
    try:
        return f"{getpass.getuser()} on the command line"
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "the command line"


def act(action: Callable[[], str]) -> int:
    """Run an operator action; its refusal is a usage error with the reason."""
    from marrownode.actions import ActionRefused

    try:
        print(action())
    except ActionRefused as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def open_index(settings: Settings, read_only: bool = False) -> Any:
    """The configured node's index; FileNotFoundError when it has none yet."""
    from marrownode.store.database import index_path
    from marrownode.store.index import Index

    path = index_path(settings.storage.root)
    if not path.exists():
        raise FileNotFoundError(f"no index at {path}")
    return Index(path, read_only=read_only)
