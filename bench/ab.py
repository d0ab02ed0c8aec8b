"""Two or more versions of the daemon, run in turns on the same workloads: is a change faster?

    .venv/bin/python -m bench.ab --variant base=git:HEAD --variant new=. --workloads A --rounds 6

A variant is ``name=where``: ``.`` (a copy of this checkout's ``daemon/``, taken at the start),
``git:<revision>`` (``daemon/`` as committed there), or a folder that holds a ``daemon/``.
``name=where@KEY=VALUE@...`` also sets environment variables for that variant's runs, and
``@model.batch_size=32`` (or ``precision``, ``threads``, ``fit_windows``) a model setting.

Each round runs every variant once per workload, in alternating order (so that a slow spell
of the machine falls on all of them alike), as ``drop`` (the files dropped into a running
daemon whose model is loaded, the bench's "model loaded") or ``drain`` (found at start-up).
It prints one line per run, then each variant's work times sorted, their median, and the
median of its round-by-round ratio to the first variant, with its WER: a change that only
moves seconds should leave the words as they were.

On a 2-core machine one run's work time moves by about 5% from round to round, so a few
percent needs six rounds or more to show. This is a tool for deciding, not the bench: the
figures to quote come from ``make bench``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import whisperd_cli as wd
from bench import workloads as wl
from bench.score import corpus_wer

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"


@dataclass
class Variant:
    name: str
    folder: Path  # holds daemon/
    env: dict[str, str] = field(default_factory=dict)
    settings: wd.Settings = wd.Settings()


def parse_variant(spec: str, into: Path) -> Variant:
    head, *envs = spec.split("@")
    name, sep, where = head.partition("=")
    if not sep or not name or not where:
        raise SystemExit(f"bench.ab: a variant is name=where, not {spec!r}")
    env: dict[str, str] = {}
    model: dict[str, object] = {}
    for e in envs:
        key, sep, value = e.partition("=")
        if not sep:
            raise SystemExit(f"bench.ab: {e!r} in {spec!r} is not KEY=VALUE")
        if key.startswith("model."):
            model[key[6:]] = yaml.safe_load(value)
        else:
            env[key] = value
    try:
        settings = dataclasses.replace(wd.Settings(), **model)
    except TypeError as exc:
        raise SystemExit(f"bench.ab: {spec!r}: {exc}") from None
    folder = into / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if where == ".":
        shutil.copytree(wd.REPO / "daemon", folder / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    elif where.startswith("git:"):
        archive = folder / "daemon.tar"
        with open(archive, "wb") as out:
            subprocess.run(["git", "-C", str(wd.REPO), "archive", "--format=tar", where[4:], "daemon"], stdout=out, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        archive.unlink()
    else:
        src = Path(where).resolve()
        if not (src / "daemon").is_dir():
            raise SystemExit(f"bench.ab: {src} holds no daemon/ folder")
        shutil.copytree(src / "daemon", folder / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    return Variant(name, folder, env, settings)


def workload(key: str) -> wl.Workload:
    audio = WORK / "audio"
    if key == "A":
        return wl.short_files(audio, copies=4)
    if key == "B":
        return wl.long_recording(audio, "B", 5)
    if key == "C":
        return wl.long_recording(audio, "C", 60)
    raise SystemExit(f"bench.ab: no workload {key!r} (A, B or C)")


def run_once(variant: Variant, w: wl.Workload, mode: str, cache: Path, root: Path) -> dict:
    wd.use_frozen(variant.folder)
    saved = {k: os.environ.get(k) for k in variant.env}
    os.environ.update(variant.env)
    try:
        if mode == "drop":
            tree = wd.make_tree(root, cache, variant.settings)
            out = wd.drop_backlog(tree, list(w.files), w.files[0])  # warmed up on its first file, as bench.run does
        else:
            tree = wd.make_tree(root, cache, variant.settings, list(w.files))
            out = wd.drain(tree)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    score = corpus_wer(w.refs, out.get("texts", {}))
    return {"work_s": out.get("work_s"), "wall_s": out.get("wall_s"), "wer": score.get("wer"),
            "peak_rss_mb": out.get("peak_rss_mb"), "others_cores": out.get("foreign_cores")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True, help="name=where[@KEY=VALUE...]; the first is the base")
    ap.add_argument("--workloads", default="A", help="comma-separated: A, B, C")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--mode", choices=("drop", "drain"), default="drop")
    ap.add_argument("--out", type=Path, help="also write every run as JSON here")
    args = ap.parse_args(argv)

    cache = WORK / "models"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ab-", dir=WORK) as tmp:
        variants = [parse_variant(v, Path(tmp) / "variants") for v in args.variant]
        for v in variants:
            wd.use_frozen(v.folder)
            wd.compile_daemon()
        loads = {k: workload(k) for k in args.workloads.split(",")}
        runs: list[dict] = []
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                for key, w in loads.items():
                    res = run_once(v, w, args.mode, cache, Path(tmp) / "tree")
                    res.update(variant=v.name, workload=key, round=r)
                    runs.append(res)
                    print(json.dumps(res), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"mode": args.mode, "variants": args.variant, "runs": runs}, indent=1))
    base = variants[0].name
    print()
    for key in loads:
        print(f"{key} ({args.mode}, {args.rounds} rounds):")
        by = {(x["variant"], x["round"]): x for x in runs if x["workload"] == key}
        for v in variants:
            times = [by[(v.name, r)]["work_s"] for r in range(args.rounds) if by[(v.name, r)]["work_s"]]
            ratios = [by[(v.name, r)]["work_s"] / by[(base, r)]["work_s"] for r in range(args.rounds)
                      if by[(v.name, r)]["work_s"] and by[(base, r)]["work_s"]]
            if not times:
                print(f"  {v.name:>10}: no run finished")
                continue
            wers = sorted({round(100 * by[(v.name, r)]["wer"], 2) for r in range(args.rounds) if by[(v.name, r)]["wer"] is not None})
            print(f"  {v.name:>10}: work {', '.join(f'{t:.2f}' for t in sorted(times))} s; median {statistics.median(times):.2f} s; "
                  f"against {base} {statistics.median(ratios):.3f}; WER {', '.join(map(str, wers))}%")


if __name__ == "__main__":
    main()
