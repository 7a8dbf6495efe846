"""Command line: serve, process, demo, check-config, echo, status, retry, rebuild-index.

Exit codes: 0 ok, 2 bad usage or bad configuration (the message says what and where),
1 runtime failure, 3 the index is damaged (the message names the command that rebuilds it;
the systemd unit does not restart on 2 or 3: both need the operator).
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path

from marrownode import __version__
from marrownode.config import ConfigError, effective_settings_toml, load_settings
from marrownode.logs import configure_logging
from marrownode.store.database import IndexDamaged

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INDEX_DAMAGED = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
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

    echo = sub.add_parser("echo", help="C-ECHO this node or a configured destination")
    echo.add_argument("--config", type=Path)
    echo.add_argument("destination", nargs="?", help="destination name (default: this node)")

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
    return parser


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    print(f"# {args.file}: valid. Effective settings:")
    print(effective_settings_toml(settings))
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from marrownode.node import Node
    from marrownode.store.lock import StorageLocked

    settings = load_settings(args.config)
    configure_logging(settings.logging)
    try:
        node = Node(settings)
    except StorageLocked as exc:
        print(f"marrownode serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        node.serve_forever()
    except OSError as exc:
        logging.getLogger("marrownode").error("event=serve_failed error=%s", exc)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_echo(args: argparse.Namespace) -> int:
    from marrownode.net.echo import echo

    settings = load_settings(args.config)
    if args.destination is None:
        host = "127.0.0.1" if settings.node.host in ("0.0.0.0", "::", "") else settings.node.host
        target = (host, settings.node.port, settings.node.ae_title)
    else:
        matches = [d for d in settings.destinations if d.name == args.destination]
        if not matches:
            names = ", ".join(d.name for d in settings.destinations) or "(none configured)"
            print(f"unknown destination {args.destination!r}; configured: {names}",
                  file=sys.stderr)
            return EXIT_USAGE
        target = (matches[0].host, matches[0].port, matches[0].ae_title)
    try:
        status = echo(target[0], target[1], target[2], settings.node.ae_title)
    except ConnectionError as exc:
        print(f"echo failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"C-ECHO {target[2]}@{target[0]}:{target[1]} status 0x{status:04X}")
    return EXIT_OK if status == 0 else EXIT_FAILURE


def _format_time(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _cmd_status(args: argparse.Namespace) -> int:
    from marrownode.store.database import index_path
    from marrownode.store.index import Index

    settings = load_settings(args.config)
    path = index_path(settings.storage.root)
    if not path.exists():
        print(f"no index at {path} (has the node received anything?)", file=sys.stderr)
        return EXIT_FAILURE
    index = Index(path)
    index.db.check()
    report = index.status()
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"instances: {report['instances']}   studies: {len(report['studies'])}")
    for study in report["studies"]:
        print(
            f"\nstudy {study['study_instance_uid']}\n"
            f"  instances {study['instances']}  state {study['state']}"
            + (f" ({study['reason']})" if study["reason"] else "")
            + f"  last received {_format_time(study['last_received'])}"
        )
        for dixon_set in study["dixon_sets"]:
            print(f"  set {dixon_set['key']}: {dixon_set['state']}"
                  + (f" - {dixon_set['reason']}" if dixon_set["reason"] else ""))
        for delivery in study.get("deliveries", []):
            print(
                f"  destination {delivery['destination']}: delivered {delivery['delivered']}"
                f" pending {delivery['pending']} failed {delivery['failed']}"
            )
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace) -> int:
    from marrownode.store.database import index_path
    from marrownode.store.index import Index

    settings = load_settings(args.config)
    names = [d.name for d in settings.destinations]
    if args.destination is not None and args.destination not in names:
        print(f"unknown destination {args.destination!r}; configured: "
              f"{', '.join(names) or '(none)'}", file=sys.stderr)
        return EXIT_USAGE
    path = index_path(settings.storage.root)
    if not path.exists():
        print(f"no index at {path}", file=sys.stderr)
        return EXIT_FAILURE
    count = Index(path).outbox.retry(args.destination, args.study)
    print(f"{count} result(s) queued again"
          + (f" for {args.destination}" if args.destination else "")
          + "; a running node sends them within a second")
    return EXIT_OK


def _cmd_rebuild_index(args: argparse.Namespace) -> int:
    from marrownode.store.lock import StorageLocked
    from marrownode.store.rebuild import rebuild_index

    settings = load_settings(args.config)
    try:
        rebuilt = rebuild_index(settings.storage.root)
    except StorageLocked as exc:
        print(f"marrownode rebuild-index: {exc}; stop it first", file=sys.stderr)
        return EXIT_USAGE
    if rebuilt.kept_as is not None:
        print(f"the old index is kept as {rebuilt.kept_as}")
    print(f"index rebuilt from the spool: {rebuilt.instances} instances, {rebuilt.studies} "
          "studies (they are analysed again and their results re-sent when the node starts)")
    return EXIT_OK


def _cmd_process(args: argparse.Namespace) -> int:
    from marrownode.pipeline import process_paths

    settings = load_settings(args.config)
    configure_logging(settings.logging)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    report = process_paths(args.paths, args.out, settings)
    sets = sum(len(s["dixon_sets"]) for s in report["studies"])
    studies = len(report["studies"])
    print(f"{studies} studies, {sets} Dixon sets; report: {args.out / 'report.json'}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from marrownode.demo import run_demo

    return run_demo(args.out)


COMMANDS = {
    "serve": _cmd_serve,
    "process": _cmd_process,
    "demo": _cmd_demo,
    "check-config": _cmd_check_config,
    "echo": _cmd_echo,
    "status": _cmd_status,
    "retry": _cmd_retry,
    "rebuild-index": _cmd_rebuild_index,
}


def main(argv: list[str] | None = None) -> int:
    """The `marrownode` command; returns the exit code (0 ok, 2 usage or config, 1 failure)."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except IndexDamaged as exc:
        print(f"marrownode {args.command}: {exc}", file=sys.stderr)
        return EXIT_INDEX_DAMAGED
    except sqlite3.DatabaseError as exc:  # damage found past the start-up check
        if not isinstance(exc, sqlite3.OperationalError) or "malformed" in str(exc):
            print(f"marrownode {args.command}: the index is damaged ({exc}); stop the node "
                  "and run `marrownode rebuild-index` with the same --config", file=sys.stderr)
            return EXIT_INDEX_DAMAGED
        raise
    except KeyboardInterrupt:
        return EXIT_FAILURE
