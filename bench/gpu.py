"""whisperd on a GPU against stock openai-whisper on the same GPU, in one sitting:

    python -m bench.gpu [--device cuda] [--workloads A,B] [--rounds 2] [--batch-sizes 16,64]

For a machine with a CUDA GPU (or Apple's MPS), where ``make bench`` measures the CPU. Stock
openai-whisper runs ``model.transcribe(audio)`` per file on the GPU with its default
``fp16=True``; whisperd runs the real CLI with ``model.device`` set to the GPU (precision
``auto``: fp16 there), once per batch size, both as ``drop`` (the files dropped into a running
daemon whose model is loaded: the figure to hold against stock's, which leaves the model load
out) and ``drain`` (found at start-up). The rounds alternate the engines' order. faster-whisper
is left out: its GPU build needs CUDA libraries of its own.

Besides work time, WER and the peak RSS of each engine's processes, it samples the GPU memory
in use (``nvidia-smi``, every 0.1 s, less what was in use before the run). It prints a table and
writes the JSON to ``--out`` (default ``bench/results/gpu.json``).

The model is the checkpoint ``daemon.engines.models.resolve_checkpoint("tiny.en", ...)`` returns
from ``bench/work/models``: converted from the bundled package, or put there beforehand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import whisperd_cli as wd
from bench import workloads as wl
from bench.procmon import run_monitored
from bench.score import corpus_wer

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
RESULTS = HERE / "results"


class GpuMemory:
    """Peak GPU memory in use while it runs, less what was in use when it started, in MB (nvidia-smi)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.base = self._used()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _used() -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        try:
            return float(out.stdout.split()[0])
        except (IndexError, ValueError):
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            used = self._used()
            if used is not None and (self.peak is None or used > self.peak):
                self.peak = used

    def __enter__(self) -> "GpuMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float | None:
        return None if self.base is None or self.peak is None else self.peak - self.base


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpu_cores": os.cpu_count(), "device": device,
                            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 1024**3, 1), cuda=torch.version.cuda)
    return info


def stock(w: wl.Workload, checkpoint: Path, device: str, root: Path) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix=f"{w.key}-stock-", dir=root))
    spec = {"engine": "openai-whisper", "files": [str(f) for f in w.files], "checkpoint": str(checkpoint), "device": device}
    (d / "spec.json").write_text(json.dumps(spec))
    with GpuMemory() as gpu:
        fin = run_monitored([sys.executable, "-m", "bench.engines", str(d / "spec.json"), str(d / "out.json")],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=wd.REPO, timeout=1800)
    res: dict[str, Any] = {"wall_s": fin.wall_s, "peak_rss_mb": fin.peak_rss_mb, "gpu_mb": gpu.mb}
    if fin.returncode != 0 or not (d / "out.json").exists():
        return {**res, "error": f"exit code {fin.returncode}", "stderr_tail": fin.stderr_tail(30)}
    out = json.loads((d / "out.json").read_text())
    return {**res, "load_s": out["load_s"], "work_s": out["work_s"], "texts": out["texts"], "details": out["details"]}


def whisperd(w: wl.Workload, settings: wd.Settings, mode: str, cache: Path, root: Path) -> dict[str, Any]:
    with GpuMemory() as gpu:
        if mode == "drop":
            tree = wd.make_tree(root / "tree", cache, settings)
            out = wd.drop_backlog(tree, list(w.files), w.files[0], timeout=1800)
        else:
            tree = wd.make_tree(root / "tree", cache, settings, list(w.files))
            out = wd.drain(tree, timeout=1800)
    out["gpu_mb"] = gpu.mb
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda or mps (cpu runs the same comparison on the CPU)")
    ap.add_argument("--workloads", default="A,B", help="comma-separated: A, B, C")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-sizes", default="16,64", help="whisperd's model.batch_size values to run")
    ap.add_argument("--modes", default="drop,drain", help="whisperd's modes: drop (model loaded), drain (start-up)")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = ap.parse_args(argv)

    from bench.ab import workload
    from daemon.engines.models import resolve_checkpoint

    cache = WORK / "models"
    cache.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(resolve_checkpoint("tiny.en", cache))
    wd.use_frozen(wd.REPO)  # the daemon as it is in this checkout, run as `python -c 'daemon.cli:main'`
    wd.compile_daemon()
    loads = {k: workload(k) for k in args.workloads.split(",")}
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    modes = args.modes.split(",")
    setups = [("openai-whisper", None, None)] + [("whisperd", b, m) for b in sizes for m in modes]
    info = machine(args.device)
    print(json.dumps(info), flush=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-", dir=WORK) as tmp:
        for r in range(args.rounds):
            for key, w in loads.items():
                for engine, batch, mode in (setups if r % 2 == 0 else setups[::-1]):
                    if engine == "openai-whisper":
                        res = stock(w, checkpoint, args.device, Path(tmp))
                    else:
                        settings = wd.Settings(batch_size=batch, device=args.device)
                        res = whisperd(w, settings, mode, cache, Path(tmp))
                    texts = res.pop("texts", {}) or {}
                    score = corpus_wer(w.refs, texts)
                    row = {"round": r, "workload": key, "engine": engine, "batch_size": batch, "mode": mode,
                           "wer": score["wer"], "files_with_text": sum(1 for t in texts.values() if t),
                           "model_device_precision": res.get("engine"),  # whisperd's jobs, as its status tells
                           **{k: res.get(k) for k in ("work_s", "wall_s", "load_s", "peak_rss_mb", "gpu_mb",
                                                     "jobs_failed", "log_problems", "error", "stderr_tail", "details")}}
                    runs.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "stderr_tail"}), flush=True)
                    if row.get("stderr_tail"):
                        print(row["stderr_tail"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "audio_seconds": {k: w.audio_seconds for k, w in loads.items()},
                                    "runs": runs}, indent=1))
    print()
    print(f"{'workload':<9}{'engine':<34}{'work s (median)':>16}{'audio s/s':>10}{'x stock':>9}{'WER':>8}"
          f"{'RSS MB':>9}{'GPU MB':>9}")
    for key, w in loads.items():
        def rows(engine: str, batch: int | None, mode: str | None) -> list[dict[str, Any]]:
            return [x for x in runs if x["workload"] == key and x["engine"] == engine and x["batch_size"] == batch
                    and x["mode"] == mode and x.get("work_s")]
        base = rows("openai-whisper", None, None)
        base_s = statistics.median(x["work_s"] for x in base) if base else None
        for engine, batch, mode in setups:
            got = rows(engine, batch, mode)
            label = engine if batch is None else f"{engine} bs{batch} {'model loaded' if mode == 'drop' else 'start-up'}"
            if not got:
                print(f"{key:<9}{label:<34}{'failed':>16}")
                continue
            s = statistics.median(x["work_s"] for x in got)
            ratio = f"{base_s / s:.2f}" if base_s else "-"
            gpu = max((x["gpu_mb"] or 0) for x in got)
            print(f"{key:<9}{label:<34}{s:>16.2f}{w.audio_seconds / s:>10.1f}{ratio:>9}"
                  f"{100 * statistics.median(x['wer'] for x in got):>7.2f}%{max(x['peak_rss_mb'] or 0 for x in got):>9.0f}"
                  f"{gpu:>9.0f}")
    print(f"\n{info.get('gpu', args.device)}, torch {info['torch']}, {info['cpu_cores']} CPU cores; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
