"""Issue 29, point 4: the [http] listener is a production WSGI server with bounded threads and
a real backlog. Before: a backlog of 5 and a thread per connection (60 parallel logins: 35
connection resets; 400 trickling connections: 232 threads)."""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time

from marrownode.console.auth import hash_password
from marrownode.monitor import HTTP_THREADS

PASSWORD = "listener password 1"


def _node(node_factory):
    return node_factory(http={"enabled": True, "secure_cookies": False, "users": [
        {"name": "admin", "role": "admin", "password_hash": hash_password(PASSWORD)}]})


def _login(port: int) -> int:
    """One whole login over its own connection: the form, then the POST."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", "/login")
        answer = connection.getresponse()
        page = answer.read().decode()
        cookie = answer.getheader("Set-Cookie", "").split(";")[0]
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token
        body = f"name=admin&password={PASSWORD.replace(' ', '+')}&csrf_token={token.group(1)}"
        connection.request("POST", "/login", body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
        result = connection.getresponse()
        result.read()
        return result.status
    finally:
        connection.close()


def test_sixty_parallel_logins_are_all_answered(node_factory) -> None:
    node = _node(node_factory)
    port = node.http.port
    statuses: list[int | str] = []

    def one() -> None:
        try:
            statuses.append(_login(port))
        except OSError as exc:  # a reset: what the old listener did to 35 of 60
            statuses.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == [303] * 60


def test_trickling_connections_do_not_multiply_threads(node_factory) -> None:
    """200 connections that send one header byte at a time hold no thread each: the node's
    thread count stays within the listener's fixed pool, and /healthz is still answered."""
    node = _node(node_factory)
    port = node.http.port
    before = threading.active_count()
    sockets = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        for _ in range(3):
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
            time.sleep(0.3)
        assert threading.active_count() <= before + HTTP_THREADS
    finally:
        for sock in sockets:
            sock.close()
    deadline = time.monotonic() + 30
    while True:  # the held connections are gone: a real client is served again
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/healthz")
            assert connection.getresponse().status in (200, 503)
            connection.close()
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.5)
