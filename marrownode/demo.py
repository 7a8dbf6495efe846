"""`marrownode demo`: the whole loop on loopback with nothing installed beyond the package.

A node and a stand-in PACS start on free loopback ports, a synthetic Dixon spine study (with one
low-fat lesion in a vertebral body) goes to the node over C-STORE, and the demo waits until the
results have been delivered to the stand-in PACS, then prints what came back.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread

from marrownode.config import effective_settings_toml, settings_from_mapping
from marrownode.findings_text import print_findings
from marrownode.net.sender import OutgoingFile, send_batch
from marrownode.net.standin import StandInPACS
from marrownode.node import Node
from marrownode.report_shape import StudyShape
from marrownode.states import StudyState
from marrownode.synthetic.studies import StudyOptions, build_study, extra_series, write_datasets
from marrownode.vocabulary import OutputKind

TIMEOUT_SECONDS = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _print_report(study: StudyShape, pacs_files: int, out: Path,
                  previews: dict[str, Path]) -> None:
    print_findings(study)
    print(f"\nThe stand-in PACS received {pacs_files} result files in {out / 'pacs'}")
    print(f"Node spool, index and results: {out / 'node'}  (try: marrownode status --config "
          f"{out / 'node.toml'})")
    for what, preview in previews.items():
        print(f"{what} preview (PNG): {preview}")


def _summary_preview(study: StudyShape, results_dir: Path, out: Path) -> Path | None:
    """The marrow summary page as a PNG: what the radiologist sees first in the PACS."""
    from PIL import Image

    for dixon_set in study["dixon_sets"]:
        for entry in dixon_set["outputs"]:
            if entry["kind"] == OutputKind.SUMMARY:
                preview = out / "summary-preview.png"
                Image.fromarray(dcmread(results_dir / entry["path"]).pixel_array).save(preview)
                return preview
    return None


def _overlay_preview(study: StudyShape, results_dir: Path, out: Path) -> Path | None:
    from PIL import Image

    for dixon_set in study["dixon_sets"]:
        overlays = [e for e in dixon_set["outputs"] if e["kind"] == OutputKind.OVERLAY]
        if not overlays:
            continue
        focus_slices = [s for f in dixon_set["foci"] for s in f["slice_indices"]]
        index = focus_slices[len(focus_slices) // 2] if focus_slices else len(overlays) // 2
        datasets = sorted((dcmread(results_dir / e["path"]) for e in overlays),
                          key=lambda d: int(d.InstanceNumber))
        preview = out / "overlay-preview.png"
        Image.fromarray(datasets[index].pixel_array).save(preview)
        return preview
    return None


def run_demo(out: Path | None = None) -> int:
    """`marrownode demo`: the whole loop on loopback with a synthetic study; exit code."""
    out = (out or Path("marrownode-demo")).resolve()
    for leftover in ("node", "pacs", "scanner"):
        shutil.rmtree(out / leftover, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pacs = StandInPACS(out / "pacs", ae_title="DEMOPACS").start()
    raw = {
        "node": {"host": "127.0.0.1", "port": _free_port(), "allowed_calling_aets": ["SCANNER"]},
        "storage": {"root": str(out / "node"), "min_free_mb": 64},
        "completion": {"idle_seconds": 30},
        "destinations": [{"name": "demo-pacs", "ae_title": "DEMOPACS", "host": "127.0.0.1",
                          "port": pacs.port}],
        "http": {"enabled": False},
        "logging": {"level": "WARNING"},
    }
    settings = settings_from_mapping(raw, source="demo")
    (out / "node.toml").write_text(effective_settings_toml(settings))
    node = Node(settings)
    print(f"marrownode demo: node MARROWNODE on 127.0.0.1:{settings.node.port}, "
          f"stand-in PACS DEMOPACS on 127.0.0.1:{pacs.port}")
    node.start()
    try:
        options = StudyOptions(style="siemens", snr=30, study_key="marrownode-demo",
                               patient_name="Demo^Marrow", patient_id="DEMO-1")
        datasets = build_study(options) + extra_series(options, "t2")
        files = write_datasets(datasets, out / "scanner")
        outgoing = [OutgoingFile(i, path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                    for i, (path, ds) in enumerate(zip(files, datasets, strict=True))]
        print(f"sending a synthetic lumbar-spine Dixon study ({len(datasets)} images, "
              f"Siemens-style labels, 1.5 T) from SCANNER ...")
        results = send_batch(outgoing, "127.0.0.1", settings.node.port, "MARROWNODE", "SCANNER")
        if any(r.status != 0 for r in results):
            print("the node did not accept every image", file=sys.stderr)
            return 1
        study_uid = str(datasets[0].StudyInstanceUID)
        study = _wait_for_delivery(node, study_uid, started)
        if study is None:
            print(f"no results within {TIMEOUT_SECONDS} s; see marrownode status",
                  file=sys.stderr)
            return 1
        report: StudyShape = json.loads(study["report"])
        results_dir = node.spool.results_dir(study_uid)
        previews = {"Summary page": _summary_preview(report, results_dir, out),
                    "Overlay": _overlay_preview(report, results_dir, out)}
        _print_report(report, len(pacs.received), out,
                      {what: path for what, path in previews.items() if path is not None})
        print(f"\ndone in {time.monotonic() - started:.1f} s")
        return 0
    finally:
        node.stop(grace_seconds=2)
        pacs.stop()


def _wait_for_delivery(node: Node, study_uid: str, started: float) -> dict[str, Any] | None:
    while time.monotonic() - started < TIMEOUT_SECONDS:
        study = node.index.studies.study(study_uid)
        if study is not None and study["state"] in (StudyState.FAILED, StudyState.NO_DIXON_SET):
            return None
        deliveries = node.index.outbox.summaries(study_uid)
        if (study is not None and study["state"] == StudyState.ANALYSED and deliveries
                and all(d.pending == 0 for d in deliveries)):
            return study
        time.sleep(0.2)
    return None

