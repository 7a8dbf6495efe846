"""Shared fixtures: loopback ports, nodes in-process and as real `marrownode serve` processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from marrownode.config import Settings, settings_from_mapping
from marrownode.node import Node

DCMTK = Path("/usr/bin")
LOOPBACK = "127.0.0.1"
#: Result files for the default synthetic study (12 slices): the summary page, 2 parametric
#: maps, 2 x 12 derived MR, 12 overlay images, the SEG and the SR.
RESULTS_PER_STUDY = 1 + 2 + 24 + 12 + 1 + 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def terminate(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within timeout."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_port(port: int, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port}")


def results_delivered(node: Node, study_uid: str) -> bool:
    """Analysed and nothing left to send to the first destination (series go out while later
    ones are encoded, so an empty queue alone can be a pause between two series)."""
    deliveries = node.index.outbox.summaries(study_uid)
    study = node.index.studies.study(study_uid) or {}
    return study.get("state") == "analysed" and bool(deliveries) and (
        deliveries[0].pending == 0)


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0,
               interval: float = 0.1) -> None:
    """Poll a condition of a running node; fail the test when it never holds. A condition
    that holds only for a moment (a job between two of its stages) wants a short interval."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached")


def make_settings(root: Path, **sections: dict[str, Any]) -> Settings:
    raw: dict[str, Any] = {
        # One receiving process unless a test asks for more (the default is one per core,
        # at most 4; each extra one is a spawned interpreter, a second's start per node).
        "node": {"host": LOOPBACK, "port": free_port(), "receiver_processes": 1},
        "storage": {"root": str(root), "min_free_mb": 1},
        "http": {"enabled": False, "port": free_port()},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(name, {}).update(values)
        else:
            raw[name] = values
    return settings_from_mapping(raw)


def write_config(path: Path, settings: Settings) -> Path:
    from marrownode.config import effective_settings_toml

    path.write_text(effective_settings_toml(settings, reveal_secrets=True))
    return path


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start nodes inside the test process (real sockets); all stopped at teardown."""
    started: list[Node] = []

    def start(**sections: dict[str, Any]) -> Node:
        settings = make_settings(tmp_path / f"node{len(started)}", **sections)
        node = Node(settings)
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop(grace_seconds=2.0)


class ServeProcess:
    """`marrownode serve` in a child process, as systemd would run it."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = config.with_suffix(".log")

    def start(self, port: int | None = None) -> ServeProcess:
        self._log_handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "marrownode", "serve", "--config", str(self.config)],
            stdout=self._log_handle, stderr=subprocess.STDOUT, env=self.env,
        )
        if port is not None:
            wait_for_port(port)
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self._log_handle.close()
        return code

    def stop(self) -> None:
        terminate(self.process)
        if hasattr(self, "_log_handle"):
            self._log_handle.close()


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    processes: list[ServeProcess] = []

    def make(settings: Settings, env: dict[str, str] | None = None) -> ServeProcess:
        config = write_config(tmp_path / f"serve{len(processes)}.toml", settings)
        process = ServeProcess(config, env)
        processes.append(process)
        return process

    yield make
    for process in processes:
        process.stop()


def dcmtk_env() -> dict[str, str]:
    """DCMTK leaves Nagle on unless told; every small PDU would then wait ~40 ms."""
    return {**os.environ, "TCP_NODELAY": "1"}


def require_binary(path: str) -> str:
    if not Path(path).exists():
        pytest.fail(f"{path} is missing: run the README test command, which installs it")
    return path


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Orthanc (the Debian package) with its own temp config on loopback ports."""
    from tests.orthanc import Orthanc

    started: list[Orthanc] = []

    def make(**kwargs: Any) -> Orthanc:
        pacs = Orthanc(tmp_path / f"orthanc{len(started)}", **kwargs)
        started.append(pacs)
        return pacs

    yield make
    for pacs in started:
        pacs.stop()


#: Where tests leave what a person should look at (console screenshots); CI keeps the folder.
ARTEFACTS = Path(os.environ.get("MARROWNODE_ARTEFACTS",
                                Path(__file__).resolve().parents[1] / "build" / "artefacts"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Debian's headless Chromium driven by its ChromeDriver (selenium): a real browser."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = require_binary("/usr/bin/chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-quic",
                     "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(require_binary("/usr/bin/chromedriver")),
                              options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
