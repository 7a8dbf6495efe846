"""The operator's commands on a node's index: status, history, retry, pause, resume,
reanalyse, delete, rebuild-index, and the console's hash-password and new-token."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from marrownode.cli.common import (
    CONFIG_ENVIRONMENT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    act,
    command_line_actor,
    command_line_operator,
    config_path,
    format_age,
    format_time,
    load_for,
    open_index,
)
from marrownode.logs import escape_controls


def cmd_status(args: argparse.Namespace) -> int:
    """`status`: what the index knows (read-only), as a table or JSON."""
    from marrownode.store.database import index_path
    from marrownode.store.index import Index

    settings = load_for(args.config)
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


def _terminal_safe(value: Any) -> Any:
    """value with every string's control characters escaped: a study description or an error
    from a peer cannot clear the operator's screen or forge a line."""
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, dict):
        return {key: _terminal_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_terminal_safe(item) for item in value]
    return value


def _print_status(report: dict[str, Any]) -> None:
    report = _terminal_safe(report)
    print(f"instances: {report['instances']}   studies: {len(report['studies'])}")
    for destination in report.get("destinations", []):
        age = destination.get("oldest_pending_seconds")
        if age is not None:
            print(f"destination {destination['destination']}: oldest undelivered result "
                  f"waiting {format_age(age)}")
        if destination.get("paused"):
            print(f"destination {destination['destination']}: paused by an operator "
                  "(marrownode resume to send again)")
        elif destination["failures"]:
            print(f"destination {destination['destination']}: not answering "
                  f"({destination['failures']} attempts, last error "
                  f"{destination['last_error']}); next try "
                  f"{format_time(destination['next_attempt_at'])}")
    for study in report["studies"]:
        named = "  ".join(f"{label} {study[key]}" for label, key in (
            ("accession", "accession_number"), ("date", "study_date"),
            ("description", "study_description")) if study.get(key))
        print(
            f"\nstudy {study['study_instance_uid']}" + (f"\n  {named}" if named else "")
            + f"\n  instances {study['instances']}  state {study['state']}"
            + (f" ({study['reason']})" if study["reason"] else "")
            + f"  last received {format_time(study['last_received'])}"
        )
        for dixon_set in study["dixon_sets"]:
            print(f"  set {dixon_set['key']}: {dixon_set['state']}"
                  + (f" - {dixon_set['reason']}" if dixon_set["reason"] else ""))
        for delivery in study.get("deliveries", []):
            print(
                f"  destination {delivery['destination']}: delivered {delivery['delivered']}"
                f" pending {delivery['pending']}"
                + (f" (next try {format_time(delivery['next_attempt_at'])}"
                   + (f", last error {delivery['last_error']}" if delivery["last_error"] else "")
                   + ")" if delivery["pending"] else "")
                + f" failed {delivery['failed']}"
                + (f" ({delivery['failed_reason']})" if delivery["failed"] else "")
            )


def cmd_retry(args: argparse.Namespace) -> int:
    """`retry`: send failed results again now."""
    operator = command_line_operator(load_for(args.config))

    def retry() -> str:
        count = operator.retry(command_line_actor(), args.destination, args.study)
        return (f"{count} result(s) queued again"
                + (f" for {args.destination}" if args.destination else "")
                + "; a running node sends them within a second")
    return act(retry)


def cmd_pause_resume(args: argparse.Namespace) -> int:
    """`pause|resume DESTINATION`."""
    operator = command_line_operator(load_for(args.config))
    paused = args.command == "pause"

    def pause() -> str:
        operator.pause(command_line_actor(), args.destination, paused)
        return f"{args.destination}: {'paused' if paused else 'resumed'}"
    return act(pause)


def cmd_reanalyse(args: argparse.Namespace) -> int:
    """`reanalyse STUDY_UID`."""
    operator = command_line_operator(load_for(args.config))

    def reanalyse() -> str:
        operator.reanalyse(command_line_actor(), args.study)
        return f"{args.study}: queued for analysis; a running node starts within a second"
    return act(reanalyse)


def cmd_delete(args: argparse.Namespace) -> int:
    """`delete STUDY_UID --yes`: images, results and index rows."""
    settings = load_for(args.config)
    if not args.yes:
        print("deleting removes the study's received images, results and history; "
              "add --yes to confirm", file=sys.stderr)
        return EXIT_USAGE
    operator = command_line_operator(settings)

    def delete() -> str:
        count = operator.delete(command_line_actor(), args.study)
        return f"{args.study}: deleted ({count} instances)"
    return act(delete)


def cmd_hash_password(args: argparse.Namespace) -> int:
    """`hash-password`: the password_hash line for a console user."""
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


def cmd_new_token(args: argparse.Namespace) -> int:
    """`new-token`: a random API token and its token_sha256 line."""
    from marrownode.console.auth import new_token

    token, digest = new_token()
    print(f"token (give it to the script; it is not stored): {token}")
    print(f'token_sha256 = "{digest}"')
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    """`history STUDY_UID`: the study's trail (read-only)."""
    index = open_index(load_for(args.config), read_only=True)
    events = index.studies.events(args.study)
    if not events:
        print(f"no history for {args.study}", file=sys.stderr)
        return EXIT_FAILURE
    for event in _terminal_safe(events):
        print(f"{format_time(event['at'])}\t{event['kind']}\t{event['detail']}")
    return EXIT_OK


def cmd_rebuild_index(args: argparse.Namespace) -> int:
    """`rebuild-index`: keep a damaged index aside and index the spool afresh."""
    from marrownode.store.lock import StorageLocked
    from marrownode.store.rebuild import rebuild_index

    settings = load_for(args.config)
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
