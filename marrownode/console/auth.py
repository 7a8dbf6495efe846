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
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from werkzeug.security import check_password_hash, generate_password_hash

from marrownode.config import ConsoleUser

MIN_PASSWORD_LENGTH = 10
SECRET_KEY_FILENAME = "console-secret.key"
#: Failed logins for one name from one address before that pair is refused for a while ...
MAX_FAILURES = 5
#: ... and from one address whatever the names (spraying names).
MAX_ADDRESS_FAILURES = 20
LOCKOUT_SECONDS = 300.0
#: Each lock-out in a row doubles the last one, up to this.
MAX_LOCKOUT_SECONDS = 3600.0
SESSIONS_FILENAME = "console-sessions.json"


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
    """Locks a key out after its allowance of failed logins within LOCKOUT_SECONDS, for
    LOCKOUT_SECONDS doubled at each lock-out in a row (backoff, at most MAX_LOCKOUT_SECONDS).

    The keys (throttle_keys): a name *from an address* (MAX_FAILURES: guessing one account
    from one place; the real admin elsewhere is not locked out with it), and the address
    alone (MAX_ADDRESS_FAILURES: spraying many names from one place)."""

    def __init__(self) -> None:
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lockouts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [at for at in self._failures.get(key, []) if now - at < LOCKOUT_SECONDS]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def refused(self, *keys: str) -> bool:
        """Whether any of the keys is locked out now."""
        now = time.monotonic()
        with self._lock:
            return any(self._locked_until.get(key, 0.0) > now for key in keys)

    def failed(self, *keys: str) -> None:
        """Count a failed login against each key; lock the keys that used up their allowance."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(now)
                allowance = MAX_ADDRESS_FAILURES if key.startswith("address:") else MAX_FAILURES
                if len(self._recent(key, now)) >= allowance:
                    count = self._lockouts[key] = self._lockouts.get(key, 0) + 1
                    self._locked_until[key] = now + min(
                        LOCKOUT_SECONDS * 2 ** (count - 1), MAX_LOCKOUT_SECONDS)
                    self._failures.pop(key, None)
            if len(self._failures) > 10_000:  # a flood of names: forget the oldest half
                for key in sorted(self._failures, key=lambda k: self._failures[k][-1])[:5_000]:
                    del self._failures[key]

    def succeeded(self, *keys: str) -> None:
        """Forget the failures and lock-outs of these keys."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
                self._lockouts.pop(key, None)
                self._locked_until.pop(key, None)


class SessionRegistry:
    """The sessions the server has opened and not closed: a session cookie names one, and is
    honoured only while it is here, so logging out ends it on the server (a copy of the
    cookie saved before is worthless). Kept in a file beside the secret key (mode 0600):
    sessions survive a restart, ended ones stay ended."""

    def __init__(self, path: Path, lifetime_seconds: float) -> None:
        self.path = path
        self.lifetime = lifetime_seconds
        self._lock = threading.Lock()
        try:
            loaded = json.loads(path.read_text())
            self._open: dict[str, float] = {str(k): float(v) for k, v in loaded.items()}
        except (FileNotFoundError, ValueError, AttributeError):
            self._open = {}

    def open(self) -> str:
        """A new session's id."""
        session_id = secrets.token_urlsafe(24)
        with self._lock:
            now = time.time()
            self._open = {k: v for k, v in self._open.items() if v > now}
            self._open[session_id] = now + self.lifetime
            self._save()
        return session_id

    def is_open(self, session_id: object) -> bool:
        """Whether a cookie's session id is one the server opened and has not closed."""
        if not isinstance(session_id, str):
            return False
        with self._lock:
            return self._open.get(session_id, 0.0) > time.time()

    def close(self, session_id: object) -> None:
        """End a session (logout)."""
        with self._lock:
            if isinstance(session_id, str) and self._open.pop(session_id, None) is not None:
                self._save()

    def _save(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(self._open, handle)
        os.replace(temporary, self.path)


def safe_target(target: str | None, default: str) -> str:
    """A same-site path to go back to, else default. Browsers drop tabs and newlines from a
    URL and read a backslash as a slash, so '/\t/evil.example' is '//evil.example': any
    control character, whitespace or backslash refuses the target, and what is left must be
    a path with neither scheme nor host."""
    if not target or not target.startswith("/") or len(target) > 2000:
        return default
    if any(ord(c) < 0x21 or c in "\\\x7f" for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return default
    return target


def throttle_keys(name: str, address: str) -> tuple[str, ...]:
    """Failed logins count against the name from this address, and against the address
    unless it is loopback (behind the reverse proxy every client is 127.0.0.1: one sprayer
    would lock everyone out; there the name from loopback is the only key)."""
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    pair = f"name:{name}|{address}"
    return (pair,) if loopback else (pair, f"address:{address}")
