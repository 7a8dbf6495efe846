"""The console's pages and actions. Every page needs a logged-in user (or a bearer token);
without one it redirects to /login and shows nothing of any study. Actions are POST only,
admin only, CSRF-checked for cookie sessions, and written to the event trail by
marrownode.actions with the user's name."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote

from flask import (
    Blueprint,
    Response,
    abort,
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

from marrownode.actions import ActionRefused
from marrownode.console.auth import Identity, LoginThrottle, Users, fingerprint
from marrownode.console.context import ConsoleContext, health_body
from marrownode.console.thumbnails import (
    find_output,
    output_kinds,
    overlay_outputs,
    thumbnail_png,
)
from marrownode.net.ul.status import in_words
from marrownode.states import StudyState
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
from marrownode.vocabulary import OutputKind, Pattern

log = logging.getLogger(__name__)

UID_PATTERN = re.compile(r"^[0-9.]{1,64}$")
#: What a pattern means for the reader (the clinical rule of the node).
PATTERN_WORDS = {
    Pattern.NORMAL: "signal loss present: normal or benign marrow",
    Pattern.FOCAL: "focal absent signal loss: worrying for a marrow lesion",
    Pattern.DIFFUSE: "diffuse absent signal loss: worrying for infiltration",
    Pattern.NOT_ASSESSED: "not assessed",
}
OPEN_ENDPOINTS = ("console.login",)


def _local_time(epoch: float | None) -> str:
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _safe_target(target: str | None, default: str) -> str:
    """A local path to go back to (never another site: no scheme, no //host)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return default


def _throttle_keys(name: str, address: str) -> tuple[str, ...]:
    """Failed logins count against the name, and against the client's address unless it is
    loopback (behind the reverse proxy every client is 127.0.0.1: one guesser would lock
    everyone out)."""
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    return (f"name:{name}",) if loopback else (f"name:{name}", f"address:{address}")


def _study_uid(study_uid: str) -> str:
    if not UID_PATTERN.fullmatch(study_uid):
        abort(404)
    return study_uid


def console_blueprint(context: ConsoleContext, users: Users, throttle: LoginThrottle,
                      csrf: CSRFProtect) -> Blueprint:
    """The console's routes, bound to the node."""
    console = Blueprint("console", __name__)
    operator = context.operator
    index = context.index

    @console.app_template_filter("when")
    def when(epoch: float | None) -> str:
        return _local_time(epoch)

    @console.app_template_filter("duration")
    def duration(seconds: float | None) -> str:
        return _duration(seconds)

    @console.app_template_filter("store_status")
    def store_status(status: int | None) -> str:
        return in_words(status)

    @console.app_context_processor
    def common() -> dict[str, Any]:
        return {"identity": g.get("identity"), "node_ae": context.settings.node.ae_title,
                "pattern_words": PATTERN_WORDS}

    def identify() -> Identity | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return users.from_token(header.removeprefix("Bearer ").strip())
        return users.from_session(session.get("user"), session.get("fingerprint"))

    @console.before_request
    def require_login() -> ResponseReturnValue | None:
        g.identity = identify()
        if request.endpoint in OPEN_ENDPOINTS:
            if request.method == "POST":
                csrf.protect()
            return None
        if g.identity is None:
            if "Authorization" in request.headers or request.method != "GET":
                return Response('{"error": "authentication required"}', 401,
                                {"WWW-Authenticate": 'Bearer realm="marrownode"'},
                                mimetype="application/json")
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        if request.method == "POST":
            if g.identity.via == "session":
                csrf.protect()
            if not g.identity.admin and request.endpoint != "console.logout":
                return render_template("message.html", title="Not allowed",
                                       message=f"{g.identity.name} is a read-only user: "
                                               "only an admin can act."), 403
        return None

    @console.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError) -> ResponseReturnValue:
        return render_template("message.html", title="Form refused",
                               message="This form has expired or did not come from this "
                                       f"console ({error.description}). Reload the page and "
                                       "try again."), 400

    def act(action: Any, *args: Any, back: str) -> ResponseReturnValue:
        """Run an operator action as the logged-in user; say how it went on the next page."""
        try:
            outcome = action(f"{g.identity.name} in the console", *args)
        except ActionRefused as exc:
            flash(str(exc), "error")
        else:
            flash(outcome, "ok")
        return redirect(_safe_target(request.form.get("back"), back), code=303)

    # --- session -----------------------------------------------------------------------------

    @console.route("/login", methods=["GET", "POST"])
    def login() -> ResponseReturnValue:
        target = _safe_target(request.values.get("next"), url_for("console.overview"))
        if request.method == "GET":
            return render_template("login.html", next=target, configured=bool(users))
        name = request.form.get("name", "")[:64]
        keys = _throttle_keys(name, request.remote_addr or "")
        if throttle.refused(*keys):
            log.warning("event=console_login_refused user=%s reason=too_many_failures", name)
            return render_template("login.html", next=target, configured=bool(users),
                                   error="Too many failed attempts; wait five minutes."), 429
        user = users.check_password(name, request.form.get("password", ""))
        if user is None:
            throttle.failed(*keys)
            log.warning("event=console_login_failed user=%s", name)
            return render_template("login.html", next=target, configured=bool(users),
                                   error="Unknown user name or wrong password."), 401
        throttle.succeeded(*keys)
        session.clear()
        session.permanent = True
        session["user"], session["fingerprint"] = user.name, fingerprint(user)
        log.info("event=console_login user=%s role=%s", user.name, user.role)
        return redirect(target, code=303)

    @console.post("/logout")
    def logout() -> ResponseReturnValue:
        session.clear()
        return redirect(url_for("console.login"), code=303)

    # --- pages -------------------------------------------------------------------------------

    @console.get("/")
    def overview() -> ResponseReturnValue:
        names = [d.name for d in context.settings.destinations]
        return render_template(
            "overview.html", health=health_body(context.health()), facts=context.node_facts(),
            counts=overview_counts(index.db), destinations=destination_views(index.db, names))

    @console.get("/studies")
    def studies() -> ResponseReturnValue:
        try:
            selection = StudyFilter(
                text=request.args.get("q", "").strip()[:128],
                state=request.args.get("state", ""), pattern=request.args.get("pattern", ""),
                delivery=request.args.get("delivery", ""),
                page=request.args.get("page", 1, type=int) or 1)
        except ValueError as exc:
            flash(str(exc), "error")
            selection = StudyFilter()
        page = study_page(index.db, selection)
        arguments = {key: value for key, value in (
            ("q", selection.text), ("state", selection.state), ("pattern", selection.pattern),
            ("delivery", selection.delivery)) if value}
        return render_template("studies.html", page=page, selection=selection,
                               arguments=arguments, states=list(StudyState),
                               patterns=PATTERN_ORDER, deliveries=DELIVERY_FILTERS)

    @console.get("/studies/<study_uid>")
    def study(study_uid: str) -> ResponseReturnValue:
        detail = study_detail(index.db, _study_uid(study_uid))
        if detail is None:
            abort(404)
        return render_template("study.html", detail=detail, kinds=output_kinds(detail.report),
                               thumbnails=overlay_outputs(detail.report))

    @console.get("/studies/<study_uid>/report.json")
    def report(study_uid: str) -> ResponseReturnValue:
        content = study_report(index.db, _study_uid(study_uid))
        if content is None:
            abort(404)
        index.studies.add_event(study_uid, "download",
                                f"report.json (by {g.identity.name} in the console)")
        return Response(json.dumps({"studies": [content]}, indent=2),
                        mimetype="application/json",
                        headers={"Content-Disposition": "attachment; filename="
                                 f"\"report-{quote(study_uid)}.json\""})

    @console.get("/studies/<study_uid>/overlay/<sop_instance_uid>.png")
    def overlay(study_uid: str, sop_instance_uid: str) -> ResponseReturnValue:
        output = find_output(study_report(index.db, _study_uid(study_uid)), sop_instance_uid)
        if output is None or output.get("kind") != OutputKind.OVERLAY:
            abort(404)
        try:
            png = thumbnail_png(operator.spool.results_dir(study_uid), str(output["path"]))
        except FileNotFoundError:
            abort(404)
        return Response(png, mimetype="image/png",
                        headers={"Cache-Control": "private, max-age=300"})

    @console.get("/studies/<study_uid>/delete")
    def confirm_delete(study_uid: str) -> ResponseReturnValue:
        detail = study_detail(index.db, _study_uid(study_uid), event_limit=0)
        if detail is None:
            abort(404)
        return render_template("delete.html", detail=detail)

    # --- actions -----------------------------------------------------------------------------

    @console.post("/studies/<study_uid>/delete")
    def delete(study_uid: str) -> ResponseReturnValue:
        _study_uid(study_uid)
        if request.form.get("confirm") != "delete":
            flash("Not deleted: tick the box that confirms the deletion.", "error")
            return redirect(url_for("console.confirm_delete", study_uid=study_uid), code=303)

        def remove(actor: str) -> str:
            count = operator.delete(actor, study_uid)
            return f"Study {study_uid} deleted ({count} instances)."
        return act(remove, back=url_for("console.studies"))

    @console.post("/studies/<study_uid>/reanalyse")
    def reanalyse(study_uid: str) -> ResponseReturnValue:
        def again(actor: str) -> str:
            operator.reanalyse(actor, _study_uid(study_uid))
            return "Queued for analysis; its results are sent again when it is done."
        return act(again, back=url_for("console.study", study_uid=study_uid))

    @console.post("/studies/<study_uid>/retry")
    def retry_study(study_uid: str) -> ResponseReturnValue:
        def retry(actor: str) -> str:
            count = operator.retry(actor, study_uid=_study_uid(study_uid))
            return f"{count} failed result(s) of this study queued again."
        return act(retry, back=url_for("console.study", study_uid=study_uid))

    @console.post("/deliveries/<int:row_id>/retry")
    def retry_delivery(row_id: int) -> ResponseReturnValue:
        def retry(actor: str) -> str:
            operator.retry_delivery(actor, row_id)
            return f"Delivery #{row_id} is due now."
        return act(retry, back=url_for("console.overview"))

    @console.post("/destinations/<name>/<verb>")
    def destination(name: str, verb: str) -> ResponseReturnValue:
        def change(actor: str) -> str:
            if verb == "retry":
                count = operator.retry_destination(actor, name)
                return f"{name}: {count} result(s) due now."
            if verb in ("pause", "resume"):
                operator.pause(actor, name, verb == "pause")
                return f"{name}: {'paused' if verb == 'pause' else 'resumed'}."
            raise ActionRefused(f"unknown action {verb!r} (retry, pause, resume)")
        return act(change, back=url_for("console.overview"))

    return console
