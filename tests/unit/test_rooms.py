"""The house rules of docs/architecture.md, checked on every module's imports (ast, not grep)."""

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


def _runtime_imports(path: Path, module: str) -> set[str]:
    """The marrownode modules a module imports when it runs (anywhere in it, functions
    included; not under TYPE_CHECKING), resolved to modules that exist."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.dump(block.test) for node in ast.walk(block)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return {name for name in found if name.startswith("marrownode")}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the marrownode modules it imports at run time."""
    def name(path: Path) -> str:
        parts = path.relative_to(package.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(path): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for target in _runtime_imports(path, module):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _rooms(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between rooms (marrownode.store, marrownode.report...)."""
    def room(module: str) -> str:
        return ".".join(module.split(".")[:2])

    rooms: dict[str, set[str]] = {}
    for module, targets in graph.items():
        rooms.setdefault(room(module), set()).update(
            room(t) for t in targets if room(t) != room(module))
    return rooms


def test_no_import_cycle_between_modules_or_rooms() -> None:
    """A cycle makes two rooms one: neither can be understood, tested or moved alone. The
    shared piece moves down (console/context.py, uids.py, part10.py) instead."""
    graph = import_graph()
    assert cycles(graph) == []
    assert cycles(_rooms(graph)) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_over_400_lines() -> None:
    """A module past 400 lines does more than one job: split it by job (docs/architecture.md)."""
    long = {str(path.relative_to(PACKAGE)): n for path in _modules()
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


def test_every_pattern_and_kind_has_its_sr_code_and_words() -> None:
    """A new word in the vocabulary must reach the SR's code table and the reader's words
    (a pattern without a code failed the whole set's results)."""
    from marrownode.results.sr import PATTERN_CODES
    from marrownode.vocabulary import PATTERN_MEANINGS, Pattern

    assert set(PATTERN_CODES) == set(Pattern) == set(PATTERN_MEANINGS)
