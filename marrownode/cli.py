"""Command line: serve, process, demo, check-config, echo, status, and the operator's
actions: retry, pause, resume, reanalyse, delete, history, rebuild-index; hash-password and
new-token for the web console's users.

Exit codes: 0 ok, 2 bad usage or bad configuration (the message says what and where),
1 runtime failure, 3 the index is damaged (the message names the command that rebuilds it;
the systemd unit does not restart on 2 or 3: both need the operator).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marrownode import __version__
from marrownode.config import ConfigError, Settings, effective_settings_toml, load_settings
from marrownode.logs import configure_logging
from marrownode.store.database import IndexDamaged

if TYPE_CHECKING:
    from marrownode.actions import Operator

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


#: Where a node's configuration lives when neither --config nor the environment says.
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


def _load(given: Path | None) -> Settings:
    return load_settings(config_path(given))


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    print(f"# {args.file}: valid. Effective settings:")
    for warning in settings.warnings():
        print(f"# warning: {warning}")
    print(effective_settings_toml(settings))
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from marrownode.node import Node
    from marrownode.store.lock import StorageLocked

    settings = _load(args.config)
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


def _echo_target(args: argparse.Namespace,
                 settings: Settings) -> tuple[str, int, str, str] | str:
    """(host, port, called, calling) for the echo asked for, or what is wrong with the ask."""
    node = settings.node
    # Echoing the node itself must pass its own allow-list: call as an AE it accepts.
    calling = args.aet or (node.allowed_calling_aets[0] if node.allowed_calling_aets
                           else node.ae_title)
    if len(args.target) == 2:
        host, port = args.target
        if not port.isdigit() or not 0 < int(port) < 65536:
            return f"port must be a number from 1 to 65535, not {port!r}"
        return host, int(port), args.aec or "ANY-SCP", args.aet or node.ae_title
    if len(args.target) > 2:
        return "give a destination name, or HOST PORT"
    if not args.target:
        host = "127.0.0.1" if node.host in ("0.0.0.0", "::", "") else node.host
        return host, node.port, node.ae_title, calling
    matches = [d for d in settings.destinations if d.name == args.target[0]]
    if not matches:
        names = ", ".join(d.name for d in settings.destinations) or "(none configured)"
        return f"unknown destination {args.target[0]!r}; configured: {names}"
    return matches[0].host, matches[0].port, matches[0].ae_title, args.aet or node.ae_title


def _cmd_echo(args: argparse.Namespace) -> int:
    from marrownode.net.echo import echo

    target = _echo_target(args, _load(args.config))
    if isinstance(target, str):
        print(f"marrownode echo: {target}", file=sys.stderr)
        return EXIT_USAGE
    host, port, called, calling = target
    try:
        status = echo(host, port, called, calling)
    except ConnectionError as exc:
        print(f"echo failed: {exc} (calling AE {calling})", file=sys.stderr)
        return EXIT_FAILURE
    print(f"C-ECHO {called}@{host}:{port} from {calling}: status 0x{status:04X}")
    return EXIT_OK if status == 0 else EXIT_FAILURE


def _format_time(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _format_age(seconds: float) -> str:
    """12 s, 4 min 05 s, 3 h 20 min."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _cmd_status(args: argparse.Namespace) -> int:
    from marrownode.store.database import index_path
    from marrownode.store.index import Index

    settings = _load(args.config)
    path = index_path(settings.storage.root)
    if not path.exists():
        source = config_path(args.config) or "the embedded defaults"
        print(f"no index at {path} (settings from {source}): has the node received anything, "
              f"and is this its configuration? Pass --config or set {CONFIG_ENVIRONMENT}",
              file=sys.stderr)
        return EXIT_FAILURE
    index = Index(path, read_only=True)  # a look never writes (it works on a full disk)
    index.db.check()
    report = index.status()
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    _print_status(report)
    return EXIT_OK


def _print_status(report: dict[str, Any]) -> None:
    print(f"instances: {report['instances']}   studies: {len(report['studies'])}")
    for destination in report.get("destinations", []):
        age = destination.get("oldest_pending_seconds")
        if age is not None:
            print(f"destination {destination['destination']}: oldest undelivered result "
                  f"waiting {_format_age(age)}")
        if destination.get("paused"):
            print(f"destination {destination['destination']}: paused by an operator "
                  "(marrownode resume to send again)")
        elif destination["failures"]:
            print(f"destination {destination['destination']}: not answering "
                  f"({destination['failures']} attempts, last error "
                  f"{destination['last_error']}); next try "
                  f"{_format_time(destination['next_attempt_at'])}")
    for study in report["studies"]:
        named = "  ".join(f"{label} {study[key]}" for label, key in (
            ("accession", "accession_number"), ("date", "study_date"),
            ("description", "study_description")) if study.get(key))
        print(
            f"\nstudy {study['study_instance_uid']}" + (f"\n  {named}" if named else "")
            + f"\n  instances {study['instances']}  state {study['state']}"
            + (f" ({study['reason']})" if study["reason"] else "")
            + f"  last received {_format_time(study['last_received'])}"
        )
        for dixon_set in study["dixon_sets"]:
            print(f"  set {dixon_set['key']}: {dixon_set['state']}"
                  + (f" - {dixon_set['reason']}" if dixon_set["reason"] else ""))
        for delivery in study.get("deliveries", []):
            print(
                f"  destination {delivery['destination']}: delivered {delivery['delivered']}"
                f" pending {delivery['pending']}"
                + (f" (next try {_format_time(delivery['next_attempt_at'])}"
                   + (f", last error {delivery['last_error']}" if delivery["last_error"] else "")
                   + ")" if delivery["pending"] else "")
                + f" failed {delivery['failed']}"
                + (f" ({delivery['failed_reason']})" if delivery["failed"] else "")
            )


def _operator(settings: Settings) -> Operator:
    """The operator's actions on the configured node's index and spool."""
    from marrownode.actions import Operator
    from marrownode.receiving import open_spool

    return Operator(_open_index(settings), open_spool(settings),
                    [d.name for d in settings.destinations])


def _command_line_actor() -> str:
    try:
        return f"{getpass.getuser()} on the command line"
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "the command line"


def _act(action: Callable[[], str]) -> int:
    """Run an operator action; its refusal is a usage error with the reason."""
    from marrownode.actions import ActionRefused

    try:
        print(action())
    except ActionRefused as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace) -> int:
    operator = _operator(_load(args.config))

    def retry() -> str:
        count = operator.retry(_command_line_actor(), args.destination, args.study)
        return (f"{count} result(s) queued again"
                + (f" for {args.destination}" if args.destination else "")
                + "; a running node sends them within a second")
    return _act(retry)


def _open_index(settings: Settings, read_only: bool = False) -> Any:
    from marrownode.store.database import index_path
    from marrownode.store.index import Index

    path = index_path(settings.storage.root)
    if not path.exists():
        raise FileNotFoundError(f"no index at {path}")
    return Index(path, read_only=read_only)


def _cmd_pause_resume(args: argparse.Namespace) -> int:
    operator = _operator(_load(args.config))
    paused = args.command == "pause"

    def pause() -> str:
        operator.pause(_command_line_actor(), args.destination, paused)
        return f"{args.destination}: {'paused' if paused else 'resumed'}"
    return _act(pause)


def _cmd_reanalyse(args: argparse.Namespace) -> int:
    operator = _operator(_load(args.config))

    def reanalyse() -> str:
        operator.reanalyse(_command_line_actor(), args.study)
        return f"{args.study}: queued for analysis; a running node starts within a second"
    return _act(reanalyse)


def _cmd_delete(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if not args.yes:
        print("deleting removes the study's received images, results and history; "
              "add --yes to confirm", file=sys.stderr)
        return EXIT_USAGE
    operator = _operator(settings)

    def delete() -> str:
        count = operator.delete(_command_line_actor(), args.study)
        return f"{args.study}: deleted ({count} instances)"
    return _act(delete)


def _cmd_hash_password(args: argparse.Namespace) -> int:
    from marrownode.console.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return EXIT_USAGE
    else:
        password = sys.stdin.readline().rstrip("\n")
    try:
        print(f'password_hash = "{hash_password(password)}"')
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _cmd_new_token(args: argparse.Namespace) -> int:
    from marrownode.console.auth import new_token

    token, digest = new_token()
    print(f"token (give it to the script; it is not stored): {token}")
    print(f'token_sha256 = "{digest}"')
    return EXIT_OK


def _cmd_history(args: argparse.Namespace) -> int:
    index = _open_index(_load(args.config), read_only=True)
    events = index.studies.events(args.study)
    if not events:
        print(f"no history for {args.study}", file=sys.stderr)
        return EXIT_FAILURE
    for event in events:
        print(f"{_format_time(event['at'])}\t{event['kind']}\t{event['detail']}")
    return EXIT_OK


def _cmd_rebuild_index(args: argparse.Namespace) -> int:
    from marrownode.store.lock import StorageLocked
    from marrownode.store.rebuild import rebuild_index

    settings = _load(args.config)
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

    settings = _load(args.config)
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
    "pause": _cmd_pause_resume,
    "resume": _cmd_pause_resume,
    "reanalyse": _cmd_reanalyse,
    "delete": _cmd_delete,
    "history": _cmd_history,
    "hash-password": _cmd_hash_password,
    "new-token": _cmd_new_token,
}


def main(argv: list[str] | None = None) -> int:
    """The `marrownode` command; returns the exit code (0 ok, 2 usage or config, 1 failure)."""
    args = _parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
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
    except FileNotFoundError as exc:
        print(f"marrownode {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # `marrownode status | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
