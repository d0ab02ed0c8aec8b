"""whisperd as users run it: the real ``whisperd`` CLI on a temporary folder tree.

Each run gets its own tree (inbox, outbox, archive, failed, state, a private
HOME whose ``$XDG_STATE_HOME/whisperd/whisperd.log`` is the log) and a config
built from config.example.yaml with a few keys changed. ``drain`` times
``whisperd run --drain`` from process start to exit, a backlog found at
start-up; ``drop_backlog`` times a backlog dropped into a running daemon whose
model is already loaded; ``overhead`` measures a running daemon: queue-to-start
latency with a warm worker, idle CPU, and the daemon's memory once its worker
has exited.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.procmon import MB, Finished, TreeMonitor, busy_cpu_seconds, own_cpu_seconds, run_monitored

REPO = Path(__file__).resolve().parent.parent
WHISPERD = str(Path(sys.executable).parent / "whisperd")
_frozen: Path | None = None  # a copy of daemon/ to run instead of the working tree (--freeze)


def freeze(dest: Path) -> Path:
    """Copy daemon/ to ``dest`` and run whisperd from that copy from now on, so that edits to the
    working tree during the bench do not change the code being measured."""
    global _frozen
    dest = dest.resolve()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(REPO / "daemon", dest / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    _frozen = dest
    return dest


def use_frozen(dest: Path) -> Path:
    """Run whisperd from a copy ``freeze`` made earlier (to resume an interrupted bench)."""
    global _frozen
    _frozen = dest.resolve()
    return _frozen


def command(*args: str) -> list[str]:
    """The whisperd CLI: the installed entry point, or the same ``daemon.cli:main`` from the frozen copy."""
    if _frozen is None:
        return [WHISPERD, *args]
    return [sys.executable, "-c", "import sys; from daemon.cli import main; sys.exit(main())", *args]


def compile_daemon() -> None:
    """Byte-compile the daemon's source as it will run (frozen copy or working tree), as an
    installed package is: with ``PYTHONDONTWRITEBYTECODE`` set, an editable install would
    otherwise compile every module again in each process it starts, which the baselines,
    imported from site-packages, never do."""
    import compileall

    compileall.compile_dir(str((_frozen or REPO) / "daemon"), quiet=1)


def code_fingerprint() -> str:
    """A short hash of the daemon's source as it will run now (frozen copy or working tree)."""
    root = (_frozen or REPO) / "daemon"
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]
EXAMPLE = REPO / "config.example.yaml"
_ACTION = re.compile(r"\baction=(\S+)")
_JOB = re.compile(r"\bjob=(\d+)")


@dataclass(frozen=True)
class Settings:
    """The model keys a run varies; the rest of the config is fixed."""

    precision: str = "auto"
    batch_size: int = 12
    threads: int = 0
    fit_windows: bool = True
    device: str = "auto"  # config.example.yaml's: cuda, then mps, then cpu
    model: str = "tiny.en"  # the bench's baselines run tiny.en unless told otherwise (bench.run --model)
    language: str = "auto"  # the folder's language: auto, or a code
    engine: str = "auto"  # config's model.engine: auto is mlx on Apple silicon with mlx-whisper, else openai-whisper

    @property
    def label(self) -> str:
        threads = "auto" if self.threads == 0 else str(self.threads)
        device = ("" if self.engine == "auto" else f"{self.engine}/") + ("" if self.device == "auto" else f"{self.device}/")
        model = "" if self.model == "tiny.en" else f"{self.model}/{self.language}/"
        return f"{model}{device}{self.precision}/bs{self.batch_size}/threads {threads}" + ("" if self.fit_windows else "/30s windows")

    def as_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "device": self.device, "precision": self.precision, "batch_size": self.batch_size,
                "threads": self.threads, "fit_windows": self.fit_windows, "model": self.model, "language": self.language}


@dataclass
class Tree:
    root: Path
    config: Path
    env: dict[str, str]
    settle_seconds: float

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def log_path(self) -> Path:
        return Path(self.env["XDG_STATE_HOME"]) / "whisperd" / "whisperd.log"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(command(*args, "--config", str(self.config)), env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def status(self) -> dict[str, Any]:
        done = self.cli("status", "--json")
        if done.returncode != 0:
            return {"error": done.stderr.strip()}
        return json.loads(done.stdout)


def config_document(cache_dir: Path, settings: Settings, *, watch: dict[str, float] | None = None,
                    idle_unload_minutes: float | None = None) -> dict[str, Any]:
    """config.example.yaml's shape, pointed at this tree, with the bench's changes."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    keys = settings.as_dict()
    language = keys.pop("language")
    keys["name"] = keys.pop("model")
    doc["model"].update(keys)
    doc["model"]["cache_dir"] = str(cache_dir)
    if idle_unload_minutes is not None:
        doc["model"]["idle_unload_minutes"] = idle_unload_minutes
    folder = doc["folders"][0]
    folder.update(inbox="inbox", output="outbox", archive="archive", failed="failed")
    folder["language"] = language
    folder["duplicates"] = "transcribe"  # workload A repeats its clips under distinct names; each is real work
    doc["folders"] = [folder]
    doc["watch"] = {**doc.get("watch", {}), **(watch if watch is not None else {"settle_seconds": 0.2, "poll_seconds": 0.1})}
    doc["thermal"]["source"] = "none"
    doc["power"]["prevent_sleep"] = False
    doc["notify"] = False
    return doc


def make_tree(root: Path, cache_dir: Path, settings: Settings, files: list[Path] = (), **config_kw: Any) -> Tree:  # type: ignore[assignment]
    root, cache_dir = root.resolve(), cache_dir.resolve()
    if root.exists():
        shutil.rmtree(root)
    home = root / "home"
    home.mkdir(parents=True)
    for d in ("inbox", "outbox", "archive", "failed"):
        (root / d).mkdir()
    for f in files:
        shutil.copy(f, root / "inbox" / f.name)
    doc = config_document(cache_dir, settings, **config_kw)
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.chmod(cfg, 0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHISPERD_", "XDG_"))}
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / ".local" / "state"), XDG_CACHE_HOME=str(home / ".cache"),
               PYTHONUNBUFFERED="1")
    if _frozen is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(_frozen)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return Tree(root, cfg, env, float(doc["watch"]["settle_seconds"]))


def action_of(line: str) -> str | None:
    m = _ACTION.search(line)
    return m.group(1) if m else None


def _stamps(lines: list[tuple[float, str]], action: str) -> list[float]:
    return [t for t, line in lines if action_of(line) == action]


def _problems(path: Path, limit: int = 25) -> list[str]:
    """Warning and error lines of the log (with tracebacks folded away), for the report."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out = [line for line in text.splitlines() if re.match(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ", line)]
    return out[:limit]


def outputs(tree: Tree) -> dict[str, str]:
    """Source file name -> transcript text, from the .json outputs."""
    return {name: doc.get("text", "") for name, doc in _documents(tree).items()}


def languages(tree: Tree) -> dict[str, str | None]:
    """Source file name -> the language its transcript says it is in."""
    return {name: doc.get("language") for name, doc in _documents(tree).items()}


def _documents(tree: Tree) -> dict[str, dict[str, Any]]:
    docs = {}
    for p in sorted(tree.outbox.rglob("*.json")):
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        docs[doc.get("source") or p.stem] = doc
    return docs


def drain(tree: Tree, *, timeout: float = 3600, extra_cpu: Any = None) -> dict[str, Any]:
    """``whisperd run --drain`` on the tree: timings, peak RSS of daemon + worker, transcripts, problems.

    ``startup_s``: process start to the first ``job.start`` (interpreter, worker
    process, model and VAD load, settle); ``work_s``: first ``job.start`` to the
    last ``job.done``; ``exit_s``: last ``job.done`` to process exit.
    """
    code = code_fingerprint()
    fin: Finished = run_monitored(command("run", "--drain", "--config", str(tree.config)), env=tree.env,
                                  cwd=tree.root, timeout=timeout, extra_cpu=extra_cpu)
    starts = _stamps(fin.lines, "job.start")
    dones = _stamps(fin.lines, "job.done")
    worker = _stamps(fin.lines, "worker.start")
    loaded = _stamps(fin.lines, "model.load")
    result: dict[str, Any] = {
        "returncode": fin.returncode,
        "daemon_code": code,
        "timed_out": fin.timed_out,
        "wall_s": fin.wall_s,
        "cpu_s": fin.cpu_s,
        "foreign_cores": fin.foreign_cores,
        "first_job_start_s": (starts[0] - fin.started) if starts else None,
        "work_s": (max(dones) - min(starts)) if starts and dones else None,
        "model_load_s": (loaded[0] - worker[0]) if worker and loaded else None,
        "exit_s": (fin.started + fin.wall_s - max(dones)) if dones else None,
        "peak_rss_mb": fin.peak_rss_mb,
        "peak_rss_by_process_mb": {k: v / MB for k, v in fin.rss.peak_by_role.items()},
        **_jobs_and_outputs(tree, starts, dones),
    }
    if fin.returncode != 0 or result["jobs_failed"] or not dones:
        result["stderr_tail"] = fin.stderr_tail(40)
    return result


def _jobs_and_outputs(tree: Tree, starts: list[float], dones: list[float]) -> dict[str, Any]:
    """What a run left behind: jobs started, done and failed, transcripts, log problems, engine."""
    jobs = tree.status().get("jobs", [])
    return {
        "jobs_started": len(starts),
        "jobs_done": len(dones),
        "jobs_failed": [{"name": j["name"], "error": j["error"]} for j in jobs if j.get("state") == "failed"],
        "texts": outputs(tree),
        "languages": languages(tree),
        "log_problems": _problems(tree.log_path),
        "engine": sorted({(j.get("model"), j.get("device"), j.get("precision")) for j in jobs if j.get("model")}),
    }


def drop_backlog(tree: Tree, files: list[Path], warmup: Path, *, timeout: float = 3600) -> dict[str, Any]:
    """``files`` dropped at once into a running ``whisperd run`` whose model is loaded: the case
    the stock baseline's per-file figure stands for (its ``work_s`` leaves the import and the
    model load out). A first file, ``warmup``, is transcribed before, so that the worker is
    started and its model loaded; then every file appears in the inbox within a few
    milliseconds (each copied under a hidden name first, then renamed, as a finished copy
    appears). ``work_s``: the backlog's first ``job.start`` to its last ``job.done``, as in
    ``drain``; ``wall_s``: the drop to the last ``job.done``. Peak RSS and others' load cover
    the backlog only."""
    code = code_fingerprint()
    daemon = RunningDaemon(tree)
    result: dict[str, Any] = {"daemon_code": code}
    try:
        daemon.wait_for("service.start", timeout=60)
        _drop(tree, warmup, f"warmup{warmup.suffix}")
        daemon.wait_for("job.done", timeout=min(timeout, 600))
        seen = len(daemon.lines)
        staged = []
        for f in files:
            tmp = tree.inbox / f".{f.name}.incoming"
            shutil.copy(f, tmp)
            staged.append((tmp, tree.inbox / f.name))
        proc = daemon.process()
        monitor = TreeMonitor(proc.pid).start()
        busy0, own0, tree0 = busy_cpu_seconds(), own_cpu_seconds(), _tree_cpu_seconds(proc)
        t0 = time.time()
        for tmp, final in staged:
            os.rename(tmp, final)
        try:
            last = daemon.wait_for("job.done", n=1 + len(files), timeout=timeout)
            result["timed_out"] = False
        except RuntimeError:
            last = time.time()
            result["timed_out"] = True
        wall = last - t0
        tree1 = _tree_cpu_seconds(proc)
        busy1, own1 = busy_cpu_seconds(), own_cpu_seconds()
        rss = monitor.stop()
        lines = daemon.lines[seen:]
    finally:
        result["returncode"] = daemon.stop()
    cpu = sum(v - tree0.get(pid, 0.0) for pid, v in tree1.items())
    starts = _stamps(lines, "job.start")
    dones = _stamps(lines, "job.done")
    result.update({
        "wall_s": wall,
        "cpu_s": cpu,
        "foreign_cores": max(0.0, (busy1 - busy0) - cpu - (own1 - own0)) / wall if wall > 0 else 0.0,
        "first_job_start_s": (starts[0] - t0) if starts else None,
        "work_s": (max(dones) - min(starts)) if starts and dones and not result["timed_out"] else None,
        "peak_rss_mb": rss.peak_rss / MB,
        "peak_rss_by_process_mb": {k: v / MB for k, v in rss.peak_by_role.items()},
        **_jobs_and_outputs(tree, starts, dones),
    })
    result["texts"].pop(f"warmup{warmup.suffix}", None)
    result["languages"].pop(f"warmup{warmup.suffix}", None)
    return result


# --------------------------------------------------------------------------- a running daemon


class RunningDaemon:
    """``whisperd run`` in the background, its stderr lines stamped on arrival."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(command("run", "--config", str(tree.config)), env=tree.env, cwd=tree.root,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append((time.time(), line.rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def count(self, action: str) -> int:
        with self.cond:
            return sum(1 for _, line in self.lines if action_of(line) == action)

    def wait_for(self, action: str, n: int = 1, timeout: float = 120) -> float:
        """Wait until ``action`` has been logged ``n`` times; the time of the n-th."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                stamps = [t for t, line in self.lines if action_of(line) == action]
                if len(stamps) >= n:
                    return stamps[n - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(line for _, line in self.lines[-20:])
                    raise RuntimeError(f"whisperd did not log {action} x{n} in {timeout:.0f} s; last lines:\n{tail}")
                self.cond.wait(min(left, 0.5))

    def process(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def workers(self) -> list[psutil.Process]:
        out = []
        for p in self.process().children(recursive=True):
            try:
                if "spawn_main" in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)
        return self.proc.returncode


def _tree_cpu_seconds(proc: psutil.Process) -> dict[int, float]:
    """CPU seconds so far of each process in the tree, by pid."""
    out: dict[int, float] = {}
    for p in [proc] + proc.children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        out[p.pid] = t.user + t.system
    return out


def idle_cpu_percent(proc: psutil.Process, seconds: float) -> float:
    """CPU used by the process tree over ``seconds``, in % of one core. A process that
    ends meanwhile (a worker not yet reaped at the start) counts for none of it, rather
    than taking all its past CPU time away from the sum; one that starts counts whole."""
    before = _tree_cpu_seconds(proc)
    time.sleep(seconds)
    after = _tree_cpu_seconds(proc)
    return 100.0 * sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items()) / seconds


def _drop(tree: Tree, src: Path, name: str) -> float:
    """Put a file into the inbox in one rename, as a finished copy appears; the time it appeared."""
    tmp = tree.inbox / f".{name}.incoming"
    shutil.copy(src, tmp)
    os.rename(tmp, tree.inbox / name)
    return time.time()


def overhead(root: Path, cache_dir: Path, settings: Settings, memos: list[Path], *, idle_seconds: float = 20.0,
             samples: int = 3) -> dict[str, Any]:
    """Latency, idle CPU and post-worker memory of a running daemon (watch settle 0.2 s, poll 0.1 s)."""
    tree = make_tree(root / "overhead", cache_dir, settings, idle_unload_minutes=0.1)
    daemon = RunningDaemon(tree)
    out: dict[str, Any] = {"settle_seconds": tree.settle_seconds, "poll_seconds": 0.1, "idle_unload_minutes": 0.1}
    try:
        daemon.wait_for("service.start", timeout=60)
        time.sleep(1.0)
        proc = daemon.process()
        out["daemon_rss_before_work_mb"] = proc.memory_info().rss / MB
        out["idle_cpu_percent_before_work"] = idle_cpu_percent(proc, idle_seconds)

        # warm the worker with a first memo, then drop one memo at a time while it is warm
        dropped: dict[str, float] = {}
        names = [f"warmup_{memos[0].name}"] + [f"latency{i + 1}_{memos[(i + 1) % len(memos)].name}" for i in range(samples)]
        sources = [memos[0]] + [memos[(i + 1) % len(memos)] for i in range(samples)]
        monitor = TreeMonitor(proc.pid).start()
        for i, (name, src) in enumerate(zip(names, sources)):
            dropped[name] = _drop(tree, src, name)
            daemon.wait_for("job.done", n=i + 1, timeout=180)
        rss_working = monitor.stop()
        out["peak_rss_while_working_mb"] = rss_working.peak_rss / MB

        # the worker exits after idle_unload_minutes; then the daemon alone
        daemon.wait_for("worker.idle_exit", timeout=60)
        deadline = time.monotonic() + 30
        while daemon.workers() and time.monotonic() < deadline:
            time.sleep(0.2)
        out["worker_exited"] = not daemon.workers()
        time.sleep(2.0)
        out["daemon_rss_after_worker_exit_mb"] = proc.memory_info().rss / MB
        out["tree_rss_after_worker_exit_mb"] = TreeMonitor(proc.pid).sample() / MB
        out["idle_cpu_percent_after_worker_exit"] = idle_cpu_percent(proc, idle_seconds)

        status = tree.status()
        settle = tree.settle_seconds
        lat = []
        for job in status.get("jobs", []):
            name = job["name"]
            if not name.startswith("latency") or not job.get("started_at"):
                continue
            lat.append({
                "file": name,
                "queued_to_started_s": job["started_at"] - job["created_at"],
                "dropped_to_started_minus_settle_s": job["started_at"] - dropped[name] - settle,
                "dropped_to_done_s": (job["finished_at"] or 0) - dropped[name],
                "audio_s": job.get("duration"),
            })
        out["latency_samples"] = lat
        if lat:
            out["queued_to_started_s"] = statistics.median(x["queued_to_started_s"] for x in lat)
            out["dropped_to_started_minus_settle_s"] = statistics.median(x["dropped_to_started_minus_settle_s"] for x in lat)
        out["log_problems"] = _problems(tree.log_path)
    finally:
        out["returncode"] = daemon.stop()
    return out


def idle_at_example_watch(root: Path, cache_dir: Path, settings: Settings, seconds: float = 20.0) -> dict[str, Any]:
    """Idle CPU and RSS of a daemon with config.example.yaml's own watch settings (no worker ever started)."""
    tree = make_tree(root / "idle-example", cache_dir, settings, watch={})
    daemon = RunningDaemon(tree)
    try:
        daemon.wait_for("service.start", timeout=60)
        time.sleep(1.0)
        proc = daemon.process()
        return {
            "watch": yaml.safe_load(tree.config.read_text())["watch"],
            "idle_cpu_percent": idle_cpu_percent(proc, seconds),
            "daemon_rss_mb": proc.memory_info().rss / MB,
        }
    finally:
        daemon.stop()
