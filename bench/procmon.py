"""Running one engine in its own process: wall time, peak RSS of its process tree, timestamped output.

RSS is sampled every 0.1 s over the process and all of its descendants (for
whisperd: the daemon, its worker and multiprocessing's helper); the peak is
the largest sum seen in one sample. Each line the process writes to stderr is
stamped with the time it arrived, which times log events more finely than
the log's one-second timestamps.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import psutil

SAMPLE_SECONDS = 0.1
MB = 1024 * 1024


@dataclass
class TreeSample:
    peak_rss: int = 0  # bytes, whole tree, in one sample
    peak_root_rss: int = 0  # bytes, the process itself
    peak_by_role: dict[str, int] = field(default_factory=dict)  # bytes, per role (see _role)
    samples: int = 0


def _role(proc: psutil.Process, root_pid: int) -> str:
    if proc.pid == root_pid:
        return "main"
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return "other"
    if "resource_tracker" in cmd:
        return "mp-resource-tracker"
    if "spawn_main" in cmd or "multiprocessing" in cmd:
        return "worker"
    return "other"


class TreeMonitor:
    """Samples the RSS of ``pid`` and its descendants on a thread until stopped."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        self.pid = pid
        self.interval = interval
        self.result = TreeSample()
        self._stop = threading.Event()
        self._roles: dict[int, str] = {}
        self._thread = threading.Thread(target=self._loop, name=f"rss-{pid}", daemon=True)

    def start(self) -> "TreeMonitor":
        self._thread.start()
        return self

    def stop(self) -> TreeSample:
        self._stop.set()
        self._thread.join()
        return self.result

    def sample(self) -> int:
        """The tree's RSS now, in bytes (0 once the process is gone)."""
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return 0
        total = 0
        r = self.result
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            role = self._roles.get(p.pid)
            if role is None:
                role = self._roles[p.pid] = _role(p, self.pid)
            if rss > r.peak_by_role.get(role, 0):
                r.peak_by_role[role] = rss
            if p.pid == self.pid and rss > r.peak_root_rss:
                r.peak_root_rss = rss
        r.peak_rss = max(r.peak_rss, total)
        r.samples += 1
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def own_cpu_seconds() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


@dataclass
class Finished:
    returncode: int
    wall_s: float
    started: float  # time.time() at Popen
    rss: TreeSample
    stdout: str
    lines: list[tuple[float, str]]  # (time.time() on arrival, stderr line)
    cpu_s: float = 0.0  # CPU seconds of the process and the descendants it waited for
    machine_busy_s: float = 0.0  # CPU seconds spent by every process on the machine meanwhile
    own_s: float = 0.0  # of which by this bench process (sampling, reading output)
    extra_s: float = 0.0  # of which by processes the bench started on purpose (the CPU hog)
    timed_out: bool = False

    @property
    def foreign_cores(self) -> float:
        """Average number of cores other processes kept busy during the run (other engineers' tests)."""
        other = self.machine_busy_s - self.cpu_s - self.own_s - self.extra_s
        return max(0.0, other) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def peak_rss_mb(self) -> float:
        return self.rss.peak_rss / MB

    def stderr_tail(self, n: int = 30) -> str:
        return "\n".join(line for _, line in self.lines[-n:])


def run_monitored(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    on_line: Callable[[float, str], None] | None = None,
    extra_cpu: Callable[[], float | None] | None = None,
) -> Finished:
    """Run ``cmd`` to completion, sampling its tree's RSS; stderr lines are stamped as they arrive."""
    lines: list[tuple[float, str]] = []
    extra0 = (extra_cpu() or 0.0) if extra_cpu else 0.0
    busy0, own0, kids0 = busy_cpu_seconds(), own_cpu_seconds(), _children_cpu_seconds()
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    monitor = TreeMonitor(proc.pid).start()
    out_chunks: list[str] = []

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            now = time.time()
            line = line.rstrip("\n")
            lines.append((now, line))
            if on_line is not None:
                on_line(now, line)

    def read_out() -> None:
        assert proc.stdout is not None
        out_chunks.append(proc.stdout.read())

    readers = [threading.Thread(target=read_err, daemon=True), threading.Thread(target=read_out, daemon=True)]
    for t in readers:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_tree(proc.pid)
        proc.wait()
    wall = time.perf_counter() - t0
    rss = monitor.stop()
    busy1, own1, kids1 = busy_cpu_seconds(), own_cpu_seconds(), _children_cpu_seconds()
    extra1 = (extra_cpu() or 0.0) if extra_cpu else 0.0
    for t in readers:
        t.join(timeout=10)
    return Finished(proc.returncode, wall, started, rss, "".join(out_chunks), lines, kids1 - kids0, busy1 - busy0, own1 - own0,
                    extra1 - extra0, timed_out)


def others_busy_cores(window: float, extra_cpu: Callable[[], float | None] | None = None) -> float:
    """How many cores other processes kept busy over the next ``window`` seconds (this process and
    ``extra_cpu``'s, the CPU hog's, not counted)."""
    e0 = (extra_cpu() or 0.0) if extra_cpu else 0.0
    b0, o0 = busy_cpu_seconds(), own_cpu_seconds()
    time.sleep(window)
    e1 = (extra_cpu() or 0.0) if extra_cpu else 0.0
    other = (busy_cpu_seconds() - b0) - (own_cpu_seconds() - o0) - (e1 - e0)
    return max(0.0, other) / window


def wait_for_quiet(max_wait: float, *, threshold: float = 0.15, need: int = 3, window: float = 1.0,
                   extra_cpu: Callable[[], float | None] | None = None) -> float:
    """Wait until other processes stay under ``threshold`` cores for ``need`` windows in a row, at most
    ``max_wait`` seconds; the seconds waited."""
    t0 = time.monotonic()
    streak = 0
    while time.monotonic() - t0 < max_wait:
        if others_busy_cores(window, extra_cpu) < threshold:
            streak += 1
            if streak >= need:
                break
        else:
            streak = 0
    return time.monotonic() - t0


def _kill_tree(pid: int) -> None:
    """SIGKILL a process this module started, and its descendants."""
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


class CpuHog:
    """A plain Python busy loop in its own process, pinned to one core (the other engineer's build)."""

    def __init__(self, core: int | None = None) -> None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        self.core = cores[-1] if core is None else core
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "CpuHog":
        code = (
            "import os\n"
            f"os.sched_setaffinity(0, {{{self.core}}}) if hasattr(os, 'sched_setaffinity') else None\n"
            "parent = os.getppid()\n"
            "x = 0\n"
            "while x % 10_000_000 or os.getppid() == parent:  # ends with the bench, if that is killed\n"
            "    x += 1\n"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(0.5)  # let it take its core
        return self

    def cpu_seconds(self) -> float | None:
        """CPU time the loop has had so far (user + system)."""
        if self.proc is None:
            return None
        try:
            t = psutil.Process(self.proc.pid).cpu_times()
        except psutil.Error:
            return None
        return t.user + t.system

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
