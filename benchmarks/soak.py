"""Soak: parallel senders, studies back to back, a PACS that goes away and comes back.

`marrownode serve` (with DCMTK storescp as its PACS) takes STUDIES studies from SENDERS
parallel DCMTK storescu processes; halfway through, the PACS is stopped for OUTAGE seconds.
Sampled every second: the resident memory of the node's whole process tree (node, analysis
worker, receiving processes). At the end: every instance acknowledged by storescu is in the
index, every result is in the PACS exactly once, and the association attempts the node made
while the PACS was away. Orthanc receives the same load for a memory reference.

    python3 benchmarks/soak.py [--senders 8] [--studies 24] [--outage 60] [--write FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run import (
    ENV,
    STORESCP,
    MarrowNode,
    OrthancReceiver,
    free_port,
    storescu,
    wait_port,
)

from marrownode.synthetic.phantom import spine_phantom
from marrownode.synthetic.studies import StudyOptions, build_study, write_datasets


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines()
                              if line.startswith("VmRSS:"))) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(1.0):
            self.samples.append((time.monotonic() - started, tree_rss(self.pid)))


def make_studies(folder: Path, count: int) -> list[Path]:
    folders = []
    for i in range(count):
        target = folder / f"study{i:03d}"
        write_datasets(build_study(StudyOptions(style="siemens", study_key=f"soak{i}"),
                                   spine_phantom(slices=20, rows=256, cols=256)), target)
        folders.append(target)
    return folders


def send_all(port: int, ae_title: str, folders: list[Path], senders: int,
             on_half: threading.Event | None = None) -> float:
    started, lock, queue = time.monotonic(), threading.Lock(), list(folders)
    sent = [0]

    def sender() -> None:
        while True:
            with lock:
                if not queue:
                    return
                folder = queue.pop(0)
            storescu(port, ae_title, folder)
            with lock:
                sent[0] += 1
                if on_half is not None and sent[0] == len(folders) // 2:
                    on_half.set()

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def node_status(work: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "marrownode", "status", "--json", "--config",
                          str(work / "node.toml")], capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="marrownode-soak-") as tmp:
        work = Path(tmp)
        folders = make_studies(work / "studies", args.studies)
        instances = sum(len(list(f.iterdir())) for f in folders)

        pacs_out = work / "pacs"
        pacs_out.mkdir()
        pacs_port = free_port()
        node = MarrowNode(work / "node", destination=("127.0.0.1", pacs_port))
        pacs_log = (work / "storescp.log").open("ab")

        def start_pacs() -> subprocess.Popen[bytes]:
            process = subprocess.Popen([STORESCP, "-v", "-aet", "STORESCP", "-od", str(pacs_out),
                                        str(pacs_port)], env=ENV, stdout=pacs_log,
                                       stderr=subprocess.STDOUT)
            wait_port(pacs_port)
            return process

        pacs = start_pacs()
        node.start()
        assert node.process is not None
        sampler = Sampler(node.process.pid)
        sampler.start()
        half = threading.Event()
        outage: dict[str, float] = {}

        def take_pacs_away() -> None:
            half.wait()
            pacs.terminate()
            pacs.wait(30)
            outage["from"] = time.monotonic()
            time.sleep(args.outage)
            outage["until"] = time.monotonic()

        outage_thread = threading.Thread(target=take_pacs_away)
        outage_thread.start()
        send_seconds = send_all(node.port, node.ae_title, folders, args.senders, half)
        outage_thread.join()
        pacs = start_pacs()
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            report = node_status(node.work)
            studies = report["studies"]
            done = [s for s in studies if s["state"] == "analysed"
                    and all(d["pending"] == 0 for d in s.get("deliveries", []))]
            if len(done) == args.studies:
                break
            time.sleep(2.0)
        finished = time.monotonic()
        sampler.stop.set()
        node.stop()
        pacs.terminate()
        pacs.wait(30)
        pacs_log.close()
        delivered = len(list(pacs_out.iterdir()))
        associations = (work / "storescp.log").read_text(errors="replace").count(
            "Association Received")
        final = node_status(node.work)
        indexed = final["instances"]
        expected = sum(d["delivered"] + d["pending"] + d["failed"]
                       for study in final["studies"] for d in study["deliveries"])

        orthanc = OrthancReceiver(work / "orthanc")
        orthanc.start()
        assert orthanc.process is not None
        orthanc_sampler = Sampler(orthanc.process.pid)
        orthanc_sampler.start()
        orthanc_seconds = send_all(orthanc.port, orthanc.ae_title, folders, args.senders)
        time.sleep(2.0)
        orthanc_sampler.stop.set()
        orthanc.stop()

    rss = [r for _, r in sampler.samples]
    third = max(1, len(rss) // 3)
    summary = {
        "senders": args.senders, "studies": args.studies, "instances_sent": instances,
        "instances_indexed": indexed, "results_expected": expected,
        "results_in_pacs": delivered, "pacs_associations": associations,
        "outage_seconds": args.outage, "send_seconds": round(send_seconds, 1),
        "all_done_seconds": round(finished - (outage.get("until", finished)), 1),
        "node_peak_rss_mb": round(max(rss) / 1e6), "node_rss_first_third_peak_mb":
        round(max(rss[:third]) / 1e6), "node_rss_last_third_peak_mb": round(
            max(rss[-third:]) / 1e6),
        "orthanc_peak_rss_mb": round(max(r for _, r in orthanc_sampler.samples) / 1e6),
        "orthanc_send_seconds": round(orthanc_seconds, 1),
    }
    print(json.dumps(summary, indent=2))
    if args.write:
        args.write.write_text(json.dumps(summary, indent=2) + "\n")
    ok = indexed == instances and delivered == summary["results_expected"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
