"""The configuration as the installed service reads it: the unit hands the service its files
as systemd credentials (LoadCredential=NAME:SOURCE), and paths in the configuration may name
them as ${CREDENTIALS_DIRECTORY}/NAME. `check-config --for-service` resolves those names the
way systemd will, so a missing key file is found before the service fails to start."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from marrownode.config.errors import ConfigError

DEFAULT_UNIT = Path("/etc/systemd/system/marrownode.service")


def credentials(unit_text: str) -> dict[str, Path]:
    """NAME -> SOURCE of every LoadCredential= line of a unit (commented ones left out)."""
    found: dict[str, Path] = {}
    for line in unit_text.splitlines():
        line = line.strip()
        if line.startswith("LoadCredential="):
            name, _, source = line.removeprefix("LoadCredential=").partition(":")
            found[name.strip()] = Path(source.strip() or f"/etc/credstore/{name.strip()}")
    return found


@contextmanager
def as_the_service(unit: Path) -> Iterator[dict[str, Path]]:
    """CREDENTIALS_DIRECTORY set to a directory whose entries stand for the unit's
    credentials (links to their sources), while the block runs; yields the credentials.
    A credential whose source is missing or unreadable is a ConfigError naming both."""
    try:
        named = credentials(unit.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the unit {unit}: {exc.strerror}") from exc
    for name, source in named.items():
        if not os.access(source, os.R_OK):
            raise ConfigError(f"{unit}: LoadCredential={name}:{source}: the file is missing "
                              "or unreadable; systemd would refuse to start the service")
    previous = os.environ.get("CREDENTIALS_DIRECTORY")
    with tempfile.TemporaryDirectory(prefix="marrownode-credentials-") as folder:
        for name, source in named.items():
            (Path(folder) / name).symlink_to(source.resolve())
        os.environ["CREDENTIALS_DIRECTORY"] = folder
        try:
            yield named
        finally:
            if previous is None:
                os.environ.pop("CREDENTIALS_DIRECTORY", None)
            else:
                os.environ["CREDENTIALS_DIRECTORY"] = previous
