"""The operator console's guard rails (#18), on the real application and a real index: no
page and no patient name without a login, read-only users cannot act, every action needs the
form's CSRF token (or a bearer token), sessions end when credentials change, and the studies
list is searched, filtered and paged by the index."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from marrownode.actions import Operator
from marrownode.config import ConfigError, settings_from_mapping
from marrownode.console.app import create_app
from marrownode.console.auth import hash_password, new_token
from marrownode.console.context import ConsoleContext
from marrownode.monitor import Health
from marrownode.store.index import Index
from marrownode.store.spool import Spool

PATIENT = "Sensitive^Patient"
ADMIN_PASSWORD = "admin password 1"
VIEWER_PASSWORD = "viewer password 1"
TOKEN, TOKEN_SHA256 = new_token()


def _header(study: int, instance: int = 0, **extra: Any) -> dict[str, Any]:
    return {"study_uid": f"1.2.3.{study}", "series_uid": f"1.2.3.{study}.1",
            "sop_instance_uid": f"1.2.3.{study}.1.{instance}",
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
            "accession_number": f"ACC{study:05d}", "study_date": "20261201",
            "study_description": "MRI LUMBAR SPINE" if study % 2 else "MRI PELVIS",
            "patient_name": PATIENT if study == 1 else f"Other^Person{study}", **extra}


def _users(admin_password: str = ADMIN_PASSWORD) -> list[dict[str, str]]:
    return [{"name": "admin", "role": "admin", "password_hash": hash_password(admin_password)},
            {"name": "viewer", "role": "read-only",
             "password_hash": hash_password(VIEWER_PASSWORD)},
            {"name": "script", "role": "admin", "token_sha256": TOKEN_SHA256}]


def _app(root: Path, users: list[dict[str, str]]) -> Any:
    settings = settings_from_mapping({
        "storage": {"root": str(root)},
        "http": {"users": users},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}]})
    index = Index(root / "index.sqlite3")
    spool = Spool(root, 0)
    operator = Operator(index, spool, ["pacs"])
    health = lambda: Health(True, True, True, details={  # noqa: E731
        "free_bytes": 10**10, "min_free_bytes": 10**9})
    facts = {"receivers": {"port": 11112, "processes": 1, "instances": 0, "accepted": 0,
                           "rejected": 0, "failures": {}},
             "worker": {"alive": True, "pid": 1, "deaths": 0}}
    app = create_app(health, CollectorRegistry(), index.status_summary,
                     ConsoleContext(settings, index, operator, health, lambda: facts))
    app.testing = False
    return app, index


@pytest.fixture
def console(tmp_path: Path) -> tuple[Any, Index]:
    app, index = _app(tmp_path, _users())
    for study in range(1, 121):
        index.studies.record_instance(_header(study), tmp_path / f"{study}.dcm", 100,
                                      "1.2.840.10008.1.2.1", None, now=1_000_000 + study)
    index.studies.set_state("1.2.3.1", "analysed", "1 set(s) analysed",
                            report={"study_instance_uid": "1.2.3.1", "dixon_sets": []})
    return app, index


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the form carries no CSRF token"
    return match.group(1)


def _login(client: Any, name: str, password: str) -> Any:
    token = _csrf(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"name": name, "password": password,
                                       "csrf_token": token, "next": "/studies"})


PAGES = ["/", "/studies", "/studies?state=analysed", "/studies/1.2.3.1",
         "/studies/1.2.3.1/report.json", "/studies/1.2.3.1/delete",
         "/studies/1.2.3.1/overlay/1.2.3.png"]


@pytest.mark.parametrize("path", PAGES)
def test_no_page_and_no_patient_name_without_login(console, path: str) -> None:
    app, _ = console
    client = app.test_client()
    answer = client.get(path)
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/login?next=")
    assert "Sensitive" not in answer.get_data(as_text=True)
    login_page = client.get(answer.headers["Location"])
    assert login_page.status_code == 200 and "Sensitive" not in login_page.get_data(as_text=True)
    # the monitoring endpoints stay open and carry no patient name
    for open_path in ("/status", "/healthz", "/metrics"):
        assert "Sensitive" not in client.get(open_path).get_data(as_text=True)


def test_actions_without_login_are_refused_and_do_nothing(console) -> None:
    app, index = console
    client = app.test_client()
    for path in ("/studies/1.2.3.1/reanalyse", "/studies/1.2.3.1/delete",
                 "/destinations/pacs/pause", "/deliveries/1/retry"):
        assert client.post(path, data={"confirm": "delete"}).status_code == 401
    assert index.studies.study("1.2.3.1") is not None
    assert not index.outbox.destination("pacs").paused
    assert client.post("/studies/1.2.3.1/reanalyse",
                       headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_login_shows_patient_names_and_sets_a_hardened_cookie(console) -> None:
    app, _ = console
    client = app.test_client()
    wrong = _login(client, "admin", "not the password")
    assert wrong.status_code == 401 and "wrong password" in wrong.get_data(as_text=True)
    assert "Sensitive" not in client.get("/studies/1.2.3.1", follow_redirects=True).get_data(
        as_text=True)
    answer = _login(client, "admin", ADMIN_PASSWORD)
    assert answer.status_code == 303 and answer.headers["Location"] == "/studies"
    cookie = answer.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = client.get("/studies/1.2.3.1")
    assert page.status_code == 200 and "Sensitive Patient" in page.get_data(as_text=True)
    for name in ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
                 "Referrer-Policy"):
        assert name in page.headers
    assert page.headers["Cache-Control"] == "no-store"


def test_login_never_redirects_off_site(console) -> None:
    """Browsers drop tabs and newlines and read a backslash as a slash: '/<TAB>/evil.example'
    would go to //evil.example (the open redirect of issue 29)."""
    app, _ = console
    client = app.test_client()
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example",
                   "/\t/evil.example/phish", "/\n/evil.example", "/ /evil.example",
                   "/\x7f/evil.example", "javascript:alert(1)"):
        token = _csrf(client.get("/login").get_data(as_text=True))
        answer = client.post("/login", data={"name": "admin", "password": ADMIN_PASSWORD,
                                             "csrf_token": token, "next": target})
        assert answer.headers["Location"] == "/", target


def test_repeated_failures_lock_the_name_out(console) -> None:
    app, _ = console
    client = app.test_client()
    for _ in range(5):
        assert _login(client, "admin", "guess").status_code == 401
    assert _login(client, "admin", ADMIN_PASSWORD).status_code == 429


def test_read_only_sees_but_cannot_act(console) -> None:
    app, index = console
    client = app.test_client()
    assert _login(client, "viewer", VIEWER_PASSWORD).status_code == 303
    page = client.get("/studies/1.2.3.1").get_data(as_text=True)
    assert "Sensitive Patient" in page and "Analyse again" not in page
    token = _csrf(page)  # the logout form's token: valid, but the role is not
    answer = client.post("/studies/1.2.3.1/reanalyse", data={"csrf_token": token})
    assert answer.status_code == 403
    answer = client.post("/studies/1.2.3.1/delete", data={"csrf_token": token,
                                                          "confirm": "delete"})
    assert answer.status_code == 403 and index.studies.study("1.2.3.1") is not None
    assert not any(e["kind"] == "action" for e in index.studies.events("1.2.3.1"))


def test_actions_need_the_forms_csrf_token(console) -> None:
    app, index = console
    client = app.test_client()
    _login(client, "admin", ADMIN_PASSWORD)
    refused = client.post("/destinations/pacs/pause")
    assert refused.status_code == 400 and "Form refused" in refused.get_data(as_text=True)
    refused = client.post("/destinations/pacs/pause", data={"csrf_token": "forged"})
    assert refused.status_code == 400
    assert not index.outbox.destination("pacs").paused
    token = _csrf(client.get("/").get_data(as_text=True))
    done = client.post("/destinations/pacs/pause", data={"csrf_token": token})
    assert done.status_code == 303 and index.outbox.destination("pacs").paused
    trail = index.studies.events("*")
    assert trail[-1]["detail"] == "pause pacs (by admin in the console)"
    # a token from another session is not this session's
    other = app.test_client()
    _login(other, "admin", ADMIN_PASSWORD)
    assert other.post("/destinations/pacs/resume", data={"csrf_token": token}).status_code == 400


def test_delete_needs_the_confirmation(console) -> None:
    app, index = console
    client = app.test_client()
    _login(client, "admin", ADMIN_PASSWORD)
    confirm_page = client.get("/studies/1.2.3.2/delete").get_data(as_text=True)
    token = _csrf(confirm_page)
    kept = client.post("/studies/1.2.3.2/delete", data={"csrf_token": token})
    assert kept.status_code == 303 and index.studies.study("1.2.3.2") is not None
    gone = client.post("/studies/1.2.3.2/delete", data={"csrf_token": token,
                                                        "confirm": "delete"})
    assert gone.status_code == 303 and index.studies.study("1.2.3.2") is None
    assert "delete 1.2.3.2: 1 instance(s) (by admin in the console)" in [
        e["detail"] for e in index.studies.events("*")]


def test_a_bearer_token_acts_without_a_form(console) -> None:
    app, index = console
    client = app.test_client()
    answer = client.post("/studies/1.2.3.1/reanalyse",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 303
    assert index.studies.events("1.2.3.1")[-1]["detail"] == "reanalyse (by script in the console)"
    report = client.get("/studies/1.2.3.1/report.json",
                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert report.status_code == 200 and report.json == {
        "studies": [{"study_instance_uid": "1.2.3.1", "dixon_sets": []}]}


def test_a_changed_password_ends_the_users_sessions(tmp_path: Path) -> None:
    users = _users()
    app, _ = _app(tmp_path, users)
    client = app.test_client()
    _login(client, "admin", ADMIN_PASSWORD)
    assert client.get("/").status_code == 200
    restarted, _ = _app(tmp_path, _users(admin_password="a new password 2"))
    moved = restarted.test_client()
    moved.set_cookie("marrownode_session", client.get_cookie("marrownode_session").value)
    assert moved.get("/").status_code == 302  # same signing key, old credentials: logged out
    kept, _ = _app(tmp_path, users)
    same = kept.test_client()
    same.set_cookie("marrownode_session", client.get_cookie("marrownode_session").value)
    assert same.get("/").status_code == 200  # a restart with the same users keeps the session


def test_studies_are_searched_filtered_and_paged(console) -> None:
    app, _ = console
    client = app.test_client()
    _login(client, "viewer", VIEWER_PASSWORD)
    first = client.get("/studies").get_data(as_text=True)
    assert "120 studies, page 1 of 3" in first
    assert "ACC00120" in first and "ACC00070" not in first  # newest first
    third = client.get("/studies?page=3").get_data(as_text=True)
    assert "ACC00001" in third and "ACC00120" not in third
    found = client.get("/studies?q=sensitive").get_data(as_text=True)
    assert "1 study" in found and "ACC00001" in found
    assert "1 study" in client.get("/studies?q=ACC00042").get_data(as_text=True)
    assert "0 studies" in client.get("/studies?q=%25").get_data(as_text=True)  # % is literal
    analysed = client.get("/studies?state=analysed").get_data(as_text=True)
    assert "1 study" in analysed
    pelvis = client.get("/studies?q=PELVIS&delivery=none").get_data(as_text=True)
    assert "60 studies" in pelvis and "page=2&amp;q=PELVIS&amp;delivery=none" in pelvis
    bad = client.get("/studies?state=exploded").get_data(as_text=True)
    assert "state must be one of" in bad and "120 studies" in bad


def test_console_users_are_checked_in_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        settings_from_mapping({"http": {"users": [{"name": "admin", "password_hash": "secret"}]}},
                              source="node.toml")
    message = str(error.value)
    assert "node.toml" in message and '[[http.users]] "admin" password_hash' in message
    assert "secret" not in message.replace("a secret", "")  # the value is never repeated
    assert "marrownode hash-password" in str(error.value)
    with pytest.raises(ConfigError) as error:
        settings_from_mapping({"http": {"users": [{"name": "a", "role": "root",
                                                   "token_sha256": "0" * 64}]}})
    assert '[[http.users]] "a" role' in str(error.value) and "'admin' or 'read-only'" in str(
        error.value)
    with pytest.raises(ConfigError, match="distinct"):
        settings_from_mapping({"http": {"users": [{"name": "a", "token_sha256": "0" * 64}] * 2}})
    exposed = settings_from_mapping({"http": {"host": "0.0.0.0"}})
    assert any("not loopback" in w and "reverse proxy" in w for w in exposed.warnings())
    assert any("nobody can log in" in w for w in exposed.warnings())
    with pytest.raises(ValueError, match="at least 10"):
        hash_password("short")


def test_an_index_of_version_4_gets_study_descriptors(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite3")
    index.studies.record_instance(_header(7), tmp_path / "7.dcm", 1, "1.2.840.10008.1.2.1", None)
    index.close()
    db = sqlite3.connect(tmp_path / "index.sqlite3")  # back to how version 4 kept studies
    for column in ("accession_number", "study_date", "study_description", "patient_name",
                   "described"):
        db.execute(f"ALTER TABLE studies DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    study = Index(tmp_path / "index.sqlite3").studies.study("1.2.3.7")
    assert study is not None and study["accession_number"] == "ACC00007"
    assert study["patient_name"] == "Other^Person7" and study["described"] == 1


def test_hash_password_and_new_token_make_working_config_lines(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tomllib

    from marrownode.console.auth import Users

    def run(*args: str, given: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "marrownode", *args], input=given,
                              capture_output=True, text=True, timeout=60)

    hashed = run("hash-password", given="a long enough password\n")
    assert hashed.returncode == 0, hashed.stderr
    tokened = run("new-token")
    token = tokened.stdout.splitlines()[0].rsplit(" ", 1)[1]
    user = tomllib.loads(f'name = "ops"\nrole = "admin"\n{hashed.stdout}'
                         f'{tokened.stdout.splitlines()[1]}\n')
    settings = settings_from_mapping({"http": {"users": [user]}})
    users = Users(settings.http.users)
    assert users.check_password("ops", "a long enough password") is not None
    assert users.check_password("ops", "a long enough passwort") is None
    assert users.from_token(token) is not None and users.from_token(token + "x") is None
    refused = run("hash-password", given="short\n")
    assert refused.returncode == 2 and "at least 10" in refused.stderr


def test_spraying_names_locks_the_address_unless_it_is_the_proxys_loopback(console) -> None:
    from marrownode.console.auth import MAX_ADDRESS_FAILURES

    app, _ = console
    remote = app.test_client()
    remote.environ_base["REMOTE_ADDR"] = "10.1.2.3"
    for number in range(MAX_ADDRESS_FAILURES):  # a few guesses per name, many names
        assert _login(remote, f"guess{number}", "guess").status_code == 401
    assert _login(remote, "admin", ADMIN_PASSWORD).status_code == 429  # the address is out
    proxied = app.test_client()  # 127.0.0.1: every client behind a reverse proxy
    for number in range(MAX_ADDRESS_FAILURES):
        assert _login(proxied, f"guess{number}", "guess").status_code == 401
    assert _login(proxied, "admin", ADMIN_PASSWORD).status_code == 303


def test_guessing_a_name_from_one_address_does_not_lock_the_admin_out_elsewhere(
        console) -> None:
    """Five failures for 'admin' from one address lock that address out of 'admin', not the
    real admin at another address (before, the name was locked for everyone)."""
    app, _ = console
    attacker, admin = app.test_client(), app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "10.9.9.9"
    admin.environ_base["REMOTE_ADDR"] = "10.1.1.1"
    for _ in range(5):
        assert _login(attacker, "admin", "guess").status_code == 401
    assert _login(attacker, "admin", ADMIN_PASSWORD).status_code == 429
    assert _login(admin, "admin", ADMIN_PASSWORD).status_code == 303


def test_lockouts_back_off(monkeypatch) -> None:
    """Each lock-out in a row lasts twice the one before (5, 10, 20 ... minutes, at most an
    hour); a success forgets them."""
    from marrownode.console import auth

    clock = {"now": 1000.0}
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock["now"])
    throttle = auth.LoginThrottle()
    key = auth.throttle_keys("admin", "10.0.0.7")
    lengths = []
    for _ in range(3):
        for _ in range(auth.MAX_FAILURES):
            throttle.failed(*key)
        assert throttle.refused(*key)
        started = clock["now"]
        while throttle.refused(*key):
            clock["now"] += 30.0
        lengths.append(clock["now"] - started)
    assert lengths == [300.0, 600.0, 1200.0]
    throttle.succeeded(*key)
    for _ in range(auth.MAX_FAILURES):
        throttle.failed(*key)
    started = clock["now"]
    while throttle.refused(*key):
        clock["now"] += 30.0
    assert clock["now"] - started == 300.0


def test_logout_ends_the_session_on_the_server(console) -> None:
    """A session cookie copied before logout is refused after it (the cookie is signed, so
    only the server's list of open sessions can end it)."""
    app, _ = console
    client = app.test_client()
    assert _login(client, "admin", ADMIN_PASSWORD).status_code == 303
    saved = client.get_cookie("marrownode_session")
    assert saved is not None
    assert client.get("/studies").status_code == 200
    page = client.get("/").get_data(as_text=True)
    assert client.post("/logout", data={"csrf_token": _csrf(page)}).status_code == 303
    replay = app.test_client()
    replay.set_cookie("marrownode_session", saved.value)
    answer = replay.get("/studies")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")


def test_status_without_login_is_health_and_counts_only(console) -> None:
    """/status names no study (no UID, accession number, date or description): health and
    counts; the studies, paged, need a login or a token at /status/studies."""
    app, _ = console
    client = app.test_client()
    body = client.get("/status").get_json()
    text = json.dumps(body)
    assert body["studies"] == 120 and body["instances"] == 120
    assert body["studies_by_state"]["analysed"] == 1 and body["healthy"] is True
    assert "1.2.3." not in text and "ACC" not in text and "Sensitive" not in text
    assert client.get("/status/studies").status_code == 302  # to the login
    assert client.get("/status/studies",
                      headers={"Authorization": "Bearer wrong"}).status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    page = client.get("/status/studies?limit=10&offset=5", headers=bearer).get_json()
    assert len(page["studies"]) == 10 and page["offset"] == 5 and page["instances"] == 120
    assert page["studies"][0]["study_instance_uid"] == "1.2.3.6"
    assert len(client.get("/status/studies?limit=100000", headers=bearer).get_json()[
        "studies"]) == 120  # at most 200 a page



def test_thumbnails_show_the_focus_and_slices_with_marrow() -> None:
    from marrownode.console.thumbnails import overlay_outputs

    def overlay(k: int, marrow: int, focus: int = 0) -> dict[str, Any]:
        return {"kind": "overlay", "sop_instance_uid": f"1.{k}", "marrow_voxels": marrow,
                "focus_voxels": focus}

    stack = [overlay(k, 0) for k in range(20)]
    stack[3:12] = [overlay(k, 100) for k in range(3, 12)]
    stack[10] = overlay(10, 100, focus=30)
    stack[9] = overlay(9, 100, focus=5)
    for k in (1, 2, 13, 14):
        stack[k] = overlay(k, 20)  # slivers at the bodies' edges: not worth a thumbnail
    chosen = overlay_outputs({"dixon_sets": [{"key": "s", "outputs": stack}]})["s"]
    indices = [int(o["sop_instance_uid"].split(".")[1]) for o in chosen]
    assert len(indices) == 4 and 10 in indices and indices == sorted(indices)
    assert all(3 <= k < 12 for k in indices)  # never a slice without marrow
    older = [{"kind": "overlay", "sop_instance_uid": f"1.{k}"} for k in range(20)]
    chosen = overlay_outputs({"dixon_sets": [{"key": "s", "outputs": older}]})["s"]
    assert all(5 <= int(o["sop_instance_uid"].split(".")[1]) < 15 for o in chosen)


def test_a_sets_words_know_its_foci_as_the_summary_page_does(console) -> None:
    """A focal set whose only focus contains fat (a haemangioma) is not called worrying on the
    study page, as on its summary page; a focal set with a low-loss focus still is."""
    app, index = console
    sets = {"1.2.3.3": "fat_containing", "1.2.3.5": "low_signal_loss"}
    for study_uid, category in sets.items():
        index.studies.set_state(study_uid, "analysed", "1 set(s) analysed", report={
            "study_instance_uid": study_uid, "dixon_sets": [{
                "key": "sagittal-1", "orientation": "sagittal", "field_strength_t": 1.5,
                "pattern": "focal", "signal_loss_threshold_percent": 20.0, "flags": [],
                "marrow": {"localised": True, "method": "image", "reason": ""},
                "vertebrae": [], "outputs": [], "foci": [{"vertebra": "V2", "level": "L2",
                                           "category": category}]}]})
    client = app.test_client()
    _login(client, "admin", ADMIN_PASSWORD)
    fatty = client.get("/studies/1.2.3.3").get_data(as_text=True)
    assert "fat-containing focus (haemangioma, focal fat)" in fatty
    assert "worrying for a marrow lesion" not in fatty
    lesion = client.get("/studies/1.2.3.5").get_data(as_text=True)
    assert "worrying for a marrow lesion" in lesion
