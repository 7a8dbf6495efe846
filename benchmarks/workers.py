"""Analysis throughput with 1 and 2 worker processes (issue 28): a burst of 8 spine studies
(2 x 20 x 512 x 512) and 4 whole-body studies (4 stations of 64 x 320 x 260 with water and
fat) sent at once by DCMTK storescu; studies per minute from storescu's last response to the
last result DCMTK storescp accepted. Run: python benchmarks/workers.py [--workers 1,2]."""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    MarrowNode,
    StoreSCP,
    anatomical_phantom,
    build_study,
    index_path,
    storescu,
    write_datasets,
)

from marrownode.synthetic.studies import StudyOptions


class PoolNode(MarrowNode):
    """The benchmark's node with [analysis] workers set."""

    def __init__(self, work: Path, destination: tuple[str, int], workers: int) -> None:
        super().__init__(work, destination)
        self.workers = workers
        self.name = f"marrownode, {workers} worker(s)"

    def command(self) -> list[str]:
        command = super().command()
        config = self.work / "node.toml"
        config.write_text(config.read_text() + f"[analysis]\nworkers = {self.workers}\n")
        return command


def burst(spines: int, whole_bodies: int) -> list:
    """The studies of the burst, each its own Study Instance UID."""
    datasets = []
    spine = anatomical_phantom("infiltrative_focus", "sagittal", shape=(20, 512, 512),
                               pixel_spacing_mm=0.6)
    for n in range(spines):
        datasets += [d for d in build_study(StudyOptions(style="siemens", snr=30,
                                                         study_key=f"burst-spine-{n}"), spine)
                     if d.SeriesDescription.endswith(("_in", "_opp"))]
    body = anatomical_phantom("normal", "axial", shape=(64, 320, 260), pixel_spacing_mm=1.5,
                              slice_thickness_mm=5.0)
    for n in range(whole_bodies):
        for station in range(4):
            datasets += build_study(StudyOptions(
                style="ge_lava", snr=30, study_key=f"burst-body-{n}", orientation="axial",
                station=station, series_number_start=1 + 10 * station), body)
    return datasets


def throughput(work: Path, workers: int, folder: Path, studies: int) -> dict:
    destination = StoreSCP(work / f"pacs-{workers}")
    destination.start()
    node = PoolNode(work / f"node-{workers}", ("127.0.0.1", destination.port), workers)
    node.start()
    try:
        storescu(node.port, node.ae_title, folder)
        sent = time.time()
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            with sqlite3.connect(index_path(node.work / "data")) as db:
                analysed = db.execute("SELECT COUNT(*) FROM studies WHERE state = 'analysed'"
                                      ).fetchone()[0]
                rows = db.execute("SELECT COUNT(*), SUM(state = 'delivered'), MAX(updated_at) "
                                  "FROM outbox").fetchone()
            if analysed == studies and rows[0] and rows[0] == rows[1]:
                seconds = rows[2] - sent
                return {"workers": workers, "studies": studies, "seconds": seconds,
                        "per_minute": 60.0 * studies / seconds}
            time.sleep(0.5)
        raise TimeoutError("the burst was not analysed")
    finally:
        node.stop()
        destination.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--spines", type=int, default=8)
    parser.add_argument("--whole-bodies", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="marrownode-workers-") as tmp:
        work = Path(tmp)
        folder = work / "burst"
        write_datasets(burst(args.spines, args.whole_bodies), folder)
        rows = [throughput(work, int(n), folder, args.spines + args.whole_bodies)
                for n in args.workers.split(",")]
    print("| workers | studies | seconds | studies per minute |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['studies']} | {row['seconds']:.1f} | "
              f"{row['per_minute']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
