"""Entry points only: parse arguments, load the config, call the service. Logging is configured here."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from daemon import __version__
from daemon.cli_common import config_option, die, load_config
from daemon.errors import WhisperdError

log = logging.getLogger("whisperd.cli")

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="whisperd")
def main() -> None:
    """whisperd: drop recordings into a folder, find transcripts and subtitles waiting."""


@main.command()
@config_option()
@click.option("--drain", is_flag=True, help="Process everything waiting, then exit 0.")
@click.option("--now", "ignore_windows", is_flag=True, help="Ignore the schedule's windows for this run.")
@click.option("--verbose", "-v", is_flag=True, help="Log more detail.")
def run(config_path: Path, drain: bool, ignore_windows: bool, verbose: bool) -> None:
    """Run the daemon in the foreground (launchd and systemd start it this way)."""
    from daemon.logs import setup_logging
    from daemon.service import EX_TEMPFAIL, AlreadyRunning, Service
    from daemon.wiring import build_service_parts

    config = load_config(config_path)
    setup_logging(config.log_dir, verbose=verbose, to_console=True)
    try:
        parts = build_service_parts(config)
        service = Service(config, verbose=verbose, **parts)
        service.install_signal_handlers()
        code = service.run(drain=drain, ignore_windows=ignore_windows)
    except AlreadyRunning as exc:
        die(str(exc), EX_TEMPFAIL)
    except WhisperdError as exc:
        die(str(exc), 1)
    sys.exit(code)


def _job_dict(job: Any, now: float) -> dict[str, Any]:
    elapsed = None
    if job.started_at:
        elapsed = (job.finished_at or now) - job.started_at
    return {
        "id": job.id,
        "path": job.path,
        "name": job.rel,
        "state": job.state.value,
        "progress": round(job.progress, 4),
        "error": job.error if job.state.value in ("failed", "queued") else None,
        "duration": job.duration,
        "model": job.model,
        "device": job.device,
        "precision": job.precision,
        "attempts": job.attempts,
        "strikes": job.strikes,
        "suspect": job.suspect_until is not None,
        "interruptions": [i.to_dict() for i in job.interruptions],
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "elapsed": None if elapsed is None else round(elapsed, 1),
        "outputs": list(job.outputs),
        "destination": job.destination,
        "duplicate_of": job.duplicate_of,
    }


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@main.command()
@config_option()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status(config_path: Path, as_json: bool) -> None:
    """Show the queue: queued, running (with % done), done and failed."""
    from daemon.queue import Queue
    from daemon.service import read_status

    config = load_config(config_path)
    try:
        queue = Queue(config.database)
    except WhisperdError as exc:
        die(str(exc), 1)
    try:
        jobs = queue.all()
        counts = queue.counts()
    finally:
        queue.close()
    now = time.time()
    daemon = read_status(config)
    rows = [_job_dict(j, now) for j in jobs]
    if as_json:
        click.echo(json.dumps({"jobs": rows, "counts": counts, "daemon": daemon}, ensure_ascii=False, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    state_line = "running" if daemon.get("running") else "not running"
    if daemon.get("reason"):
        state_line += f" — {daemon['reason']}"
    console.print(f"whisperd: {state_line}")
    engine = daemon.get("engine") if daemon.get("running") else None
    if engine:
        gpu = engine.get("gpu_memory_bytes")
        held = f", {gpu / 2**30:.1f} GB on the GPU" if gpu is not None else ""
        console.print(f"engine: {engine['name']} on {engine['device']} ({engine['precision']}{held})", markup=False)
        if engine.get("note"):
            console.print(f"  {engine['note']}", markup=False)
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()))
    if not rows:
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("file", "state", "done", "audio", "model", "elapsed", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"], r["state"], f"{r['progress'] * 100:.0f}%", _fmt_seconds(r["duration"]), r["model"] or "-",
            _fmt_seconds(r["elapsed"]), r["error"] or "",
        )
    console.print(table)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "-o", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True,
              help="Folder for the transcripts and subtitles.")
@click.option("--model", "-m", "model_name", default=None, help="Model name or checkpoint path (default: from the config, else tiny.en).")
@click.option("--language", "-l", default="auto", show_default=True, help="Language code, codes to choose among (zh,en), or auto.")
@click.option("--format", "-f", "formats", multiple=True, type=click.Choice(["txt", "srt", "vtt", "json"]),
              help="Output formats (default: all four).")
@config_option(default=None, help="Take model settings from this configuration file.")
def transcribe(files: tuple[Path, ...], output_dir: Path, model_name: str | None, language: str, formats: tuple[str, ...],
               config_path: Path | None) -> None:
    """Transcribe files once, in the foreground, with a progress bar."""
    from daemon.oneoff import transcribe_files

    config = load_config(config_path) if config_path else None
    logging.basicConfig(level=logging.WARNING, format="whisperd: %(message)s")
    code = transcribe_files(list(files), output_dir, config=config, model_name=model_name, language=language,
                            formats=formats or ("txt", "srt", "vtt", "json"))
    sys.exit(code)


def _register_service_commands() -> None:
    from daemon.cli_manage import agent, doctor, logs

    for command in (agent, doctor, logs):
        main.add_command(command)


_register_service_commands()

if __name__ == "__main__":
    main()
