"""The WSGI application of the [http] listener: /healthz, /metrics and /status (health and
counts: unauthenticated, no study named), and the operator console at / (login required),
with the studies as JSON, paged, at /status/studies.

Flask for routing, sessions and templates; Flask-WTF for CSRF tokens; security headers on
every response. The console reads the index through store.views and acts through
marrownode.actions, the same actions as the command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Response
from flask_wtf.csrf import CSRFProtect
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from marrownode.console.auth import (
    SESSIONS_FILENAME,
    LoginThrottle,
    SessionRegistry,
    Users,
    load_secret_key,
)
from marrownode.console.context import ConsoleContext, health_body
from marrownode.monitor import Health

#: Sent with every answer. The console has no script and no third-party content at all.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
MAX_REQUEST_BYTES = 64 * 1024  # forms only: nothing larger is ever posted


def create_app(health: Callable[[], Health], registry: CollectorRegistry,
               status: Callable[[], dict[str, Any]],
               console: ConsoleContext | None = None) -> Flask:
    """The application; without a console context only the monitoring endpoints exist."""
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES)

    @app.get("/healthz")
    def healthz() -> Response:
        result = health()
        return Response(json.dumps(health_body(result)), 200 if result.ok else 503,
                        mimetype="application/json")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), 200, content_type=CONTENT_TYPE_LATEST)

    @app.get("/status")
    def status_json() -> Response:
        """Health and counts only: no study is named without a login (the studies, paged,
        are at /status/studies for a console user or token)."""
        result = health()
        return Response(json.dumps({**health_body(result), **status()}), 200,
                        mimetype="application/json")

    @app.after_request
    def secure(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    if console is not None:
        _add_console(app, console)
    return app


def _add_console(app: Flask, context: ConsoleContext) -> None:
    from marrownode.console.views import ConsoleState, install

    http = context.settings.http
    app.config.update(
        SECRET_KEY=load_secret_key(context.settings.storage.root),
        SESSION_COOKIE_NAME="marrownode_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=http.secure_cookies,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=http.session_minutes),
        WTF_CSRF_CHECK_DEFAULT=False,  # checked for cookie sessions only (views.py)
        WTF_CSRF_TIME_LIMIT=None,  # valid as long as the session that holds it
    )
    sessions = SessionRegistry(Path(context.settings.storage.root) / SESSIONS_FILENAME,
                               http.session_minutes * 60.0)
    install(app, ConsoleState(context, Users(http.users), LoginThrottle(), CSRFProtect(app),
                              sessions))
