"""How fast the operator console answers on a large spool (#18): an index of 5,000 studies
(40 instances, one analysed Dixon set, 40 deliveries and 8 trail events each: 200,000 instance
and 200,000 outbox rows), served by the node's own [http] listener over loopback, measured as a
script would fetch it (bearer token). With --orthanc, the same number of studies in Orthanc
(Debian package, one small instance each) and its study list (/tools/find, 50 per page,
expanded) and an accession search, in the same run, for a ratio.

    python benchmarks/console.py [--studies 5000] [--repeat 20] [--orthanc]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from marrownode.actions import Operator
from marrownode.config import settings_from_mapping
from marrownode.console.app import ConsoleContext, create_app
from marrownode.console.auth import new_token
from marrownode.monitor import Health, HTTPService
from marrownode.store.index import Index
from marrownode.store.spool import Spool
from tests.conftest import free_port

PATTERNS = ("normal", "normal", "normal", "focal", "diffuse")


def fill_index(index: Index, studies: int) -> None:
    """Rows as the node writes them, inserted in one transaction (the read path is measured)."""
    now = time.time() - studies * 60
    with index.db.transaction() as db:
        for number in range(studies):
            uid = f"2.25.{number + 1000}"
            received = now + number * 60
            header = {"study_uid": uid, "accession_number": f"ACC{number:05d}",
                      "study_date": "20261201", "study_description": "MRI LUMBAR SPINE",
                      "patient_name": f"Patient^Number{number}", "modality": "MR",
                      "series_description": "t1_vibe_dixon_sag_in", "series_number": 1,
                      "manufacturer": "SIEMENS", "frames": [{"echo_time": 2.3}] * 1}
            db.execute(
                """INSERT INTO studies (study_uid, state, reason, pending_events, first_received,
                       last_received, updated_at, report, described, accession_number,
                       study_date, study_description, patient_name)
                   VALUES (?, ?, '1 set(s) analysed', 0, ?, ?, ?, ?, 1, ?, ?, ?, ?)""",
                (uid, "failed" if number % 97 == 0 else "analysed", received, received,
                 received + 5, json.dumps({"study_instance_uid": uid, "dixon_sets": []}),
                 header["accession_number"], "20261201", "MRI LUMBAR SPINE",
                 header["patient_name"]))
            db.executemany(
                "INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,1)",
                [(f"{uid}.1.{i}", uid, f"{uid}.{1 + i // 10}", "1.2.840.10008.5.1.4.1.1.4",
                  "1.2.840.10008.1.2.1", f"/spool/{uid}/{i}.dcm", 140_000, received, None,
                  json.dumps({**header, "series_uid": f"{uid}.{1 + i // 10}",
                              "sop_instance_uid": f"{uid}.1.{i}"}))
                 for i in range(40)])
            set_report = {"key": "sagittal-1", "pattern": PATTERNS[number % len(PATTERNS)],
                          "vertebrae": [{"label": f"L{n}"} for n in range(1, 6)], "foci": []}
            db.execute("INSERT INTO dixon_sets VALUES (?, 'sagittal-1', 'analysed', '', ?, ?)",
                       (uid, received + 5, json.dumps(set_report)))
            state = "failed" if number % 50 == 0 else "delivered"
            db.executemany(
                """INSERT INTO outbox (study_uid, destination, sop_instance_uid, sop_class_uid,
                       transfer_syntax, path, state, attempts, next_attempt_at, last_status,
                       last_error, queued_at, updated_at)
                   VALUES (?, 'pacs', ?, '1.2.840.10008.5.1.4.1.1.30', '1.2.840.10008.1.2.1',
                           ?, ?, 1, 0, 0, '', ?, ?)""",
                [(uid, f"{uid}.9.{i}", f"results/{i}.dcm", state, received + 5, received + 8)
                 for i in range(40)])
            db.executemany("INSERT INTO events (study_uid, at, kind, detail) VALUES (?,?,?,?)",
                           [(uid, received + i, kind, "detail")
                            for i, kind in enumerate(("received", "completed", "analysing",
                                                      "analysed", "delivery", "delivery",
                                                      "delivery", "delivery"))])


def timed(url: str, token: str, repeat: int, body: bytes | None = None) -> dict[str, float]:
    """Median and 95th percentile of whole requests (connect, answer, read), in ms."""
    samples = []
    for _ in range(repeat):
        request = urllib.request.Request(url, data=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
            assert answer.status == 200, url
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 1),
            "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 1)}


def console_run(root: Path, studies: int, repeat: int) -> dict[str, Any]:
    token, digest = new_token()
    settings = settings_from_mapping({
        "storage": {"root": str(root)},
        "http": {"port": free_port(), "users": [{"name": "bench", "role": "admin",
                                       "token_sha256": digest}]},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                          "port": 104}]})
    index = Index(root / "index.sqlite3")
    started = time.perf_counter()
    fill_index(index, studies)
    filled = time.perf_counter() - started
    health = lambda: Health(True, True, True)  # noqa: E731
    facts = {"receivers": {"port": 0, "processes": 1, "instances": 0, "accepted": 0,
                           "rejected": 0, "failures": {}},
             "worker": {"alive": True, "pid": 0, "deaths": 0}}
    app = create_app(health, CollectorRegistry(), index.status, ConsoleContext(
        settings, index, Operator(index, Spool(root, 0), ["pacs"]), health, lambda: facts))
    service = HTTPService(settings.http, app)
    service.start()
    base = f"http://127.0.0.1:{service.port}"
    last_page = -(-studies // 50)
    middle = f"2.25.{1000 + studies // 2}"
    try:
        pages = {
            "studies, first page": "/studies",
            "studies, last page": f"/studies?page={last_page}",
            "search by accession": f"/studies?q=ACC{studies // 3:05d}",
            "search by patient name": "/studies?q=Number4321",
            "filter: failed studies": "/studies?state=failed",
            "filter: focal pattern": "/studies?pattern=focal",
            "filter: failed deliveries": "/studies?delivery=failed",
            "one study (40 deliveries, trail)": f"/studies/{middle}",
            "overview": "/",
        }
        timed(base + "/studies", token, 3)  # warm the page cache and the templates
        results = {name: timed(base + path, token, repeat) for name, path in pages.items()}
    finally:
        service.stop()
    return {"studies": studies, "index_mb": round((root / "index.sqlite3").stat().st_size / 1e6),
            "fill_seconds": round(filled, 1), "requests": results}


def orthanc_run(root: Path, studies: int, repeat: int) -> dict[str, Any]:
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from tests.orthanc import Orthanc

    orthanc = Orthanc(root / "orthanc").start()
    try:
        started = time.perf_counter()
        for number in range(studies):
            dataset = Dataset()
            dataset.file_meta = FileMetaDataset()
            dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
            dataset.PatientName, dataset.PatientID = f"Patient^Number{number}", f"P{number}"
            dataset.AccessionNumber, dataset.StudyDate = f"ACC{number:05d}", "20261201"
            dataset.StudyDescription, dataset.Modality = "MRI LUMBAR SPINE", "MR"
            buffer = io.BytesIO()
            dcmwrite(buffer, dataset, enforce_file_format=True)
            orthanc._request("/instances", buffer.getvalue())
        filled = time.perf_counter() - started
        base = f"http://127.0.0.1:{orthanc.http_port}"
        find = {"Level": "Study", "Expand": True, "Query": {}, "Limit": 50}
        search = {"Level": "Study", "Expand": True, "Limit": 50,
                  "Query": {"AccessionNumber": f"*{studies // 3:05d}*"}}
        results = {
            "studies, first page (/tools/find, 50)": timed(
                base + "/tools/find", "", repeat, json.dumps(find).encode()),
            "search by accession (/tools/find)": timed(
                base + "/tools/find", "", repeat, json.dumps(search).encode()),
        }
    finally:
        orthanc.stop()
    return {"studies": studies, "fill_seconds": round(filled, 1), "requests": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--orthanc", action="store_true", help="measure Orthanc too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report: dict[str, Any] = {"marrownode": console_run(Path(folder) / "node", args.studies,
                                                            args.repeat)}
        if args.orthanc:
            report["orthanc"] = orthanc_run(Path(folder), args.studies, args.repeat)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
