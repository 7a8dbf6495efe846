"""The commands that run the node or its analysis: serve, process, demo, check-config, echo."""

from __future__ import annotations

import argparse
import logging
import sys

from marrownode.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    load_for,
)
from marrownode.config import Settings, effective_settings_toml, load_settings
from marrownode.logs import configure_logging


def cmd_check_config(args: argparse.Namespace) -> int:
    """`check-config FILE`: validate, print the effective settings and warnings (with
    --for-service: credential paths resolved through the unit, as the service will)."""
    if args.for_service:
        from marrownode.config.service import as_the_service

        with as_the_service(args.unit) as named:
            settings = load_settings(args.file)
        print(f"# {args.file}: valid for the service of {args.unit} (credentials: "
              f"{', '.join(f'{n} <- {s}' for n, s in named.items()) or 'none'}). "
              "Effective settings:")
        if args.file.resolve() not in {source.resolve() for source in named.values()}:
            print(f"# warning: {args.unit} does not hand {args.file} to the service "
                  "(LoadCredential=marrownode.toml:...): the service reads another file")
    else:
        settings = load_settings(args.file)
        print(f"# {args.file}: valid. Effective settings:")
    for warning in settings.warnings():
        print(f"# warning: {warning}")
    print(effective_settings_toml(settings))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """`serve`: run the node until SIGTERM or SIGINT."""
    from marrownode.node import Node
    from marrownode.store.lock import StorageLocked

    settings = load_for(args.config)
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


def cmd_echo(args: argparse.Namespace) -> int:
    """`echo`: C-ECHO this node, a configured destination, or HOST PORT."""
    from marrownode.net.echo import echo

    target = _echo_target(args, load_for(args.config))
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


def cmd_process(args: argparse.Namespace) -> int:
    """`process PATH... --out DIR`: analyse every study offline."""
    from marrownode.findings_text import print_findings
    from marrownode.pipeline import failures, process_paths

    settings = load_for(args.config)
    configure_logging(settings.logging)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    report = process_paths(args.paths, args.out, settings)
    for study in report["studies"]:
        print_findings(study)
    sets = sum(len(s["dixon_sets"]) for s in report["studies"])
    studies = len(report["studies"])
    print(f"{studies} studies, {sets} Dixon sets; report: {args.out / 'report.json'}")
    failed = failures(report)
    for line in failed:  # every other result is written; these did not come out
        print(f"failed: {line}", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """`demo`: the whole loop on loopback with a synthetic study."""
    from marrownode.demo import run_demo

    return run_demo(args.out)
