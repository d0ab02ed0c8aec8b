"""``make bench``: whisperd against stock openai-whisper and faster-whisper, same audio, same sitting.

    .venv/bin/python -m bench.run            # A, B, settings sweep, D, daemon overhead; C if it fits the budget
    .venv/bin/python -m bench.run --long     # also C (60 minutes) for every engine
    .venv/bin/python -m bench.run --quick    # a smoke run on a few files and a 1-minute recording

Prints tables and writes bench/results/latest.json (transcripts in
latest-transcripts.json). See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from bench import report
from bench import whisperd_cli as wd
from bench import workloads as wl
from bench.procmon import CpuHog, run_monitored, wait_for_quiet
from bench.score import corpus_wer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work"
RESULTS = HERE / "results"

DISTURBED_CORES = 0.25  # other processes keeping this many cores busy on average mark a run as disturbed
NO_RETRY_SECONDS = 180.0  # a disturbed run longer than this is reported as disturbed rather than run again
SHARED_TIMEOUT_FACTOR = 25.0  # a run on the shared machine is stopped after this many times its quiet wall time
BASELINE = "openai-whisper"

# (engine, variant label, options for bench.engines)
BASELINES: list[tuple[str, str, dict[str, Any]]] = [
    ("openai-whisper", "stock fp32 greedy", {}),
    ("faster-whisper", report.FW_DEFAULT, {}),
    ("faster-whisper", "int8 beam1", {"beam_size": 1}),
    ("faster-whisper-batched", "int8 beam5 bs8", {"batch_size": 8}),
]
# On Apple silicon, also: stock openai-whisper on Apple's GPU (MPS) and mlx-whisper's own transcribe()
APPLE_BASELINES: list[tuple[str, str, dict[str, Any]]] = [
    ("openai-whisper", "stock MPS fp16 greedy", {"device": "mps"}),
    ("mlx-whisper", "stock transcribe() Metal fp16", {}),
]
DEFAULT = wd.Settings()  # whisperd's own defaults: precision auto (on a CPU: bf16 where it is native, else fp32), batch 12, threads auto
# one setting changed at a time; then the best of each combined, if that combination is new
SWEEP = [
    wd.Settings("fp32", 16, 0),
    wd.Settings("bf16", 16, 0),
    wd.Settings("int8", 16, 0),
    wd.Settings("auto", 8, 0),
    wd.Settings("auto", 32, 0),
    wd.Settings("auto", 16, 1),
    wd.Settings("auto", 16, 0, fit_windows=False),
]
QUICK_SWEEP = [wd.Settings("int8", 16, 0)]
# --model base: the multilingual model, with a fixed language and with detection, against stock base
# transcribe() told the language and left to detect it, and faster-whisper on the same CTranslate2 weights
# (stock's own detection last: without --long, C leaves it out first)
BASE_BASELINES: list[tuple[str, str, dict[str, Any]]] = [
    ("openai-whisper", "stock fp32 greedy, en", {"language": "en"}),
    ("faster-whisper", "int8 beam5, en", {"language": "en"}),
    ("faster-whisper", "fp32 beam5, en", {"language": "en", "compute_type": "float32"}),
    ("openai-whisper", "stock fp32 greedy, auto", {}),
]


def sitting(model: str) -> tuple[list[tuple[str, str, dict[str, Any]]], list[wd.Settings]]:
    """The baselines and whisperd's settings measured on ``model``: tiny.en as ever; another model
    (base) with a fixed language (en) and with language: auto."""
    if model == "tiny.en":
        return BASELINES, [DEFAULT]
    fixed = wd.Settings(model=model, language="en")
    return BASE_BASELINES, [fixed, wd.Settings(model=model, language="auto")]


# On Apple silicon, whisperd with each engine besides its default (MLX): openai-whisper on MPS and on the CPU
APPLE_WHISPERD = [wd.Settings(engine="openai-whisper"), wd.Settings(engine="openai-whisper", device="cpu")]


def apple_silicon() -> bool:
    from daemon.engines.hardware import apple_silicon as on_apple

    return on_apple()


@dataclass(frozen=True)
class Planned:
    """One measurement to make: an engine with its settings on a workload, and how to run it once."""

    w: wl.Workload
    engine: str
    variant: str
    condition: str
    go: Callable[[], dict[str, Any]]
    settings: wd.Settings | None = None


def _in_repo(path: Path | str) -> str:
    """A path as the results name it: inside the repository relative to it, never this machine's own."""
    try:
        return Path(path).resolve().relative_to(REPO.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _git_head() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or None
    try:
        import psutil

        mem_gb = psutil.virtual_memory().total / 1024**3
    except Exception:  # psutil is a dependency; this only guards an odd platform
        mem_gb = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": None if mem_gb is None else round(mem_gb, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "openai-whisper": _version("openai-whisper"),
        "faster-whisper": _version("faster-whisper"),
        "ctranslate2": _version("ctranslate2"),
        "onnxruntime": _version("onnxruntime"),
        "whisperd": _version("whisperd"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.runs: list[dict[str, Any]] = []
        self.transcripts: dict[str, dict[str, str]] = {}
        self.out: dict[str, Any] = {"complete": False, "machine": machine(), "options": vars(args), "workloads": {},
                                    "runs": self.runs, "notes": []}
        self.out_path = Path(args.out)
        self.run_dir = WORK / "runs"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = WORK / "models"
        self.hog: CpuHog | None = None  # the busy loop, while workload D runs
        self.baselines, self.defaults = sitting(args.model)
        self.default = self.defaults[0]
        self.waited = 0.0
        self.resumed: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.resumed_code: dict[str, Any] | None = None
        if args.resume:
            self._resume()

    def _resume(self) -> None:
        """Take the finished runs of an interrupted bench (same --out) and measure only the rest."""
        try:
            old = json.loads(self.out_path.read_text())
            transcripts = json.loads(self.out_path.with_name(self.out_path.stem + "-transcripts.json").read_text())
        except (OSError, ValueError):
            self.say("--resume: no earlier results to resume; starting afresh")
            return
        for r in old.get("runs", []):
            if r.get("error") or (self.args.redo_disturbed and r.get("disturbed")):
                continue
            key = (r["workload"], r["engine"], r["variant"], r["condition"])
            self.resumed[key] = r
            self.transcripts[f"{r['workload']}/{r['condition']}/{r['engine']}/{r['variant']}"] = transcripts.get(
                f"{r['workload']}/{r['condition']}/{r['engine']}/{r['variant']}", {})
        self.out["machine"] = old.get("machine", self.out["machine"])
        self.resumed_code = old.get("daemon_code")
        self.out["resumed"] = old.get("resumed", []) + [{
            "at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "runs_kept": len(self.resumed), "after_minutes": old.get("bench_minutes_so_far"),
        }]
        if "overhead" in old and not (old["overhead"] or {}).get("error"):
            self.out["overhead"] = old["overhead"]
        self.say(f"--resume: keeping {len(self.resumed)} runs measured earlier")

    def _keep_resumed(self, which: Callable[[tuple[str, str, str, str]], bool]) -> None:
        """Move the runs kept by --resume that no stage asked for again into the results."""
        for key in [k for k in self.resumed if which(k)]:
            self.runs.append(self.resumed.pop(key))

    # -- helpers ------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.elapsed() / 60:5.1f} min] {text}", flush=True)

    def note(self, text: str) -> None:
        self.out["notes"].append(text)
        self.say("note: " + text)

    def save(self) -> None:
        self.out["bench_minutes_so_far"] = self.elapsed() / 60
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.out, indent=1, default=str))
        tmp.replace(self.out_path)
        tpath = self.out_path.with_name(self.out_path.stem + "-transcripts.json")
        tpath.write_text(json.dumps(self.transcripts, indent=1))

    def prepare(self) -> None:
        from daemon.engines.models import ct2_dir, resolve_checkpoint

        if self.args.freeze:
            if self.args.resume and (WORK / "frozen" / "daemon").is_dir():
                where, when = wd.use_frozen(WORK / "frozen"), "taken earlier"
            else:
                where, when = wd.freeze(WORK / "frozen"), "taken now"
            self.say(f"whisperd runs from a copy of daemon/ {when} ({where}), code {wd.code_fingerprint()}")
        wd.compile_daemon()
        self.out["daemon_code"] = {"fingerprint": wd.code_fingerprint(), "frozen": bool(self.args.freeze),
                                   "git_head": _git_head()}
        if self.resumed_code and self.resumed_code.get("fingerprint") == wd.code_fingerprint():
            self.out["daemon_code"] = self.resumed_code  # the same code: keep where it came from
        stale = [k for k, r in self.resumed.items() if r.get("daemon_code") not in (None, wd.code_fingerprint())]
        if stale:
            self.say(f"--resume: the daemon's code changed since; measuring its {len(stale)} whisperd runs again")
            for k in stale:
                del self.resumed[k]

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint = Path(resolve_checkpoint(self.args.model, self.cache_dir))
        ct2 = ct2_dir(self.args.model, self.cache_dir)
        if ct2 is None:
            raise SystemExit(f"bench: the bundled {self.args.model} is not installed; run `make install`")
        self.ct2_dir = ct2
        self.out["models"] = {"openai-whisper checkpoint": _in_repo(self.checkpoint), "ctranslate2 model": _in_repo(ct2)}

    def workload(self, w: wl.Workload) -> wl.Workload:
        self.out["workloads"][w.key] = {"title": w.title, "files": len(w.files), "audio_s": w.audio_seconds,
                                        "ref_words": corpus_wer(w.refs, w.refs)["ref_words"]}
        return w

    # -- one measured run -----------------------------------------------------------

    def measure_rounds(self, plans: list[Planned]) -> list[dict[str, Any]]:
        """Measure several runs ``--repeat`` times each, keeping each one's fastest, in rounds: every
        round runs each of them once. This machine's speed drifts (whisperd's time on A moved by a
        third between two sittings 30 minutes apart, same code); with the repeats of one engine back
        to back, a slow spell could fall on one engine's tries and not on the others'."""
        results: list[dict[str, Any] | None] = [None] * len(plans)
        kept: list[list[tuple[dict[str, Any], dict[str, str]]]] = [[] for _ in plans]
        tries: list[list[tuple[dict[str, Any], dict[str, str]]]] = [[] for _ in plans]
        todo = []
        for i, p in enumerate(plans):
            earlier = self.resumed.pop((p.w.key, p.engine, p.variant, p.condition), None)
            if earlier is not None:
                self.say(f"{p.w.key} {p.condition:6} {p.engine} [{p.variant}]: measured earlier in this bench (--resume), kept")
                results[i] = earlier
            else:
                todo.append(i)
        for _ in range(max(1, self.args.repeat)):
            for i in todo:
                if kept[i] and kept[i][-1][0].get("error"):
                    continue  # a broken run is not tried again
                p = plans[i]
                kept[i].append(self._attempts(p.w, p.engine, p.variant, p.condition, p.go, p.settings))
                tries[i] += kept[i][-1][0].pop("_tries")
        for i in todo:
            p = plans[i]
            ok = [k for k in kept[i] if k[0].get("work_s")]
            best, texts = min(ok, key=lambda rt: rt[0]["work_s"]) if ok else kept[i][-1]
            if len(tries[i]) > 1:
                best["all_tries"] = [{k: t.get(k) for k in ("wall_s", "work_s", "foreign_cores", "peak_rss_mb")} for t, _ in tries[i]]
            self.transcripts[f"{p.w.key}/{p.condition}/{p.engine}/{p.variant}"] = texts
            results[i] = best
        measured = [r for r in results if r is not None]
        self.runs.extend(measured)
        self.save()
        return measured

    def _attempts(self, w: wl.Workload, engine: str, variant: str, condition: str, go: Callable[[], dict[str, Any]],
                  settings: wd.Settings | None) -> tuple[dict[str, Any], dict[str, str]]:
        """One measurement, run again (up to ``--retries`` times) while other processes disturb it;
        the least disturbed try is kept."""
        tries: list[tuple[dict[str, Any], dict[str, str]]] = []
        for attempt in range(1 + self.args.retries):
            waited = self.quiet()
            self.say(f"{w.key} {condition:6} {engine} [{variant}] ..." + (f" (waited {waited:.0f} s for other processes)" if waited > 5 else ""))
            try:
                res = go()
            except Exception as exc:  # one broken run is reported; the bench goes on
                res = {"wall_s": 0.0, "error": f"{type(exc).__name__}: {exc}"}
            res["waited_for_quiet_s"] = waited
            res.update(workload=w.key, engine=engine, variant=variant, condition=condition, audio_s=w.audio_seconds)
            if settings is not None:
                res["settings"] = settings.as_dict()
            texts = res.pop("texts", {}) or {}
            res["wer"] = corpus_wer(w.refs, texts)
            res["files_transcribed"] = sum(1 for n in w.refs if texts.get(n))
            work = res.get("work_s")
            res["speed"] = w.audio_seconds / work if work else None
            res["speed_e2e"] = w.audio_seconds / res["wall_s"] if res.get("wall_s") else None
            res["overhead_s"] = res["wall_s"] - work if work else None
            res["disturbed"] = res.get("foreign_cores", 0) > DISTURBED_CORES
            res["attempt"] = attempt + 1
            tries.append((res, texts))
            self.say(
                f"    wall {res['wall_s']:.1f} s, work {work or float('nan'):.1f} s, "
                f"speed {res['speed'] or 0:.1f}x, WER {res['wer']['wer'] * 100:.2f}%, "
                f"peak RSS {res.get('peak_rss_mb', 0):.0f} MB, others' load {res.get('foreign_cores', 0):.2f} cores"
                + ("  (disturbed)" if res["disturbed"] else "")
                + (f"  ERROR: {res['error']}" if res.get("error") else "")
            )
            if not res["disturbed"] or res.get("error") or res["wall_s"] > NO_RETRY_SECONDS:
                break
            if attempt < self.args.retries:
                self.say(f"    other processes were busy; waiting {self.args.retry_wait:.0f} s and running it again")
                time.sleep(self.args.retry_wait)
        best, texts = min(tries, key=lambda rt: rt[0].get("foreign_cores", 0))
        best["_tries"] = tries
        return best, texts

    def quiet(self) -> float:
        """Wait (within --quiet-wait, and at most --quiet-wait-total over the bench) until other processes leave the CPU alone."""
        left = min(self.args.quiet_wait, self.args.quiet_wait_total - self.waited)
        if left <= 0:
            return 0.0
        hog = self.hog
        waited = wait_for_quiet(left, extra_cpu=hog.cpu_seconds if hog else None)
        self.waited += waited
        return waited

    def _timeout(self, w: wl.Workload, engine: str, variant: str, condition: str) -> float:
        """A shared-machine run may take at most SHARED_TIMEOUT_FACTOR times its quiet run."""
        if condition == "shared":
            quiet = report.find(self.runs, w.key, engine, "quiet", variant)
            if quiet is not None:
                return min(self.args.timeout, max(600.0, SHARED_TIMEOUT_FACTOR * quiet["wall_s"]))
        return self.args.timeout

    def engine(self, w: wl.Workload, engine: str, variant: str, options: dict[str, Any], condition: str = "quiet",
               hog: CpuHog | None = None) -> dict[str, Any]:
        return self.measure_rounds([self.engine_plan(w, engine, variant, options, condition, hog)])[0]

    def engine_plan(self, w: wl.Workload, engine: str, variant: str, options: dict[str, Any], condition: str = "quiet",
                    hog: CpuHog | None = None) -> Planned:
        timeout = self._timeout(w, engine, variant, condition)

        def go() -> dict[str, Any]:
            d = Path(tempfile.mkdtemp(prefix=f"{w.key}-{engine}-", dir=self.run_dir))
            spec = {"engine": engine, "files": [str(f) for f in w.files], "checkpoint": str(self.checkpoint),
                    "ct2_dir": str(self.ct2_dir), **options}
            (d / "spec.json").write_text(json.dumps(spec))
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            fin = run_monitored([sys.executable, "-m", "bench.engines", str(d / "spec.json"), str(d / "out.json")],
                                env=env, cwd=REPO, timeout=timeout, extra_cpu=hog.cpu_seconds if hog else None)
            res: dict[str, Any] = {"wall_s": fin.wall_s, "cpu_s": fin.cpu_s, "foreign_cores": fin.foreign_cores,
                                   "peak_rss_mb": fin.peak_rss_mb}
            if fin.timed_out:
                res["error"] = f"stopped after {timeout:.0f} s"
                res["timed_out_s"] = timeout
                return res
            if fin.returncode != 0 or not (d / "out.json").exists():
                res["error"] = f"exit code {fin.returncode}"
                res["stderr_tail"] = fin.stderr_tail(30)
                return res
            out = json.loads((d / "out.json").read_text())
            res.update(load_s=out["load_s"], work_s=out["work_s"], details=out["details"], texts=out["texts"],
                       languages=out.get("languages", {}))
            if not self.args.keep:
                shutil.rmtree(d, ignore_errors=True)
            return res

        return Planned(w, engine, variant, condition, go)

    def whisperd(self, w: wl.Workload, settings: wd.Settings, condition: str = "quiet",
                 hog: CpuHog | None = None) -> dict[str, Any]:
        return self.measure_rounds([self.whisperd_plan(w, settings, condition, hog)])[0]

    def whisperd_plan(self, w: wl.Workload, settings: wd.Settings, condition: str = "quiet",
                      hog: CpuHog | None = None, warm: bool = False) -> Planned:
        """``whisperd run --drain`` on a tree holding ``w``'s files; with ``warm``, the files dropped
        into a running daemon whose model is loaded (``wd.drop_backlog``), under its own variant."""
        variant = settings.label + (report.WARM if warm else "")
        timeout = self._timeout(w, "whisperd", variant, condition)

        def go() -> dict[str, Any]:
            root = Path(tempfile.mkdtemp(prefix=f"{w.key}-whisperd-", dir=self.run_dir))
            if warm:
                tree = wd.make_tree(root, self.cache_dir, settings)
                res = wd.drop_backlog(tree, list(w.files), warmup=w.files[0], timeout=timeout)
            else:
                tree = wd.make_tree(root, self.cache_dir, settings, list(w.files))
                res = wd.drain(tree, timeout=timeout, extra_cpu=hog.cpu_seconds if hog else None)
            if res.get("timed_out"):
                res["error"] = f"stopped after {timeout:.0f} s"
                res["timed_out_s"] = timeout
            elif res["returncode"] != 0:
                res["error"] = f"exit code {res['returncode']}"
            elif res["jobs_failed"]:
                res["error"] = f"{len(res['jobs_failed'])} file(s) failed"
            elif res["work_s"] is None:
                res["error"] = "no job finished"
            if not self.args.keep and "error" not in res:
                shutil.rmtree(root, ignore_errors=True)
            else:
                res["tree"] = str(root)
            return res

        return Planned(w, "whisperd", variant, condition, go, settings)

    def all_engines(self, w: wl.Workload) -> None:
        """Every engine on ``w``, their repeats in rounds (see ``measure_rounds``). whisperd twice:
        its files found at start-up (its model's import and load inside its work time), and dropped
        into a running daemon whose model is loaded (as the baselines' work time starts)."""
        apple = apple_silicon()
        baselines = self.baselines + (APPLE_BASELINES if apple and self.baselines is BASELINES else [])
        plans = [self.engine_plan(w, engine, variant, options) for engine, variant, options in baselines]
        for settings in self.defaults:
            plans.append(self.whisperd_plan(w, settings))
            plans.append(self.whisperd_plan(w, settings, warm=True))
        if apple and self.baselines is BASELINES:
            plans += [self.whisperd_plan(w, s, warm=True) for s in APPLE_WHISPERD]
        self.measure_rounds(plans)

    # -- the stages -----------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        self.prepare()
        audio = WORK / "audio"
        if a.quick:
            A = self.workload(wl.short_files(audio, copies=1, limit=5))
            B = self.workload(wl.long_recording(audio, "B", 1))
        else:
            A = self.workload(wl.short_files(audio, copies=4))
            B = self.workload(wl.long_recording(audio, "B", 5))
        self.say(f"machine: {self.out['machine']['cpu']}, {self.out['machine']['cores']} cores, torch {self.out['machine']['torch']}")
        self.say(A.label)
        self.say(B.label)

        if "main" in a.stages:
            for w in (A, B):
                self.all_engines(w)

        if "sweep" in a.stages:
            sweep = QUICK_SWEEP if a.quick else SWEEP
            for s in sweep:
                for w in (A, B):
                    self.whisperd(w, s)
            combo = report.combined_best(self.runs, self.default)
            if combo is not None and not a.quick:
                combo = wd.Settings(**combo)
                if combo != self.default and combo not in sweep:
                    self.say(f"the best value of each setting combined: {combo.label}")
                    for w in (A, B):
                        self.whisperd(w, combo)

        if "shared" in a.stages:
            if not any(k[3] == "shared" for k in self.resumed):
                self.quiet()  # before the busy loop starts, which the wait then leaves out
            with CpuHog() as hog:
                self.hog = hog
                self.out["shared_machine"] = {"hog": f"python busy loop pinned to core {hog.core}"}
                stock = self.baselines[0]
                fw = next(b for b in self.baselines if b[0] == "faster-whisper")
                self.measure_rounds([self.engine_plan(B, stock[0], stock[1], stock[2], "shared", hog),
                                     self.engine_plan(B, fw[0], fw[1], fw[2], "shared", hog),
                                     self.whisperd_plan(B, self.default, "shared", hog)])
                best = report.best_settings(self.runs, self.default)
                if best is not None and wd.Settings(**best["settings"]) != self.default:
                    self.whisperd(B, wd.Settings(**best["settings"]), "shared", hog)
            self.hog = None

        if "overhead" in a.stages and "overhead" not in self.out:
            self.quiet()
            self.say("daemon overhead: latency with a warm worker, idle CPU, memory after the worker exits ...")
            memos = sorted(A.files, key=lambda p: p.stat().st_size)[:4]
            idle = 5.0 if a.quick else 20.0
            try:
                self.out["overhead"] = wd.overhead(self.run_dir, self.cache_dir, self.default, memos, idle_seconds=idle)
                self.out["overhead"]["idle_with_example_watch_settings"] = wd.idle_at_example_watch(
                    self.run_dir, self.cache_dir, self.default, seconds=idle)
            except Exception as exc:  # report what happened and go on with the rest
                self.out["overhead"] = {"error": f"{type(exc).__name__}: {exc}"}
            self.say("    " + report.overhead_line(self.out["overhead"]))
            self.save()

        # runs kept by --resume whose stage did not run this time stay in the results (C's may still be measured)
        self._keep_resumed(lambda key: key[0] != "C")
        if "long" in a.stages:
            self.long_recordings(B)
        self._keep_resumed(lambda key: True)

        self.out["comparisons"] = report.compare(self.runs, BASELINE)
        self.out["best_whisperd_settings"] = report.best_settings(self.runs, self.default)
        self.out["targets"] = report.targets(self.out, self.default)
        self.out["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        self.out["bench_minutes"] = self.elapsed() / 60
        self.out["waited_for_quiet_minutes"] = self.waited / 60
        stock_b = next((r for r in self.runs if r["workload"] == "B" and r["engine"] == BASELINE
                        and r["condition"] == "quiet" and r.get("work_s")), None)
        if stock_b is not None:
            per_min = stock_b["work_s"] / (stock_b["audio_s"] / 60)
            self.out["stock_seconds_per_audio_minute"] = per_min
        codes = sorted({r["daemon_code"] for r in self.runs if r.get("daemon_code")})
        if len(codes) > 1:
            self.note("the daemon's code changed while the bench ran (versions " + ", ".join(codes) + "; each whisperd "
                      "run records its own as daemon_code): whisperd rows may not be comparable. Use --freeze")
        disturbed = [f"{r['workload']}/{r['condition']}/{r['engine']}/{r['variant']}" for r in self.runs if r.get("disturbed")]
        if disturbed:
            self.note("runs disturbed by other processes even after retrying: " + ", ".join(disturbed))
        self.out["complete"] = True
        self.save()
        report.print_all(self.out)
        print(f"\nwrote {self.out_path}")
        return 0

    def long_recordings(self, B: wl.Workload) -> None:
        """Workload C (60 min): with --long for every engine; by default whisperd alone, and only if it fits."""
        a = self.args
        minutes = 3 if a.quick else 60
        factor = minutes * 60 / B.audio_seconds
        quiet_b = {(r["engine"], r["variant"]): r for r in self.runs if r["workload"] == "B" and r["condition"] == "quiet"}
        candidates: list[tuple[str, str, dict[str, Any]]] = [("whisperd", self.default.label, {})] + self.baselines
        if a.long == "yes":
            wanted = candidates
        else:
            # what fits the budget, estimated from B; whisperd first (the 60-vs-5-minute memory check needs it),
            # then stock whisper, and the others only when stock fits too (they are compared with it)
            wanted = []
            planned = 60.0  # building the audio
            for e, v, o in candidates:
                prev = quiet_b.get((e, v))
                if prev is None:
                    continue
                est = prev["wall_s"] * factor * 1.1
                if self.elapsed() + planned + est > a.budget_minutes * 60:
                    if e == BASELINE:
                        break
                    continue
                wanted.append((e, v, o))
                planned += est
        skipped = [f"{e} [{v}]" for e, v, _ in self.baselines if (e, v) not in {(x[0], x[1]) for x in wanted}]
        if not wanted:
            self.note(f"C (~{minutes} min) skipped: it would not fit the {a.budget_minutes:g}-minute budget (use --long)")
            return
        if skipped and a.long != "yes":
            self.note(f"C (~{minutes} min) without {', '.join(skipped)} to stay within {a.budget_minutes:g} minutes "
                      "(run with --long for all)")
        self.say(f"building C (~{minutes} min of audio) ...")
        C = self.workload(wl.long_recording(WORK / "audio", "C", minutes))
        self.say(C.label)
        for e, v, o in wanted:
            if e == "whisperd":
                self.whisperd(C, self.default)
            else:
                self.engine(C, e, v, o)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en",
                   help="the model every engine runs: tiny.en (default) or base (then with language en and auto)")
    p.add_argument("--quick", action="store_true", help="smoke run: 5 files, a 1-minute recording, one sweep point")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--long", dest="long", action="store_const", const="yes", default="auto",
                   help="run workload C (60 min) for every engine, whatever the time")
    g.add_argument("--no-long", dest="long", action="store_const", const="no", help="never run workload C")
    p.add_argument("--budget-minutes", type=float, default=25.0,
                   help="without --long, C runs only for the engines that fit this total (default 25)")
    p.add_argument("--stages", default="main,sweep,shared,overhead,long",
                   help="comma-separated subset of main,sweep,shared,overhead,long (default: all)")
    p.add_argument("--repeat", type=int, default=1, help="measure each run this many times and keep the fastest (default 1)")
    p.add_argument("--retries", type=int, default=1, help="reruns of a run that other processes disturbed (default 1)")
    p.add_argument("--retry-wait", type=float, default=20.0, help="seconds to wait before such a rerun")
    p.add_argument("--quiet-wait", type=float, default=120.0,
                   help="before each run, wait up to this many seconds for other processes to leave the CPU alone (default 120)")
    p.add_argument("--quiet-wait-total", type=float, default=900.0,
                   help="stop waiting for quiet once the bench has waited this long in all (default 900)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one engine run may take")
    p.add_argument("--freeze", action="store_true",
                   help="run whisperd from a copy of daemon/ taken at the start, so that edits made meanwhile do not mix in")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished runs of an interrupted bench (same --out; with --freeze, the same frozen copy) "
                        "and measure only the rest")
    p.add_argument("--redo-disturbed", action="store_true",
                   help="with --resume: measure again the runs that other processes disturbed")
    p.add_argument("--keep", action="store_true", help="keep each run's temporary tree under bench/work/runs")
    p.add_argument("--out", default=str(RESULTS / "latest.json"), help="where the JSON goes")
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(args.stages) - {"main", "sweep", "shared", "overhead", "long"}
    if unknown:
        p.error(f"unknown stage(s): {', '.join(sorted(unknown))}")
    if args.long == "no" and "long" in args.stages:
        args.stages.remove("long")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
