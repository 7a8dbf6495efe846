"""How often a delivery stalls on a stolen C-STORE response (pynetdicom issue #875).

    python benchmarks/sender_stalls.py [COUNT] [--no-guard]

Sends COUNT small Secondary Capture objects (default 8000) through the node's own sender
(net/sender.send_batch, batches of 100) to DCMTK storescp on a loopback port, and counts the
responses pynetdicom's association reactor took off the queue ("Received unexpected C-STORE
service message") and the files that failed because of it. --no-guard leaves out the sender's
park_reactor step, to compare. A short DIMSE timeout (3 s) keeps a stall cheap.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from marrownode.net import pynetdicom_adapter, sender  # noqa: E402


class _Stolen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "unexpected" in record.getMessage():
            self.count += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("count", type=int, nargs="?", default=8000)
    parser.add_argument("--no-guard", action="store_true")
    args = parser.parse_args()
    if args.no_guard:  # both paths: pynetdicom's send_c_store and the node's direct store
        sender.park_reactor = lambda association, timeout=0.0: None
        pynetdicom_adapter.park_reactor = sender.park_reactor
    with tempfile.TemporaryDirectory(prefix="marrownode-stalls-") as tmp:
        files = []
        for i in range(args.count):
            ds = Dataset()
            ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", "1.2.3.4", "OT"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            path = Path(tmp) / f"{i:06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(sender.OutgoingFile(i, path, SecondaryCaptureImageStorage,
                                             ExplicitVRLittleEndian))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        scp = subprocess.Popen(["/usr/bin/storescp", "--fork", "--ignore", str(port)],
                               env={**os.environ, "TCP_NODELAY": "1"})
        time.sleep(0.5)
        stolen = _Stolen()
        logging.getLogger("pynetdicom").addHandler(stolen)
        started = time.perf_counter()
        results = []
        try:
            for k in range(0, len(files), 100):
                results += sender.send_batch(files[k:k + 100], "127.0.0.1", port, "ANY",
                                             "MARROWNODE", timeout=3)
        finally:
            scp.terminate()
    failed = sum(1 for r in results if r.status != 0)
    print(f"{args.count} C-STOREs in {time.perf_counter() - started:.1f} s "
          f"({'without' if args.no_guard else 'with'} park_reactor): "
          f"stolen responses {stolen.count}, failed files {failed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
