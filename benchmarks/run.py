"""marrownode's measured claims, side by side with DCMTK storescp and Orthanc in the same run.

    python benchmarks/run.py            # everything (about 10 minutes on 2 cores)
    python benchmarks/run.py --quick    # smaller: a smoke run of every section

Sections: ingest (one and four parallel associations, DCMTK storescu as the sender; receivers
DCMTK storescp, Orthanc, marrownode as configured by default (one receiving process per core,
at most 4) and with one, and
pynetdicom storing nothing: the ceiling of the pynetdicom receive path marrownode replaced with its
own upper layer, kept for reference), time to result (spine
and whole-body), analysis stages with the worker's peak RSS and the send to a PACS. Every
DCMTK/Orthanc process gets TCP_NODELAY=1, or Nagle's algorithm would make every figure
meaningless. marrownode is measured once it is up (its analysis worker warmed up), as in service.
Prints a Markdown table; docs/performance.md keeps the last one with the machine and date.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from marrownode.config import NodeSettings  # noqa: E402
from marrownode.store.database import index_path  # noqa: E402
from marrownode.synthetic.anatomy import anatomical_phantom  # noqa: E402
from marrownode.synthetic.lumbar import lumbar_phantom  # noqa: E402
from marrownode.synthetic.phantom import spine_phantom  # noqa: E402
from marrownode.synthetic.studies import (  # noqa: E402
    StudyOptions,
    build_study,
    extra_series,
    write_datasets,
)

STORESCU, STORESCP, ORTHANC = "/usr/bin/storescu", "/usr/bin/storescp", "/usr/sbin/Orthanc"
ENV = {**os.environ, "TCP_NODELAY": "1"}
WARM_UP_SECONDS = 4.0
IDLE_WAIT_SECONDS = 60.0


class MachineCPU:
    """The whole machine's CPU over a stretch of time, from /proc/stat: what every process
    used (senders, receiver, PACS, kernel work such as fsync) and what the hypervisor took
    (steal). Throughput on two shared cores is CPU: these say where a figure's time went and
    how contended the VM was while it was taken."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> list[int]:
        with open("/proc/stat") as stat:
            return [int(v) for v in stat.readline().split()[1:9]]

    def since(self) -> dict[str, float]:
        """CPU-seconds busy (user, nice, system, irq, softirq) and stolen, and the steal share."""
        now = self._read()
        user, nice, system, idle, iowait, irq, softirq, steal = (
            (b - a) / self.TICK for a, b in zip(self._start, now, strict=True))
        busy = user + nice + system + irq + softirq
        total = busy + idle + iowait + steal
        return {"busy_s": busy, "steal_s": steal,
                "steal_share": steal / total if total else 0.0}


class TreeCPU:
    """CPU-seconds of a process and its descendants over a stretch of time, from /proc: user and
    system time of each process alive at either end, with what its waited-for children used
    (a forked helper that ended, a DCMTK storescp child per association). Split by part: a
    process whose command line names one of `parts` counts for that part, any other for
    "main". Descendants that ended without being waited for are not counted."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, root: int, parts: dict[str, str] | None = None) -> None:
        self.root = root
        self.parts = parts or {}
        self._start = self._read()

    def _read(self) -> dict[int, tuple[str, float]]:
        table: dict[int, tuple[int, str, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat_file:
                    stat = stat_file.read()
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # ended meanwhile
                continue
            fields = stat.rsplit(")", 1)[1].split()
            seconds = sum(int(v) for v in fields[11:15]) / self.TICK  # utime stime cutime cstime
            table[int(entry)] = (int(fields[1]), command, seconds)
        tree, frontier = {self.root}, [self.root]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, (ppid, _, _) in table.items() if ppid == parent]
            tree.update(children)
            frontier.extend(children)
        return {pid: (self._part(table[pid][1]), table[pid][2]) for pid in tree if pid in table}

    def _part(self, command: str) -> str:
        return next((part for part, word in self.parts.items() if word in command), "main")

    def since(self) -> dict[str, float]:
        """CPU-seconds per part since this was made (alive processes and reaped children)."""
        used: dict[str, float] = {part: 0.0 for part in ("main", *self.parts)}
        for pid, (part, seconds) in self._read().items():
            used[part] += seconds - self._start.get(pid, (part, 0.0))[1]
        return used


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(port)


# --- receivers ---------------------------------------------------------------------------------


class Receiver:
    name = ""
    ae_title = "ANY"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.process = subprocess.Popen(self.command(), env=ENV, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, cwd=self.work)
        wait_port(self.port)
        time.sleep(0.3)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


class StoreSCP(Receiver):
    name = "DCMTK storescp"

    def command(self) -> list[str]:
        out = self.work / "out"
        out.mkdir(exist_ok=True)
        return [STORESCP, "--fork", "-od", str(out), str(self.port)]


class OrthancReceiver(Receiver):
    name = "Orthanc"
    ae_title = "ORTHANC"

    def command(self) -> list[str]:
        config = {"StorageDirectory": str(self.work / "storage"),
                  "IndexDirectory": str(self.work / "index"), "HttpPort": free_port(),
                  "DicomPort": self.port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
                  "Plugins": [], "DicomCheckCalledAet": False, "StorageCompression": False}
        (self.work / "orthanc.json").write_text(json.dumps(config))
        return [ORTHANC, str(self.work / "orthanc.json")]


class MarrowNode(Receiver):
    name = "marrownode"
    ae_title = "MARROWNODE"

    def __init__(self, work: Path, destination: tuple[str, int] | None = None,
                 receiver_processes: int | None = None) -> None:
        """receiver_processes: None for the node's default (one per core, at most 4)."""
        super().__init__(work)
        self.destination = destination
        self.receiver_processes = receiver_processes
        if receiver_processes is None:
            default = NodeSettings().receiver_processes
            self.name = f"marrownode (default: {default} receiving processes)"
        else:
            self.name = (f"marrownode, {receiver_processes} receiving process"
                         f"{'es' if receiver_processes > 1 else ''}")

    def command(self) -> list[str]:
        lines = [
            "[node]", 'host = "127.0.0.1"', f"port = {self.port}", "max_associations = 16",
            *([f"receiver_processes = {self.receiver_processes}"]
              if self.receiver_processes is not None else []),
            "[storage]", f'root = "{self.work / "data"}"', "min_free_mb = 64",
            "[completion]", "idle_seconds = 600",
            "[http]", "enabled = false",
            "[logging]", 'level = "WARNING"',
        ]
        if self.destination:
            lines += ["[[destinations]]", 'name = "pacs"', 'ae_title = "STORESCP"',
                      'host = "127.0.0.1"', f"port = {self.destination[1]}"]
        (self.work / "node.toml").write_text("\n".join(lines) + "\n")
        return [sys.executable, "-m", "marrownode", "serve", "--config",
                str(self.work / "node.toml")]

    def start(self) -> None:
        super().start()
        # A node in service has been up for a while: let the analysis worker finish its warm-up
        # rehearsal (about 1 s of CPU, several on a slow day) so the figures are a running
        # node's, not a cold start's: at least WARM_UP_SECONDS, then until the node is idle.
        # (A fixed wait let the spine's job queue behind the rehearsal: 8.4 s at 18:28.)
        time.sleep(WARM_UP_SECONDS)
        assert self.process is not None
        deadline = time.monotonic() + IDLE_WAIT_SECONDS
        while time.monotonic() < deadline:
            cpu = TreeCPU(self.process.pid)
            time.sleep(0.5)
            if sum(cpu.since().values()) < 0.05:  # CPU-seconds in half a second
                return
        raise RuntimeError(f"{self.name} still busy {IDLE_WAIT_SECONDS:.0f} s after starting")


class PynetdicomCeiling(Receiver):
    """pynetdicom with a C-STORE handler that stores nothing: the most any pynetdicom-based
    receiver can do on this machine, the reason marrownode receives over its own upper layer."""

    name = "pynetdicom, storing nothing"
    script = """
import socket, sys
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer
class Server(ThreadedAssociationServer):
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()
ae = AE("ANY")
ae.maximum_associations = 16
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax)
ae.make_server(("127.0.0.1", int(sys.argv[1])), server_class=Server,
               evt_handlers=[(evt.EVT_C_STORE, lambda event: 0)]).serve_forever()
"""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script, str(self.port)]


def storescu(port: int, ae_title: str, folder: Path) -> None:
    subprocess.run([STORESCU, "-aec", ae_title, "+sd", "127.0.0.1", str(port), str(folder)],
                   env=ENV, check=True, capture_output=True, timeout=1800)


# --- sections ----------------------------------------------------------------------------------


def ingest(work: Path, instances: int, repetitions: int) -> list[dict]:
    """img/s and MB/s with one and with four parallel associations, medians of repetitions."""
    phantom = spine_phantom(slices=instances, rows=256, cols=256)
    datasets = extra_series(StudyOptions(study_key="bench-ingest"), "t2", phantom)
    folder = work / "ingest-files"
    write_datasets(datasets, folder)
    files = sorted(folder.iterdir())
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    quarters = []
    for part in range(4):
        sub = work / f"ingest-part{part}"
        sub.mkdir(exist_ok=True)
        for file in files[part::4]:
            os.link(file, sub / file.name)
        quarters.append(sub)

    receivers: list[Callable[[Path], Receiver]] = [
        StoreSCP, OrthancReceiver, MarrowNode,
        lambda run: MarrowNode(run, receiver_processes=1), PynetdicomCeiling]
    timings: dict[tuple[str, int], list[float]] = {}
    machine: dict[tuple[str, int], list[dict[str, float]]] = {}
    # Every run writes into a folder of its own, and none is removed before the benchmark
    # ends: on ext4 without a journal (this VM's disk), creating a file skips each inode
    # freed in the last 5-35 s, reading its inode to check when it was freed. Removing a
    # run's 500 files just before the next run made every receiver's file creation cost
    # 0.15-0.7 ms of CPU (storescp x4: 900-1,000 img/s instead of 1,550).
    runs = itertools.count()
    for repetition in range(repetitions):
        for make in receivers:  # alternating within each repetition
            for parallel in (1, 4):
                receiver = make(work / "ingest-runs" / str(next(runs)))
                receiver.start()
                try:
                    assert receiver.process is not None
                    started, cpu = time.perf_counter(), MachineCPU()
                    own = TreeCPU(receiver.process.pid)
                    if parallel == 1:
                        storescu(receiver.port, receiver.ae_title, folder)
                    else:
                        procs = [subprocess.Popen(
                            [STORESCU, "-aec", receiver.ae_title, "+sd", "127.0.0.1",
                             str(receiver.port), str(q)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL) for q in quarters]
                        if any(p.wait(1800) != 0 for p in procs):
                            raise RuntimeError(f"storescu failed against {receiver.name}")
                    elapsed, used = time.perf_counter() - started, cpu.since()
                    used["receiver_s"] = own.since()["main"]
                finally:
                    receiver.stop()
                timings.setdefault((receiver.name, parallel), []).append(elapsed)
                machine.setdefault((receiver.name, parallel), []).append(used)
                print(f"  ingest rep {repetition + 1} {receiver.name:<36} x{parallel}: "
                      f"{len(files) / elapsed:7.1f} img/s", flush=True)
    rows = []
    for (name, parallel), values in timings.items():
        seconds = statistics.median(values)
        used = machine[(name, parallel)]
        rows.append({"receiver": name, "associations": parallel, "img_s": len(files) / seconds,
                     "each_img_s": [len(files) / v for v in values],
                     "mb_s": megabytes / seconds, "instances": len(files),
                     "mb_per_instance": megabytes / len(files),
                     "cpu_ms": statistics.median(u["busy_s"] for u in used) * 1000 / len(files),
                     "receiver_ms": statistics.median(u["receiver_s"] for u in used) * 1000
                     / len(files),
                     "steal": statistics.median(u["steal_share"] for u in used)})
    return rows


def _spine_study() -> list:
    phantom = anatomical_phantom("infiltrative_focus", "sagittal", shape=(20, 512, 512),
                                 pixel_spacing_mm=0.6)
    datasets = build_study(StudyOptions(style="siemens", snr=30, study_key="bench-spine"), phantom)
    return [d for d in datasets if d.SeriesDescription.endswith(("_in", "_opp"))]


def _lumbar_study() -> list:
    """A sagittal lumbar Dixon study as lumbar protocols acquire it: in-phase, opposed-phase,
    water and fat, 11 slices of 320 x 320 each (synthetic/lumbar.py, a central L1 metastasis)."""
    return build_study(StudyOptions(style="siemens", snr=60, study_key="bench-lumbar"),
                       lumbar_phantom("metastasis_centre"))


def _whole_body_study() -> list:
    phantom = anatomical_phantom("normal", "axial", shape=(64, 320, 260), pixel_spacing_mm=1.5,
                                 slice_thickness_mm=5.0)
    out = []
    for station in range(4):
        out += build_study(StudyOptions(style="ge_lava", snr=30, study_key="bench-wb",
                                        orientation="axial", station=station,
                                        series_number_start=1 + 10 * station), phantom)
    return out


def time_to_result(work: Path, name: str, folder: Path, instances: int) -> dict:
    """From storescu's last C-STORE response to the last result accepted by the destination
    (the study's `instances` files in folder)."""
    destination = StoreSCP(work / f"ttr-{name}-pacs")
    destination.start()
    node = MarrowNode(work / f"ttr-{name}-node", ("127.0.0.1", destination.port))
    node.start()
    try:
        storescu(node.port, node.ae_title, folder)
        sent, cpu = time.time(), MachineCPU()
        assert node.process is not None and destination.process is not None
        node_cpu = TreeCPU(node.process.pid, {"analysis": "multiprocessing.forkserver"})
        destination_cpu = TreeCPU(destination.process.pid)
        index = index_path(node.work / "data")
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            with sqlite3.connect(index) as db:
                state = db.execute("SELECT state FROM studies").fetchone()
                rows = db.execute("SELECT COUNT(*), SUM(state = 'delivered'), MAX(updated_at) "
                                  "FROM outbox").fetchone()
            if state and state[0] == "analysed" and rows[0] and rows[0] == rows[1]:
                used = cpu.since()  # (up to 50 ms of polling after the last result)
                by_part = node_cpu.since()
                return {"study": name, "instances": instances, "results": rows[0],
                        "seconds": rows[2] - sent, "cpu_s": used["busy_s"],
                        "steal": used["steal_share"], "node_main_s": by_part["main"],
                        "analysis_s": by_part["analysis"],
                        "destination_s": destination_cpu.since()["main"]}
            time.sleep(0.05)
        raise TimeoutError(f"no results for {name}")
    finally:
        node.stop()
        destination.stop()


def median_run(work: Path, name: str, datasets: list, runs: int) -> dict:
    """time_to_result run `runs` times, each with a node and destination of its own: the run
    with the median time, and every run's time (one run on this machine can be a slow
    minute's)."""
    folder = work / f"ttr-{name}"
    write_datasets(datasets, folder)  # once, for every run
    results = [time_to_result(work / f"run{number}", name, folder, len(datasets))
               for number in range(runs)]
    ordered = sorted(results, key=lambda result: result["seconds"])
    median = dict(ordered[len(ordered) // 2])
    median["each_seconds"] = [result["seconds"] for result in results]
    return median


STAGE_SCRIPT = r"""
import json, os, sys, threading, time
from pathlib import Path
from marrownode.config import Settings
from marrownode.dixon.roles import classify, frames_from_header
from marrownode.dixon.sets import assemble
from marrownode.dixon.volume import PixelCache, load_set
from marrownode.pipeline import discover, quant_parameters
from marrownode.report import SetReport
import marrownode.quant.analysis as quant
import marrownode.results.build as build
from marrownode.net.sender import OutgoingFile, send_batch

folder, out, pacs_port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
settings = Settings()
# Current RSS sampled every 10 ms: ru_maxrss would include the parent's high-water mark,
# which Linux carries across fork and exec.
peak = [0]
def sample():
    page = os.sysconf("SC_PAGE_SIZE")
    while True:
        with open("/proc/self/statm") as statm:
            peak[0] = max(peak[0], int(statm.read().split()[1]) * page)
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
stages = {}
def timed(name, fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    stages[name] = stages.get(name, 0.0) + time.perf_counter() - started
    return value
def stage(name, fn):
    return lambda *args, **kwargs: timed(name, fn, *args, **kwargs)
# The analysis's own steps, timed where analyse_set calls them (its code is unchanged).
for step, names in (("body (noise, tissue)", ("find_body",)),
                    ("maps", ("signal_loss_percent", "signal_intensity_ratio",
                              "fat_fraction_water_fat", "fat_fraction_two_point",
                              "water_fat_consistency")),
                    ("marrow localisation", ("localise",)),
                    ("ROI statistics", ("roi_statistics",)),
                    ("foci", ("find_foci",))):
    for name in names:
        setattr(quant, name, stage(step, getattr(quant, name)))
studies, _ = timed("read headers", discover, [folder])
(instances,) = studies.values()
frames = [f for i in instances for f in frames_from_header(i.header)]
assembly = timed("classify and pair", lambda: assemble(classify(frames)))
cache = PixelCache({i.header["sop_instance_uid"]: i.path for i in instances})
pixel_bytes = 0
slices = 0
for index, dixon_set in enumerate(assembly.sets):
    volumes = timed("load and decode", load_set, dixon_set, cache)
    cache.release_pixels()
    pixel_bytes += sum(v.size * 2 for v in (volumes.in_phase, volumes.opposed, volumes.water,
                                            volumes.fat) if v is not None)
    slices += len(dixon_set.in_phase.frames)
    parameters = quant_parameters(settings)
    result = quant.analyse_set(volumes.in_phase, volumes.opposed, volumes.spacing_mm,
                               dixon_set.field_strength_t, volumes.water, volumes.fat,
                               parameters, geometry=volumes.geometry,
                               scanner_pdff=volumes.scanner_fat_fraction,
                               in_phase_first="in_phase_first" in dixon_set.flags)
    report = SetReport.of(dixon_set)
    report.analysed(result, volumes.geometry, settings.outputs.uid_root, "benchmark",
                    parameters.foci.sharp_margin)
    for kind in ("parametric_map", "derived_mr", "overlay", "sr"):
        only = {k: (k == kind) for k in ("parametric_map", "derived_mr", "overlay", "sr")}
        s = settings.model_copy(update={"outputs": settings.outputs.model_copy(update=only)})
        entries = timed(f"encode {kind}", build.build_results, dixon_set, volumes, result,
                        cache, s, out, report, index)
        files = [OutgoingFile(i, out / e["path"], e["sop_class_uid"], e["transfer_syntax_uid"])
                 for i, e in enumerate(entries)]
        results = timed("send (to DCMTK storescp)", send_batch, files, "127.0.0.1", pacs_port,
                        "STORESCP", "MARROWNODE")
        assert all(r.status == 0 for r in results), results[:3]
time.sleep(0.05)
print(json.dumps({"stages": stages, "peak_rss_bytes": peak[0], "pixel_bytes": pixel_bytes,
                  "sets": len(assembly.sets), "slices": slices}))
"""


def analysis_stages(work: Path, datasets: list) -> dict:
    folder = work / "stages-in"
    write_datasets(datasets, folder)
    pacs = StoreSCP(work / "stages-pacs")
    pacs.start()
    try:
        result = subprocess.run([sys.executable, "-c", STAGE_SCRIPT, str(folder),
                                 str(work / "stages-out"), str(pacs.port)],
                                capture_output=True, text=True, cwd=ROOT, timeout=1800)
    finally:
        pacs.stop()
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- report ------------------------------------------------------------------------------------


def _each_ratio(row: dict, reference: dict) -> str:
    """The lowest and highest of the repetitions' ratios (receivers run back to back)."""
    ratios = [a / b for a, b in zip(row["each_img_s"], reference["each_img_s"], strict=True)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}x"


def flush_latency(work: Path, files: int = 200) -> dict[str, float]:
    """fdatasync of fresh 132 KB files on the benchmark's disk, in ms: what every receiver that
    flushes (marrownode; not storescp or Orthanc) waits for, and on this VM what moves most
    from one hour to the next."""
    folder = work / f"flush-probe-{time.monotonic_ns()}"
    folder.mkdir()
    data, waits = os.urandom(132 * 1024), []
    for number in range(files):
        fd = os.open(folder / f"{number}.bin", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            started = time.perf_counter()
            os.fdatasync(fd)
            waits.append((time.perf_counter() - started) * 1000)
        finally:
            os.close(fd)
    waits.sort()
    # A nearly full disk allocates slower, and below the node's watermark it refuses
    # (0xA700): the table says how much was free.
    return {"p50": waits[files // 2], "p90": waits[files * 9 // 10],
            "p99": waits[files * 99 // 100], "free_gb": shutil.disk_usage(work).free / 1e9}


def render(ingest_rows: list[dict], ttr: list[dict], stages: dict, command: str,
           flushes: list[dict[str, float]] | None = None) -> str:
    lines = [f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
             f"{os.cpu_count()} cores, Python {platform.python_version()}, "
             f"`{command}`"]
    if flushes:
        probes = "; ".join(f"p50 {f['p50']:.2f}, p90 {f['p90']:.2f}, p99 {f['p99']:.2f} ms "
                           f"({f['free_gb']:.0f} GB free)" for f in flushes)
        lines += ["", f"The disk: fdatasync of a fresh 132 KB file (200 files, at the start and "
                      f"at the end of the run): {probes}."]
    lines += ["", "### Ingest (DCMTK storescu as the sender, TCP_NODELAY=1)", "",
             "| receiver | associations | img/s | MB/s | vs Orthanc | vs storescp "
             "| vs Orthanc, each repetition | vs storescp, each repetition "
             "| machine CPU ms per instance | receiver's own | steal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["receiver"], r["associations"]): r for r in ingest_rows}
    for row in ingest_rows:
        orthanc = by[("Orthanc", row["associations"])]
        scp = by[("DCMTK storescp", row["associations"])]
        lines.append(f"| {row['receiver']} | {row['associations']} | {row['img_s']:.1f} | "
                     f"{row['mb_s']:.1f} | {row['img_s'] / orthanc['img_s']:.2f}x | "
                     f"{row['img_s'] / scp['img_s']:.2f}x | {_each_ratio(row, orthanc)} | "
                     f"{_each_ratio(row, scp)} | {row['cpu_ms']:.2f} | "
                     f"{row['receiver_ms']:.2f} | {row['steal']:.0%} |")
    if ingest_rows:
        lines.append(f"\n{ingest_rows[0]['instances']} instances of "
                     f"{ingest_rows[0]['mb_per_instance'] * 1000:.0f} KB; medians of the "
                     "repetitions; each repetition's ratio is taken between receivers run "
                     "one after another in that repetition. Machine CPU: every process on the "
                     "machine (the storescu "
                     "senders included) and the kernel's work for them, per instance; the "
                     "receiver's own: its processes' user and system time (fsync's included), "
                     "per instance; steal: the share of the time the hypervisor gave to "
                     "others.")
    lines += ["", "### Time to result (last C-STORE response to last result accepted)", "",
              "| study | instances | result files | seconds | each run | machine CPU-seconds "
              "meanwhile | analysis worker | node's other processes | destination | steal |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in ttr:
        each = ", ".join(f"{seconds:.2f}" for seconds in row["each_seconds"])
        lines.append(f"| {row['study']} | {row['instances']} | {row['results']} | "
                     f"{row['seconds']:.2f} | {each} | {row['cpu_s']:.2f} | "
                     f"{row['analysis_s']:.2f} | "
                     f"{row['node_main_s']:.2f} | {row['destination_s']:.2f} | "
                     f"{row['steal']:.0%} |")
    if ttr:
        lines.append(f"\nThe median run of each study (its CPU columns are that run's). "
                     f"On {os.cpu_count()} cores a time to result can be no shorter than "
                     "the CPU-seconds it needs divided by the cores (the node's analysis, "
                     "result encoding and sending, and the destination's receiving). By "
                     "process, in CPU-seconds: the analysis worker (with the helpers it forks "
                     "for the map series and the SR), the node's other processes (receiving, "
                     "header summaries, delivery), the destination (DCMTK "
                     "storescp); the rest of the machine's is the kernel's own threads and "
                     "everything else running.")
    if stages:
        lines += ["", "### Whole-body analysis by stage (one process, one core)", "",
                  "| stage | seconds | ms per slice |", "|---|---|---|"]
        for name, seconds in stages["stages"].items():
            lines.append(f"| {name} | {seconds:.2f} | {1000 * seconds / stages['slices']:.1f} |")
        # The worker's share: from classifying (headers come from the index) to encoded files;
        # reading headers is the offline `process` path's, sending the deliverer's.
        outside = ("read headers", "send (to DCMTK storescp)")
        total = sum(v for k, v in stages["stages"].items() if k not in outside)
        analysis = sum(v for k, v in stages["stages"].items()
                       if k not in outside and not k.startswith("encode"))
        budget = 4 * stages["pixel_bytes"] + 200e6
        lines += [f"| **analysis with localisation (classify to ROI statistics)** | "
                  f"**{analysis:.2f}** | {1000 * analysis / stages['slices']:.1f} |",
                  f"| **... and every result encoded on the same core (all but reading headers "
                  f"and sending)** | **{total:.2f}** | {1000 * total / stages['slices']:.1f} |", "",
                  f"{stages['sets']} set(s), {stages['slices']} slices per echo.",
                  f"Peak RSS {stages['peak_rss_bytes'] / 1e6:.0f} MB for "
                  f"{stages['pixel_bytes'] / 1e6:.0f} MB of source pixels "
                  f"(budget 4x pixels + 200 MB = {budget / 1e6:.0f} MB)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sections", default="ingest,ttr,stages")
    parser.add_argument("--write", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    for binary in (STORESCU, STORESCP, ORTHANC):
        if not Path(binary).exists():
            print(f"{binary} missing: apt-get install dcmtk orthanc", file=sys.stderr)
            return 2
    sections = set(args.sections.split(","))
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    with tempfile.TemporaryDirectory(prefix="marrownode-bench-") as tmp:
        work = Path(tmp)
        ingest_rows, ttr, stages = [], [], {}
        flushes = [flush_latency(work)]
        if "ingest" in sections:
            print("ingest ...", flush=True)
            ingest_rows = ingest(work, 100 if args.quick else 500, 1 if args.quick else 5)
        if "ttr" in sections:
            print("time to result ...", flush=True)
            runs = 1 if args.quick else 3
            ttr.append(median_run(work, "sagittal lumbar 2x2x11 320x320", _lumbar_study(), runs))
            ttr.append(median_run(work, "spine 2x20 512x512", _spine_study(), runs))
            if not args.quick:
                ttr.append(median_run(work, "whole body 4x64 320x260 +W/F",
                                      _whole_body_study(), 1))
        if "stages" in sections:
            print("analysis stages ...", flush=True)
            stages = analysis_stages(work, _spine_study() if args.quick else _whole_body_study())
        flushes.append(flush_latency(work))
    table = render(ingest_rows, ttr, stages, command, flushes)
    print("\n" + table)
    if args.write:
        args.write.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
