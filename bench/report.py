"""Ratios to the stock baseline, the best whisperd settings, the targets, and the printed tables."""

from __future__ import annotations

from typing import Any

FW_DEFAULT = "int8 beam5"  # faster-whisper with its own defaults: the per-file baseline of the targets
WER_SLACK = 0.005  # a setting may be called best only if its WER is within 0.5 points of the default's
MARGIN = 0.03  # ... and it is more than 3% faster than the default (smaller differences are timing noise)
WARM = ", model loaded"  # variant suffix: the backlog dropped into a running daemon whose model is loaded


def _key(r: dict[str, Any]) -> tuple[str, str, str]:
    return r["workload"], r["engine"], r["variant"]


def find(runs: list[dict[str, Any]], workload: str, engine: str, condition: str = "quiet",
          variant: str | None = None) -> dict[str, Any] | None:
    for r in runs:
        if (r["workload"], r["engine"], r["condition"]) == (workload, engine, condition) and (variant is None or r["variant"] == variant):
            if r.get("work_s"):
                return r
    return None


def compare(runs: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Adds to each run its ratios to stock whisper (same workload and condition) and, on a shared
    machine, its slowdown against its own quiet run. Returns a compact list of them."""
    out = []
    for r in runs:
        if not r.get("work_s"):
            continue
        stock = find(runs, r["workload"], baseline, r["condition"])
        if stock is not None:
            r["vs_stock_speed"] = stock["work_s"] / r["work_s"]
            # a warm run's wall time starts at the drop; the baseline's includes its import and load
            r["vs_stock_e2e"] = None if r["variant"].endswith(WARM) else stock["wall_s"] / r["wall_s"]
            r["wer_delta_pp"] = (r["wer"]["wer"] - stock["wer"]["wer"]) * 100
        if r["condition"] == "shared":
            quiet = find(runs, r["workload"], r["engine"], "quiet", r["variant"])
            if quiet is not None:
                r["slowdown"] = r["work_s"] / quiet["work_s"]
                r["slowdown_e2e"] = r["wall_s"] / quiet["wall_s"]
        out.append({k: r.get(k) for k in ("workload", "engine", "variant", "condition", "vs_stock_speed", "vs_stock_e2e",
                                          "wer_delta_pp", "slowdown", "slowdown_e2e")})
    return out


def sweep_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """whisperd's quiet runs on A and B, one row per setting that has both."""
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in runs:
        if (r["engine"] == "whisperd" and r["condition"] == "quiet" and r["workload"] in ("A", "B") and r.get("work_s")
                and not r["variant"].endswith(WARM)):
            by.setdefault(r["variant"], {})[r["workload"]] = r
    rows = []
    for label, w in by.items():
        if "A" not in w or "B" not in w:
            continue
        audio = w["A"]["audio_s"] + w["B"]["audio_s"]
        rows.append({
            "label": label,
            "settings": w["A"].get("settings"),
            "A_speed": w["A"]["speed"], "A_wer": w["A"]["wer"]["wer"], "A_wall_s": w["A"]["wall_s"],
            "B_speed": w["B"]["speed"], "B_wer": w["B"]["wer"]["wer"], "B_wall_s": w["B"]["wall_s"],
            "peak_rss_mb": max(w["A"].get("peak_rss_mb", 0), w["B"].get("peak_rss_mb", 0)),
            "throughput": audio / (w["A"]["work_s"] + w["B"]["work_s"]),
            "throughput_e2e": audio / (w["A"]["wall_s"] + w["B"]["wall_s"]),
            "disturbed": bool(w["A"].get("disturbed") or w["B"].get("disturbed")),
        })
    rows.sort(key=lambda x: -x["throughput"])
    return rows


def combined_best(runs: list[dict[str, Any]], default: Any) -> dict[str, Any] | None:
    """The best value of each setting (precision, batch size, threads), each judged with the others at
    their default, put together; WER within WER_SLACK of the default's."""
    rows = {tuple(sorted(x["settings"].items())): x for x in sweep_table(runs) if x.get("settings")}
    base = default.as_dict()
    if tuple(sorted(base.items())) not in rows:
        return None
    base_row = rows[tuple(sorted(base.items()))]
    combo = dict(base)
    for key in base:
        best_value, best_tp = base[key], base_row["throughput"]
        for x in rows.values():
            s = x["settings"]
            if any(s.get(k) != base[k] for k in base if k != key) or s.get(key) == base[key]:
                continue
            if x["A_wer"] > base_row["A_wer"] + WER_SLACK or x["B_wer"] > base_row["B_wer"] + WER_SLACK:
                continue
            if x["throughput"] > best_tp and x["throughput"] > base_row["throughput"] * (1 + MARGIN):
                best_value, best_tp = s[key], x["throughput"]
        combo[key] = best_value
    return combo


def best_settings(runs: list[dict[str, Any]], default: Any) -> dict[str, Any] | None:
    """The fastest setting on A + B (audio seconds per second of work) whose WER on each is within
    WER_SLACK of the default's."""
    rows = sweep_table(runs)
    base = next((x for x in rows if x["label"] == default.label), None)
    if base is None:
        return None
    ok = [x for x in rows if x["A_wer"] <= base["A_wer"] + WER_SLACK and x["B_wer"] <= base["B_wer"] + WER_SLACK]
    best = max(ok, key=lambda x: x["throughput"])
    note = None
    if best is not base and best["throughput"] <= base["throughput"] * (1 + MARGIN):
        note = f"{best['label']} was fastest but by no more than {MARGIN:.0%}; the default is kept"
        best = base
    return {**best, "vs_default": best["throughput"] / base["throughput"], "ranking": [x["label"] for x in rows],
            "note": note}


def _wall(run: dict[str, Any], base: dict[str, Any]) -> str:
    """``run``'s wall time beside ``base``'s: a ratio, or for a warm run (whose wall time starts at
    the drop, the baseline's at its process start) the seconds alone."""
    if run["variant"].endswith(WARM):
        return f"dropped to last transcript {run['wall_s']:.1f} s"
    return f"{base['wall_s'] / run['wall_s']:.2f}x process start to exit"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def targets(out: dict[str, Any], default: Any) -> list[dict[str, Any]]:
    runs = out["runs"]
    res: list[dict[str, Any]] = []
    labels = [default.label]
    best = out.get("best_whisperd_settings")
    if best and best["label"] != default.label:
        labels.append(best["label"])

    def add(name: str, label: str, value: float | None, goal: str, met: bool | None, detail: str) -> None:
        res.append({"target": name, "whisperd_settings": label, "value": value, "goal": goal, "met": met, "detail": detail})

    # A twice: the backlog found at start-up (a worker claims its first file once its model has
    # loaded, so the work time leaves the load out, as the baselines' does; e2e holds it), and
    # dropped into a running daemon whose model is loaded
    a_runs = [(label, "found at start-up") for label in labels]
    a_runs.append((default.label + WARM, "dropped into a running daemon, model loaded"))
    stock_a = find(runs, "A", "openai-whisper")
    fw_a = find(runs, "A", "faster-whisper", variant=FW_DEFAULT)
    for label, how in a_runs:
        a = find(runs, "A", "whisperd", variant=label)
        if a and stock_a:
            r = stock_a["work_s"] / a["work_s"]
            dw = (a["wer"]["wer"] - stock_a["wer"]["wer"]) * 100
            add(f"A: short-file backlog {how}, vs stock openai-whisper per file", label, r, ">= 4x", r >= 4,
                f"{r:.2f}x on work time ({_wall(a, stock_a)}); WER {dw:+.2f} points vs stock")
        if a and fw_a:
            r = fw_a["work_s"] / a["work_s"]
            wer_ok = a["wer"]["wer"] <= fw_a["wer"]["wer"]
            add(f"A: short-file backlog {how}, vs faster-whisper per file, equal or better WER", label, r,
                ">= 1.3x and WER <=", r >= 1.3 and wer_ok,
                f"{r:.2f}x on work time ({_wall(a, fw_a)}); WER {a['wer']['wer'] * 100:.2f}% vs "
                f"{fw_a['wer']['wer'] * 100:.2f}% (faster-whisper beam 5)")
            fastest = max((r2 for r2 in runs if r2["workload"] == "A" and r2["engine"].startswith("faster-whisper")
                           and r2["condition"] == "quiet" and r2.get("work_s")), key=lambda r2: r2["speed"], default=None)
            if fastest is not None and fastest is not fw_a:
                r3 = fastest["work_s"] / a["work_s"]
                add("A: same, against the fastest faster-whisper variant", label, r3, ">= 1.3x and WER <=",
                    r3 >= 1.3 and a["wer"]["wer"] <= fastest["wer"]["wer"],
                    f"{r3:.2f}x vs {fastest['engine']} [{fastest['variant']}]; WER {a['wer']['wer'] * 100:.2f}% vs "
                    f"{fastest['wer']['wer'] * 100:.2f}%")
    for label in labels:
        for key, variant, how in (("B", label, ""), ("B", label + WARM, ", dropped into a running daemon, model loaded"),
                                  ("C", label, "")):
            w = find(runs, key, "whisperd", variant=variant)
            stock = find(runs, key, "openai-whisper")
            if w and stock:
                r = stock["work_s"] / w["work_s"]
                wer_ok = w["wer"]["wer"] <= stock["wer"]["wer"]
                add(f"{key}: long recording{how} vs stock openai-whisper, no worse WER", variant, r, ">= 2.5x and WER <=",
                    r >= 2.5 and wer_ok,
                    f"{r:.2f}x on work time ({_wall(w, stock)}); WER {w['wer']['wer'] * 100:.2f}% vs "
                    f"{stock['wer']['wer'] * 100:.2f}%")
        shared = find(runs, "B", "whisperd", "shared", variant=label)
        if shared and shared.get("slowdown"):
            s = shared["slowdown"]
            add("D: slowdown with one of two cores taken", label, s, "<= 2x", s <= 2,
                f"{s:.2f}x on work time ({shared.get('slowdown_e2e') or 0:.2f}x end to end)")
    b = find(runs, "B", "whisperd", variant=default.label)
    c = find(runs, "C", "whisperd", variant=default.label)
    if b and c:
        r = c["peak_rss_mb"] / b["peak_rss_mb"]
        add("C vs B: peak RSS of a 60-min recording vs a 5-min one", default.label, r, "<= 1.15x", r <= 1.15,
            f"{c['peak_rss_mb']:.0f} MB vs {b['peak_rss_mb']:.0f} MB (daemon + worker)")
    ov = out.get("overhead") or {}
    if ov.get("daemon_rss_after_worker_exit_mb") is not None:
        v = ov["daemon_rss_after_worker_exit_mb"]
        add("daemon RSS after its worker exited", default.label, v, "< 150 MB", v < 150,
            f"{v:.0f} MB (whole tree incl. multiprocessing helper: {ov.get('tree_rss_after_worker_exit_mb', 0):.0f} MB)")
    return res


def overhead_line(ov: dict[str, Any]) -> str:
    if not ov:
        return "overhead: not measured"
    if ov.get("error"):
        return f"overhead: failed: {ov['error']}"
    parts = []
    if ov.get("queued_to_started_s") is not None:
        parts.append(f"queued->started {ov['queued_to_started_s'] * 1000:.0f} ms")
    if ov.get("dropped_to_started_minus_settle_s") is not None:
        parts.append(f"dropped->started minus settle {ov['dropped_to_started_minus_settle_s'] * 1000:.0f} ms")
    if ov.get("idle_cpu_percent_before_work") is not None:
        parts.append(f"idle CPU {ov['idle_cpu_percent_before_work']:.2f}% (before work), "
                     f"{ov.get('idle_cpu_percent_after_worker_exit', float('nan')):.2f}% (after the worker exited)")
    ex = ov.get("idle_with_example_watch_settings") or {}
    if ex.get("idle_cpu_percent") is not None:
        parts.append(f"{ex['idle_cpu_percent']:.2f}% with config.example's watch settings")
    if ov.get("daemon_rss_after_worker_exit_mb") is not None:
        parts.append(f"daemon RSS after worker exit {ov['daemon_rss_after_worker_exit_mb']:.0f} MB")
    return "overhead: " + "; ".join(parts)


# --------------------------------------------------------------------------- printing


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def print_all(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    probe = Console()
    console = Console(width=max(150, probe.width)) if probe.is_terminal else Console(width=190)
    m = out["machine"]
    console.print(f"\n[bold]whisperd bench[/bold] — {m['date']}; {m['cpu']}, {m['cores']} cores, "
                  f"{m.get('memory_gb')} GB; torch {m['torch']}, openai-whisper {m['openai-whisper']}, "
                  f"faster-whisper {m['faster-whisper']}")
    for key, w in out["workloads"].items():
        console.print(f"  {key}: {w['title']}: {w['files']} file(s), {w['audio_s'] / 60:.1f} min of audio, {w['ref_words']} words")

    runs = out["runs"]
    default_label = next((r["variant"] for r in runs if r["engine"] == "whisperd"), None)
    best = out.get("best_whisperd_settings") or {}
    shown_whisperd = {default_label, best.get("label"), f"{default_label}{WARM}"}

    t = Table(title="Engines (work: model loaded, first file to last transcript; e2e: process start to exit; "
                    f"whisperd [..{WARM}]: the files dropped into a running daemon, e2e from the drop)",
              show_lines=False, header_style="bold")
    for col in ("load", "engine", "settings", "wall s", "overhead s", "work s", "speed×", "speed× e2e", "vs stock",
                "vs stock e2e", "WER %", "ΔWER pp", "peak RSS MB", "others' load"):
        t.add_column(col, justify="left" if col in ("load", "engine", "settings") else "right")
    for r in runs:
        if r["engine"] == "whisperd" and r["variant"] not in shown_whisperd and r["workload"] in ("A", "B") and r["condition"] == "quiet":
            continue
        load = f"{r['workload']}" + (" shared" if r["condition"] == "shared" else "")
        t.add_row(
            load, r["engine"], r["variant"], _f(r.get("wall_s")), _f(r.get("overhead_s")), _f(r.get("work_s")),
            _f(r.get("speed")), _f(r.get("speed_e2e")), _f(r.get("vs_stock_speed"), "{:.2f}x"),
            _f(r.get("vs_stock_e2e"), "{:.2f}x"), _f(r["wer"]["wer"] * 100, "{:.2f}"), _f(r.get("wer_delta_pp"), "{:+.2f}"),
            _f(r.get("peak_rss_mb"), "{:.0f}"), _f(r.get("foreign_cores"), "{:.2f}") + ("!" if r.get("disturbed") else ""),
            style="red" if r.get("error") else None,
        )
    console.print(t)

    rows = sweep_table(runs)
    if len(rows) > 1:
        s = Table(title="whisperd settings (A + B, quiet; precision/batch size/threads)", header_style="bold")
        for col in ("settings", "A speed×", "A WER %", "A wall s", "B speed×", "B WER %", "B wall s", "A+B speed×",
                    "A+B speed× e2e", "peak RSS MB"):
            s.add_column(col, justify="left" if col == "settings" else "right")
        for x in rows:
            tags = [t for t, on in (("default", x["label"] == default_label), ("best", x["label"] == best.get("label"))) if on]
            mark = f" ({', '.join(tags)})" if tags else ""
            s.add_row(x["label"] + mark, _f(x["A_speed"]), _f(x["A_wer"] * 100, "{:.2f}"), _f(x["A_wall_s"]),
                      _f(x["B_speed"]), _f(x["B_wer"] * 100, "{:.2f}"), _f(x["B_wall_s"]), _f(x["throughput"]),
                      _f(x["throughput_e2e"]), _f(x["peak_rss_mb"], "{:.0f}"),
                      style="yellow" if x["disturbed"] else None)
        console.print(s)

    shared = [r for r in runs if r["condition"] == "shared"]
    if shared:
        d = Table(title="D: shared machine (B with a busy loop on one of the cores)", header_style="bold")
        for col in ("engine", "settings", "quiet work s", "shared work s", "slowdown", "slowdown e2e"):
            d.add_column(col, justify="left" if col in ("engine", "settings") else "right")
        for r in shared:
            quiet = find(runs, r["workload"], r["engine"], "quiet", r["variant"])
            d.add_row(r["engine"], r["variant"], _f(quiet and quiet.get("work_s")), _f(r.get("work_s")),
                      _f(r.get("slowdown"), "{:.2f}x"), _f(r.get("slowdown_e2e"), "{:.2f}x"))
        console.print(d)

    if out.get("overhead"):
        console.print(escape(overhead_line(out["overhead"])))
    if best:
        console.print(f"best whisperd settings here: [bold]{best['label']}[/bold] "
                      f"({best['vs_default']:.2f}x the default's A+B speed)" + (f"; {best['note']}" if best.get("note") else ""))

    tg = Table(title="Targets", header_style="bold")
    for col in ("target", "whisperd", "goal", "met", "measured"):
        tg.add_column(col)
    for x in out.get("targets", []):
        tg.add_row(x["target"], x["whisperd_settings"], x["goal"], "yes" if x["met"] else "NO", escape(x["detail"]),
                   style=None if x["met"] else "red")
    console.print(tg)
    for n in out.get("notes", []):
        console.print(escape(f"note: {n}"))
