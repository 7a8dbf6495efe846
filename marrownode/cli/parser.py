"""The command line's grammar: every command, option and its help."""

from __future__ import annotations

import argparse
from pathlib import Path

from marrownode import __version__


def _config(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", type=Path,
                         help="configuration file (default: $MARROWNODE_CONFIG, else "
                              "/etc/marrownode/marrownode.toml if it exists, else the "
                              "embedded defaults)")


def build_parser() -> argparse.ArgumentParser:
    """Every command, its options and their help."""
    parser = argparse.ArgumentParser(
        prog="marrownode", description="DICOM node for bone-marrow chemical-shift analysis"
    )
    parser.add_argument("--version", action="version", version=f"marrownode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the node until SIGTERM/SIGINT")
    _config(serve)

    process = sub.add_parser("process", help="analyse DICOM files/folders offline")
    process.add_argument("paths", nargs="+", type=Path,
                         help="DICOM files or folders (searched recursively)")
    process.add_argument("--out", type=Path, required=True,
                         help="folder for the result objects and report.json")
    _config(process)

    demo = sub.add_parser("demo", help="the whole loop on loopback with a synthetic study")
    demo.add_argument("--out", type=Path, default=None,
                      help="folder for what the demo leaves (default ./marrownode-demo)")

    check = sub.add_parser("check-config", help="validate a config and print effective settings")
    check.add_argument("file", type=Path, help="the configuration file (TOML)")
    check.add_argument("--for-service", action="store_true",
                       help="resolve ${CREDENTIALS_DIRECTORY} paths through the unit's "
                            "LoadCredential= lines, as the installed service will")
    check.add_argument("--unit", type=Path, default=Path("/etc/systemd/system/marrownode.service"),
                       help="the unit file read by --for-service (default: %(default)s)")

    echo = sub.add_parser(
        "echo", help="C-ECHO this node, a configured destination, or HOST PORT",
        description="marrownode echo [NAME] | marrownode echo --aec AE HOST PORT")
    _config(echo)
    echo.add_argument("--aet", help="calling AE title (default: one the node allows)")
    echo.add_argument("--aec", help="called AE title (with HOST PORT; default ANY-SCP)")
    echo.add_argument("target", nargs="*",
                      help="a destination name, or HOST PORT (default: this node)")

    status = sub.add_parser("status", help="what the index knows")
    _config(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    retry = sub.add_parser("retry", help="send failed results again now (and end backoff)")
    _config(retry)
    retry.add_argument("--destination", help="only this destination")
    retry.add_argument("--study", help="only this Study Instance UID")

    rebuild = sub.add_parser(
        "rebuild-index", help="keep a damaged index aside and index the spool afresh")
    _config(rebuild)

    for name, what in (("pause", "send nothing to a destination until resumed"),
                       ("resume", "send to a paused destination again, backlog at once")):
        action = sub.add_parser(name, help=what)
        action.add_argument("destination", help="the [[destinations]] name")
        _config(action)
    reanalyse = sub.add_parser("reanalyse", help="analyse a study again (and send its results)")
    reanalyse.add_argument("study", help="the Study Instance UID")
    _config(reanalyse)
    delete = sub.add_parser("delete", help="remove a study: spool, results, index rows")
    delete.add_argument("study", help="the Study Instance UID")
    delete.add_argument("--yes", action="store_true", help="confirm the deletion")
    _config(delete)
    history = sub.add_parser("history", help="a study's trail: received, analysed, delivered")
    history.add_argument("study", help="the Study Instance UID")
    _config(history)
    sub.add_parser("hash-password", help="hash a console password for [[http.users]] "
                                         "(asks for it, or reads one line from stdin)")
    sub.add_parser("new-token", help="a random API token for [[http.users]] and its digest")
    return parser
