"""The console's pages and actions. Every page needs a logged-in user (or a bearer token);
without one it redirects to /login and shows nothing of any study. Actions are POST only,
admin only, CSRF-checked for cookie sessions, and written to the event trail by
marrownode.actions with the user's name."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect

from marrownode.actions import ActionRefused, Operator
from marrownode.console.auth import (
    Identity,
    LoginThrottle,
    SessionRegistry,
    Users,
    fingerprint,
    safe_target,
    throttle_keys,
)
from marrownode.console.context import ConsoleContext, health_body
from marrownode.console.thumbnails import (
    find_output,
    output_kinds,
    overlay_outputs,
    thumbnail_png,
)
from marrownode.console.words import PATTERN_WORDS, duration_words, local_time, set_words
from marrownode.net.ul.status import in_words
from marrownode.states import StudyState
from marrownode.store.database import Database
from marrownode.store.views import (
    DELIVERY_FILTERS,
    PATTERN_ORDER,
    StudyFilter,
    destination_views,
    overview_counts,
    study_detail,
    study_page,
    study_report,
)
from marrownode.vocabulary import OutputKind

log = logging.getLogger(__name__)

UID_PATTERN = re.compile(r"^[0-9.]{1,64}$")
OPEN_ENDPOINTS = ("console.login",)


def _study_uid(study_uid: str) -> str:
    if not UID_PATTERN.fullmatch(study_uid):
        abort(404)
    return study_uid


#: Where the running app keeps the console's state (Flask's extensions registry).
EXTENSION = "marrownode.console"


@dataclass(frozen=True)
class ConsoleState:
    """The node's parts the views use, and the console's own: users, login throttle, CSRF."""

    context: ConsoleContext
    users: Users
    throttle: LoginThrottle
    csrf: CSRFProtect
    sessions: SessionRegistry


def _state() -> ConsoleState:
    state: ConsoleState = current_app.extensions[EXTENSION]
    return state


def install(app: Flask, state: ConsoleState) -> None:
    """Give the app the console: its state and the blueprint's routes."""
    app.extensions[EXTENSION] = state
    app.register_blueprint(console)


console = Blueprint("console", __name__)


@console.app_template_filter("when")
def when(epoch: float | None) -> str:
    """A time in the operator's local time."""
    return local_time(epoch)


@console.app_template_filter("duration")
def duration(seconds: float | None) -> str:
    """12 s, 4 min, 2.5 h."""
    return duration_words(seconds)


@console.app_template_filter("store_status")
def store_status(status: int | None) -> str:
    """A DIMSE status in PS3.4's words."""
    return in_words(status)


@console.app_context_processor
def common() -> dict[str, Any]:
    """What every page shows: who is logged in, the node's AE title, the pattern words (and a
    set's own, which know its foci: the summary page's words)."""
    return {"identity": g.get("identity"), "node_ae": _state().context.settings.node.ae_title,
            "pattern_words": PATTERN_WORDS, "set_words": set_words}


def _identify(users: Users, sessions: SessionRegistry) -> Identity | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return users.from_token(header.removeprefix("Bearer ").strip())
    if not sessions.is_open(session.get("sid")):  # ended by a logout, or never opened
        return None
    return users.from_session(session.get("user"), session.get("fingerprint"))


@console.before_request
def require_login() -> ResponseReturnValue | None:
    """Every page needs a user; POSTs need a CSRF token (cookie sessions) and an admin."""
    state = _state()
    g.identity = _identify(state.users, state.sessions)
    if request.endpoint in OPEN_ENDPOINTS:
        if request.method == "POST":
            state.csrf.protect()
        return None
    if g.identity is None:
        if "Authorization" in request.headers or request.method != "GET":
            return Response('{"error": "authentication required"}', 401,
                            {"WWW-Authenticate": 'Bearer realm="marrownode"'},
                            mimetype="application/json")
        return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
    if request.method == "POST":
        if g.identity.via == "session":
            state.csrf.protect()
        if not g.identity.admin and request.endpoint != "console.logout":
            return render_template("message.html", title="Not allowed",
                                   message=f"{g.identity.name} is a read-only user: "
                                           "only an admin can act."), 403
    return None


@console.errorhandler(CSRFError)
def csrf_failed(error: CSRFError) -> ResponseReturnValue:
    """A form without a valid token: refused, with what to do."""
    return render_template("message.html", title="Form refused",
                           message="This form has expired or did not come from this "
                                   f"console ({error.description}). Reload the page and "
                                   "try again."), 400


def _act(action: Callable[[str], str], back: str) -> ResponseReturnValue:
    """Run an operator action as the logged-in user; say how it went on the next page."""
    try:
        outcome = action(f"{g.identity.name} in the console")
    except ActionRefused as exc:
        flash(str(exc), "error")
    else:
        flash(outcome, "ok")
    return redirect(safe_target(request.form.get("back"), back), code=303)


def _operator() -> Operator:
    return _state().context.operator


def _db() -> Database:
    return _state().context.index.db


# --- session -------------------------------------------------------------------------------


@console.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """The login form, and a login: throttled per name and (non-loopback) address."""
    state = _state()
    users, throttle = state.users, state.throttle
    target = safe_target(request.values.get("next"), url_for("console.overview"))
    if request.method == "GET":
        return render_template("login.html", next=target, configured=bool(users))
    name = request.form.get("name", "")[:64]
    keys = throttle_keys(name, request.remote_addr or "")
    if throttle.refused(*keys):
        log.warning("event=console_login_refused user=%s reason=too_many_failures", name)
        return render_template("login.html", next=target, configured=bool(users),
                               error="Too many failed attempts; wait and try again later."), 429
    user = users.check_password(name, request.form.get("password", ""))
    if user is None:
        throttle.failed(*keys)
        log.warning("event=console_login_failed user=%s", name)
        return render_template("login.html", next=target, configured=bool(users),
                               error="Unknown user name or wrong password."), 401
    throttle.succeeded(*keys)
    state.sessions.close(session.get("sid"))
    session.clear()
    session.permanent = True
    session["user"], session["fingerprint"] = user.name, fingerprint(user)
    session["sid"] = state.sessions.open()
    log.info("event=console_login user=%s role=%s", user.name, user.role)
    return redirect(target, code=303)


@console.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session, on the server too: its cookie is no use afterwards."""
    _state().sessions.close(session.get("sid"))
    session.clear()
    return redirect(url_for("console.login"), code=303)


# --- pages ---------------------------------------------------------------------------------


#: /status/studies pages: at most this many studies per request.
MAX_STATUS_PAGE = 200


@console.get("/status/studies")
def status_studies() -> ResponseReturnValue:
    """What `marrownode status --json` shows, paged (limit, offset): for a console user or a
    token only, since it names studies (accession numbers, dates, descriptions)."""
    limit = min(max(request.args.get("limit", 50, type=int) or 50, 1), MAX_STATUS_PAGE)
    offset = max(request.args.get("offset", 0, type=int) or 0, 0)
    page = _state().context.index.status(limit=limit, offset=offset)
    return Response(json.dumps({**page, "limit": limit, "offset": offset}), 200,
                    mimetype="application/json")


@console.get("/")
def overview() -> ResponseReturnValue:
    """Health, receivers, the analysis queue and every destination."""
    context = _state().context
    names = [d.name for d in context.settings.destinations]
    return render_template(
        "overview.html", health=health_body(context.health()), facts=context.node_facts(),
        counts=overview_counts(_db()), destinations=destination_views(_db(), names))


@console.get("/studies")
def studies() -> ResponseReturnValue:
    """The studies, newest first: searched, filtered, paged."""
    try:
        selection = StudyFilter(
            text=request.args.get("q", "").strip()[:128],
            state=request.args.get("state", ""), pattern=request.args.get("pattern", ""),
            delivery=request.args.get("delivery", ""),
            page=request.args.get("page", 1, type=int) or 1)
    except ValueError as exc:
        flash(str(exc), "error")
        selection = StudyFilter()
    page = study_page(_db(), selection)
    arguments = {key: value for key, value in (
        ("q", selection.text), ("state", selection.state), ("pattern", selection.pattern),
        ("delivery", selection.delivery)) if value}
    return render_template("studies.html", page=page, selection=selection,
                           arguments=arguments, states=list(StudyState),
                           patterns=PATTERN_ORDER, deliveries=DELIVERY_FILTERS)


@console.get("/studies/<study_uid>")
def study(study_uid: str) -> ResponseReturnValue:
    """One study: findings, thumbnails, series, deliveries, trail."""
    detail = study_detail(_db(), _study_uid(study_uid))
    if detail is None:
        abort(404)
    return render_template("study.html", detail=detail, kinds=output_kinds(detail.report),
                           thumbnails=overlay_outputs(detail.report))


@console.get("/studies/<study_uid>/report.json")
def report(study_uid: str) -> ResponseReturnValue:
    """The study's report.json, as `process` writes it; the download is in the trail."""
    content = study_report(_db(), _study_uid(study_uid))
    if content is None:
        abort(404)
    _operator().downloaded(f"{g.identity.name} in the console", study_uid, "report.json")
    return Response(json.dumps({"studies": [content]}, indent=2),
                    mimetype="application/json",
                    headers={"Content-Disposition": "attachment; filename="
                             f"\"report-{quote(study_uid)}.json\""})


@console.get("/studies/<study_uid>/overlay/<sop_instance_uid>.png")
def overlay(study_uid: str, sop_instance_uid: str) -> ResponseReturnValue:
    """A thumbnail of one overlay slice the node sent."""
    output = find_output(study_report(_db(), _study_uid(study_uid)), sop_instance_uid)
    if output is None or output["kind"] != OutputKind.OVERLAY:
        abort(404)
    try:
        png = thumbnail_png(_operator().spool.results_dir(study_uid), str(output["path"]))
    except FileNotFoundError:
        abort(404)
    return Response(png, mimetype="image/png",
                    headers={"Cache-Control": "private, max-age=300"})


@console.get("/studies/<study_uid>/delete")
def confirm_delete(study_uid: str) -> ResponseReturnValue:
    """The confirmation page before a study is deleted."""
    detail = study_detail(_db(), _study_uid(study_uid), event_limit=0)
    if detail is None:
        abort(404)
    return render_template("delete.html", detail=detail)


# --- actions (through marrownode.actions, which writes the trail) -------------------------


@console.post("/studies/<study_uid>/delete")
def delete(study_uid: str) -> ResponseReturnValue:
    """Delete a study, once the box is ticked."""
    _study_uid(study_uid)
    if request.form.get("confirm") != "delete":
        flash("Not deleted: tick the box that confirms the deletion.", "error")
        return redirect(url_for("console.confirm_delete", study_uid=study_uid), code=303)

    def remove(actor: str) -> str:
        count = _operator().delete(actor, study_uid)
        return f"Study {study_uid} deleted ({count} instances)."
    return _act(remove, back=url_for("console.studies"))


@console.post("/studies/<study_uid>/reanalyse")
def reanalyse(study_uid: str) -> ResponseReturnValue:
    """Analyse a study again."""
    def again(actor: str) -> str:
        _operator().reanalyse(actor, _study_uid(study_uid))
        return "Queued for analysis; its results are sent again when it is done."
    return _act(again, back=url_for("console.study", study_uid=study_uid))


@console.post("/studies/<study_uid>/retry")
def retry_study(study_uid: str) -> ResponseReturnValue:
    """Queue a study's failed results again."""
    def retry(actor: str) -> str:
        count = _operator().retry(actor, study_uid=_study_uid(study_uid))
        return f"{count} failed result(s) of this study queued again."
    return _act(retry, back=url_for("console.study", study_uid=study_uid))


@console.post("/deliveries/<int:row_id>/retry")
def retry_delivery(row_id: int) -> ResponseReturnValue:
    """One delivery, due now."""
    def retry(actor: str) -> str:
        _operator().retry_delivery(actor, row_id)
        return f"Delivery #{row_id} is due now."
    return _act(retry, back=url_for("console.overview"))


@console.post("/destinations/<name>/<verb>")
def destination(name: str, verb: str) -> ResponseReturnValue:
    """Retry now, pause or resume a destination."""
    def change(actor: str) -> str:
        operator = _operator()
        if verb == "retry":
            count = operator.retry_destination(actor, name)
            return f"{name}: {count} result(s) due now."
        if verb in ("pause", "resume"):
            operator.pause(actor, name, verb == "pause")
            return f"{name}: {'paused' if verb == 'pause' else 'resumed'}."
        raise ActionRefused(f"unknown action {verb!r} (retry, pause, resume)")
    return _act(change, back=url_for("console.overview"))
