"""The command line's grammar: every command, option and its help."""

from __future__ import annotations

import argparse
from pathlib import Path

from marrownode import __version__


def build_parser() -> argparse.ArgumentParser:
    """Every command, its options and their help."""
    parser = argparse.ArgumentParser(
        prog="marrownode", description="DICOM node for bone-marrow chemical-shift analysis"
    )
    parser.add_argument("--version", action="version", version=f"marrownode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the node until SIGTERM/SIGINT")
    serve.add_argument("--config", type=Path)

    process = sub.add_parser("process", help="analyse DICOM files/folders offline")
    process.add_argument("paths", nargs="+", type=Path)
    process.add_argument("--out", type=Path, required=True)
    process.add_argument("--config", type=Path)

    demo = sub.add_parser("demo", help="the whole loop on loopback with a synthetic study")
    demo.add_argument("--out", type=Path, default=None)

    check = sub.add_parser("check-config", help="validate a config and print effective settings")
    check.add_argument("file", type=Path)

    echo = sub.add_parser(
        "echo", help="C-ECHO this node, a configured destination, or HOST PORT",
        description="marrownode echo [NAME] | marrownode echo --aec AE HOST PORT")
    echo.add_argument("--config", type=Path)
    echo.add_argument("--aet", help="calling AE title (default: one the node allows)")
    echo.add_argument("--aec", help="called AE title (with HOST PORT; default ANY-SCP)")
    echo.add_argument("target", nargs="*",
                      help="a destination name, or HOST PORT (default: this node)")

    status = sub.add_parser("status", help="what the index knows")
    status.add_argument("--config", type=Path)
    status.add_argument("--json", action="store_true")

    retry = sub.add_parser("retry", help="send failed results again now (and end backoff)")
    retry.add_argument("--config", type=Path)
    retry.add_argument("--destination", help="only this destination")
    retry.add_argument("--study", help="only this Study Instance UID")

    rebuild = sub.add_parser(
        "rebuild-index", help="keep a damaged index aside and index the spool afresh")
    rebuild.add_argument("--config", type=Path)

    for name, what in (("pause", "send nothing to a destination until resumed"),
                       ("resume", "send to a paused destination again, backlog at once")):
        action = sub.add_parser(name, help=what)
        action.add_argument("destination")
        action.add_argument("--config", type=Path)
    reanalyse = sub.add_parser("reanalyse", help="analyse a study again (and send its results)")
    reanalyse.add_argument("study")
    reanalyse.add_argument("--config", type=Path)
    delete = sub.add_parser("delete", help="remove a study: spool, results, index rows")
    delete.add_argument("study")
    delete.add_argument("--yes", action="store_true", help="confirm")
    delete.add_argument("--config", type=Path)
    history = sub.add_parser("history", help="a study's trail: received, analysed, delivered")
    history.add_argument("study")
    history.add_argument("--config", type=Path)
    sub.add_parser("hash-password", help="hash a console password for [[http.users]] "
                                         "(asks for it, or reads one line from stdin)")
    sub.add_parser("new-token", help="a random API token for [[http.users]] and its digest")
    return parser
