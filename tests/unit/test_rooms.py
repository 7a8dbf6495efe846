"""The house rules of DESIGN.md, checked on the imports of every module (ast, not grep)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "marrownode"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _modules(folder: str = "") -> list[Path]:
    files = sorted((PACKAGE / folder).rglob("*.py"))
    assert files, folder
    return files


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


@pytest.mark.parametrize("rule, folder, forbidden", [
    ("the upper layer is self-contained", "net/ul",
     ("marrownode.store", "marrownode.config", "marrownode.services", "marrownode.node")),
    ("quant is pure numpy", "quant", ("pydicom", "pynetdicom", "highdicom", "marrownode.net")),
    ("results never open a socket", "results", ("socket", "pynetdicom", "marrownode.net")),
    ("the store knows no DIMSE", "store", ("pynetdicom", "marrownode.net.receiver")),
])
def test_room_rule(rule: str, folder: str, forbidden: tuple[str, ...]) -> None:
    for path in _modules(folder):
        bad = {name for name in _imports(path) if name.startswith(forbidden)}
        assert not bad, f"{rule}: {path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_only_net_imports_pynetdicom() -> None:
    offenders = [str(path.relative_to(PACKAGE)) for path in _modules()
                 if _room(path) != "net" and any(n.startswith("pynetdicom")
                                                 for n in _imports(path))]
    assert offenders == []


def test_only_results_builds_dicom_objects() -> None:
    """highdicom builds objects in results/ alone; requests/ reads request objects (SR, SEG)
    with it and builds nothing."""
    offenders = [str(path.relative_to(PACKAGE)) for path in _modules()
                 if _room(path) not in ("results", "requests")
                 and any(n.startswith("highdicom") for n in _imports(path))]
    assert offenders == []
    readers = PACKAGE / "requests"
    for path in readers.glob("*.py"):
        text = path.read_text()
        assert "save_as" not in text and "dcmwrite" not in text, path.name


def test_the_receiver_does_not_reach_into_the_store() -> None:
    imports = _imports(PACKAGE / "net" / "receiver.py")
    assert not {n for n in imports if n.startswith("marrownode.store")}


def test_only_the_console_speaks_http_frameworks() -> None:
    """Flask and its parts stay in console/; the console reads the index through store.views
    and acts through marrownode.actions, never with SQL of its own."""
    offenders = [str(path.relative_to(PACKAGE)) for path in _modules()
                 if _room(path) != "console"
                 and any(n.startswith(("flask", "werkzeug", "jinja2")) for n in _imports(path))]
    assert offenders == []
    for path in _modules("console"):
        assert "sqlite3" not in _imports(path), path.name
        assert "execute(" not in path.read_text(), path.name
