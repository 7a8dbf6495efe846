"""Command line: serve, process, demo, check-config, echo, status, and the operator's
actions: retry, pause, resume, reanalyse, delete, history, rebuild-index; hash-password and
new-token for the web console's users.

Exit codes: 0 ok, 2 bad usage or bad configuration (the message says what and where),
1 runtime failure, 3 the index is damaged (the message names the command that rebuilds it;
the systemd unit does not restart on 2 or 3: both need the operator).
"""

from __future__ import annotations

import os
import sqlite3
import sys

from marrownode.cli.common import EXIT_FAILURE, EXIT_INDEX_DAMAGED, EXIT_OK, EXIT_USAGE
from marrownode.cli.node_commands import (
    cmd_check_config,
    cmd_demo,
    cmd_echo,
    cmd_process,
    cmd_serve,
)
from marrownode.cli.operator_commands import (
    cmd_delete,
    cmd_hash_password,
    cmd_history,
    cmd_new_token,
    cmd_pause_resume,
    cmd_reanalyse,
    cmd_rebuild_index,
    cmd_retry,
    cmd_status,
)
from marrownode.cli.parser import build_parser
from marrownode.config import ConfigError
from marrownode.store.database import IndexDamaged

COMMANDS = {
    "serve": cmd_serve,
    "process": cmd_process,
    "demo": cmd_demo,
    "check-config": cmd_check_config,
    "echo": cmd_echo,
    "status": cmd_status,
    "retry": cmd_retry,
    "rebuild-index": cmd_rebuild_index,
    "pause": cmd_pause_resume,
    "resume": cmd_pause_resume,
    "reanalyse": cmd_reanalyse,
    "delete": cmd_delete,
    "history": cmd_history,
    "hash-password": cmd_hash_password,
    "new-token": cmd_new_token,
}


def main(argv: list[str] | None = None) -> int:
    """The `marrownode` command; returns the exit code (0 ok, 2 usage or config, 1 failure)."""
    args = build_parser().parse_args(argv)
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
