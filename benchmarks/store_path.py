"""CPU per instance of the ingest store path alone, without the network (issue 28): what a
receiving thread does for each C-STORE once its data set has arrived - the temp file written
in 64 KiB pieces, the soundness walk, the file's and the folder's flushes, the rename and the
index row. The same 500 x 132 KB instances as the ingest benchmark. The rates of the ingest
benchmark swing with this VM's disk (fdatasync p50 0.4-0.6 ms, p99 1-7 ms, hour by hour);
the CPU an instance costs here swings less, so a change to the path shows in it first.

Run: python benchmarks/store_path.py [--instances 500] [--repetitions 3] [--no-flush] [--keep]
Compare two checkouts: PYTHONPATH=/path/to/other/checkout python benchmarks/store_path.py
(--no-flush leaves out both flushes: the path's own CPU beside the disk's.)

Runs one after another want --keep: on this VM's ext4 (no journal) creating a file skips every
inode freed in the last 5-35 s, so a run that follows the removal of the last one's files
costs two to three times the CPU (performance.md, "a fair ingest benchmark")."""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This checkout's marrownode unless PYTHONPATH names another (the comparison above).
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import marrownode
import marrownode.store.spool as spool_module
from marrownode.config import Settings
from marrownode.receiving import open_ingestor, open_spool
from marrownode.store.database import index_path
from marrownode.store.index import Index
from marrownode.synthetic.phantom import spine_phantom
from marrownode.synthetic.studies import StudyOptions, extra_series, write_datasets

PIECE = 64 * 1024  # what a 64 KiB P-DATA-TF PDU hands the writer


def one_run(blobs: list[bytes], root: Path) -> dict[str, float]:
    """Store every blob as a received instance; CPU (user, system) and wall per instance."""
    settings = Settings.model_validate({"storage": {"root": str(root), "min_free_mb": 64}})
    spool = open_spool(settings)
    spool.prepare()
    Index(index_path(root)).close()
    ingestor = open_ingestor(spool, index_path(root))
    ingestor.studies.open_association("bench", "BENCH", "127.0.0.1:1")
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for blob in blobs:
        incoming = spool.incoming()
        for start in range(0, len(blob), PIECE):
            incoming.write(blob[start:start + PIECE])
        outcome = ingestor.store_file(incoming, "bench")
        assert outcome.path is not None, outcome
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    count = len(blobs)
    return {"user_us": (after.ru_utime - before.ru_utime) / count * 1e6,
            "system_us": (after.ru_stime - before.ru_stime) / count * 1e6,
            "wall_us": wall / count * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--no-flush", action="store_true",
                        help="leave out the fdatasync and the folder's fsync")
    parser.add_argument("--keep", action="store_true",
                        help="leave the files (for runs one after another; see above)")
    args = parser.parse_args()
    if args.no_flush:
        os.fdatasync = lambda fd: None  # type: ignore[assignment]
        spool_module.fsync_directory = lambda path: None  # type: ignore[assignment]
    work = Path(tempfile.mkdtemp(prefix="marrownode-store-path-"))
    try:
        phantom = spine_phantom(slices=args.instances, rows=256, cols=256)
        folder = work / "files"
        write_datasets(extra_series(StudyOptions(study_key="bench-store"), "t2", phantom),
                       folder)
        blobs = [path.read_bytes() for path in sorted(folder.iterdir())]
        runs = [one_run(blobs, work / f"run{n}") for n in range(args.repetitions)]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"marrownode from {Path(marrownode.__file__).parent}"
          + (f"; files kept in {work}" if args.keep else ""))
    print(f"{len(blobs)} instances of {len(blobs[0]) / 1000:.0f} KB, "
          f"{'no flushes' if args.no_flush else 'flushed'}; per instance, each run:")
    for run in runs:
        print(f"  CPU {run['user_us'] + run['system_us']:5.0f} us (user {run['user_us']:4.0f}, "
              f"system {run['system_us']:4.0f}), wall {run['wall_us']:5.0f} us")
    print(f"median CPU {statistics.median(r['user_us'] + r['system_us'] for r in runs):.0f} us, "
          f"wall {statistics.median(r['wall_us'] for r in runs):.0f} us")


if __name__ == "__main__":
    main()
