"""Orthanc (Debian package) as the real PACS: own temp config, loopback ports, plugins off."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port, require_binary, terminate

ORTHANC = "/usr/sbin/Orthanc"


class Orthanc:
    def __init__(self, folder: Path, modalities: dict[str, list[Any]] | None = None,
                 lua: str | None = None, **options: Any) -> None:
        """lua: a Lua script for Orthanc to run (routing rules); options: more configuration."""
        self.folder = folder
        self.lua = lua
        self.options = options
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ae_title = "ORTHANC"
        self.modalities = modalities or {}
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> Path:
        config = {
            "Name": "marrownode-test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomModalities": self.modalities,
            "Plugins": [],
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "StableAge": 1,
            **self.options,
        }
        path = self.folder / "orthanc.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.lua is not None:
            script = self.folder / "rules.lua"
            script.write_text(self.lua)
            config["LuaScripts"] = [str(script)]
        path.write_text(json.dumps(config))
        return path

    #: Starts on fresh ports when Orthanc ends at once: a free port can be taken by the other
    #: test worker between free_port() and Orthanc's bind ("already in use", seen in a run).
    start_attempts = 5

    def start(self) -> Orthanc:
        require_binary(ORTHANC)
        for attempt in range(self.start_attempts):
            if attempt:
                self.http_port, self.dicom_port = free_port(), free_port()
            if self._started():
                return self
        raise TimeoutError(f"Orthanc did not start in {self.start_attempts} attempts "
                           f"(see {self.folder / 'orthanc.log'})")

    def _started(self) -> bool:
        config = self.config()
        log = (self.folder / "orthanc.log").open("ab")
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.process = subprocess.Popen([ORTHANC, str(config)], stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:  # it ended (a port taken): try again
                return False
            try:  # (whatever holds the port when Orthanc could not bind is not asked long)
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/system",
                                            timeout=2) as answer:
                    if b"marrownode-test-pacs" in answer.read():  # this Orthanc, no other
                        return True
            except (OSError, http.client.HTTPException):
                time.sleep(0.2)
        terminate(self.process)
        return False

    def stop(self) -> None:
        terminate(self.process)
        self.process = None

    def _request(self, path: str, data: bytes | None = None, raw: bool = False) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data)
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
        if raw:
            return body
        return json.loads(body) if body else None

    def get(self, path: str) -> Any:
        return self._request(path)

    def post(self, path: str, body: Any) -> Any:
        return self._request(path, json.dumps(body).encode())

    def upload(self, path: Path) -> Any:
        return self._request("/instances", path.read_bytes())

    def study_id(self, study_uid: str) -> str | None:
        found = self._request("/tools/lookup", study_uid.encode())
        for item in found or []:
            if item["Type"] == "Study":
                return item["ID"]
        return None

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        study = self.study_id(study_uid)
        if study is None:
            return []
        return self.get(f"/studies/{study}/series")

    def instance_count(self) -> int:
        return self.get("/statistics")["CountInstances"]


def node_with_orthanc(node_factory: Any, orthanc_factory: Any) -> tuple[Any, Orthanc]:
    """Orthanc as the node's PACS, each knowing the other: results go to Orthanc, Orthanc may
    forward to the node, and the node may C-FIND and C-GET from it."""
    port = free_port()
    orthanc = orthanc_factory(modalities={"marrownode": ["MARROWNODE", "127.0.0.1", port]})
    orthanc.start()
    node = node_factory(node={"port": port}, completion={"idle_seconds": 60},
                        destinations=[{"name": "pacs", "ae_title": orthanc.ae_title,
                                       "host": "127.0.0.1", "port": orthanc.dicom_port,
                                       "retrieve": "c-get"}])
    return node, orthanc
