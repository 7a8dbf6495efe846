"""Who may use the console: users from [[http.users]] with a hashed password (people, through a
session cookie) or a token digest (scripts, `Authorization: Bearer`), each read-only or admin.

Passwords are hashed with Werkzeug's scrypt; tokens are random 256-bit strings of which only
the SHA-256 is configured (they are not guessable, so a slow hash buys nothing). A session
remembers a fingerprint of the credential it was opened with: changing a user's password or
role in the config ends that user's sessions at the next request."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from marrownode.config import ConsoleUser

MIN_PASSWORD_LENGTH = 10
SECRET_KEY_FILENAME = "console-secret.key"
#: Failed logins per name (and per client address) before it is refused for a while.
MAX_FAILURES = 5
LOCKOUT_SECONDS = 300.0


@functools.cache
def _dummy_hash() -> str:
    """A hash to check against when the name is unknown, so that both cases take as long
    (made on first use: scrypt is slow on purpose)."""
    return generate_password_hash("not a password of anyone", method="scrypt")


@dataclass(frozen=True)
class Identity:
    """Who is asking, and what they may do."""

    name: str
    role: str
    via: str  # "session" or "token"

    @property
    def admin(self) -> bool:
        """Whether this identity may act (retry, pause, reanalyse, delete)."""
        return self.role == "admin"


def hash_password(password: str) -> str:
    """The value for password_hash; refuses short passwords."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a console password needs at least {MIN_PASSWORD_LENGTH} characters")
    return generate_password_hash(password, method="scrypt")


def new_token() -> tuple[str, str]:
    """A random token and the token_sha256 to configure for it."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    """The SHA-256 of a token, as configured."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def fingerprint(user: ConsoleUser) -> str:
    """Changes when the user's credentials or role change (ends their sessions)."""
    text = f"{user.name}\n{user.role}\n{user.password_hash}\n{user.token_sha256}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def load_secret_key(storage_root: Path) -> bytes:
    """The key that signs session cookies: kept beside the index (mode 0600) so sessions and
    CSRF tokens survive a restart; made on first use."""
    path = Path(storage_root) / SECRET_KEY_FILENAME
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return key


class Users:
    """The configured users, and the checks of passwords, tokens and sessions against them."""

    def __init__(self, users: list[ConsoleUser]) -> None:
        self._by_name = {user.name: user for user in users}
        self._by_token = {user.token_sha256: user for user in users if user.token_sha256}

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def check_password(self, name: str, password: str) -> ConsoleUser | None:
        """The user when name and password match (constant work whether or not name exists)."""
        user = self._by_name.get(name)
        stored = (user.password_hash if user is not None and user.password_hash
                  else _dummy_hash())
        matched = check_password_hash(stored, password)
        return user if matched and user is not None and user.password_hash else None

    def from_token(self, token: str) -> Identity | None:
        """The identity a bearer token stands for, or None."""
        digest = token_digest(token)
        for known, user in self._by_token.items():
            if hmac.compare_digest(known, digest):
                return Identity(user.name, user.role, "token")
        return None

    def from_session(self, name: object, print_: object) -> Identity | None:
        """The identity of a session, if its user still exists with the same credentials."""
        user = self._by_name.get(name) if isinstance(name, str) else None
        if user is None or not isinstance(print_, str) or not hmac.compare_digest(
                print_, fingerprint(user)):
            return None
        return Identity(user.name, user.role, "session")


class LoginThrottle:
    """Refuses a name, or a client address, for LOCKOUT_SECONDS after MAX_FAILURES failed
    logins in that time (password guessing at scrypt speed is slow; this makes it slower)."""

    def __init__(self) -> None:
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [at for at in self._failures.get(key, []) if now - at < LOCKOUT_SECONDS]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def refused(self, *keys: str) -> bool:
        """Whether any of the keys (name, address) is locked out now."""
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(key, now)) >= MAX_FAILURES for key in keys)

    def failed(self, *keys: str) -> None:
        """Count a failed login against each key."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(now)
            if len(self._failures) > 10_000:  # a flood of names: forget the oldest half
                for key in sorted(self._failures, key=lambda k: self._failures[k][-1])[:5_000]:
                    del self._failures[key]

    def succeeded(self, *keys: str) -> None:
        """Forget the failures of these keys."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


def safe_target(target: str | None, default: str) -> str:
    """A local path to go back to (never another site: no scheme, no //host)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return default


def throttle_keys(name: str, address: str) -> tuple[str, ...]:
    """Failed logins count against the name, and against the client's address unless it is
    loopback (behind the reverse proxy every client is 127.0.0.1: one guesser would lock
    everyone out)."""
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    return (f"name:{name}",) if loopback else (f"name:{name}", f"address:{address}")
