"""Commands that manage whisperd rather than run it: ``agent`` (the launchd/systemd service),
``doctor`` and ``logs``. The main group (cli.py) adds them with ``main.add_command``.

Tests (or a caller) may pass ``obj={"service_manager": ...}`` to replace the
platform's launchd/systemd manager.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from daemon import doctor as doctor_mod
from daemon import logs as logs_mod
from daemon.agent import ServiceError, ServiceManager, config_file, find_whisperd
from daemon.platform.launchd import render_plist
from daemon.platform.systemd import render_unit
from daemon.cli_common import config_option, die, load_config

POLL_SECONDS = 0.5
_sleep = time.sleep  # the poll wait of `logs -f`; replaced in tests

executable_option = click.option(
    "--executable",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The whisperd command the service runs (default: the one beside this Python, else on PATH).",
)


def _manager(ctx: click.Context) -> ServiceManager:
    obj = ctx.find_root().obj
    if isinstance(obj, dict) and obj.get("service_manager") is not None:
        return obj["service_manager"]
    from daemon import platform

    return platform.service_manager


def _executable(path: Path | None) -> Path:
    if path is None:
        return find_whisperd()
    return Path(path).absolute()


def _yes(value: bool | None) -> str:
    return "unknown" if value is None else "yes" if value else "no"


# --------------------------------------------------------------------------- agent


@click.group()
def agent() -> None:
    """Run whisperd in the background: a LaunchAgent on macOS, a systemd user service on Linux."""


@agent.command()
@config_option()
@executable_option
@click.pass_context
def install(ctx: click.Context, config_path: Path, executable: Path | None) -> None:
    """Write the service file and start it (replaces an older one)."""
    cfg = load_config(config_path)
    manager = _manager(ctx)
    try:
        path = manager.install(cfg, _executable(executable))
    except ServiceError as exc:
        die(exc.message)
    click.echo(f"Installed {path} and started it with {manager.name}.")
    if manager.name == "launchd":
        click.echo("If a folder lives in Desktop, Documents, Downloads, iCloud Drive or on an external disk,")
        click.echo("run `whisperd doctor`: it says whether macOS needs Full Disk Access for it.")


@agent.command()
@config_option()
@click.pass_context
def uninstall(ctx: click.Context, config_path: Path) -> None:
    """Stop the service and remove its file."""
    cfg = load_config(config_path)
    manager = _manager(ctx)
    try:
        removed = manager.uninstall(cfg)
    except ServiceError as exc:
        die(exc.message)
    click.echo(f"Removed {manager.path(cfg)}." if removed else "Not installed; nothing to remove.")


@agent.command()
@config_option()
@click.pass_context
def status(ctx: click.Context, config_path: Path) -> None:
    """Say whether the service is installed, loaded and running."""
    cfg = load_config(config_path)
    st = _manager(ctx).status(cfg)
    click.echo(f"manager:   {st.manager}")
    click.echo(f"file:      {st.path} ({'installed' if st.installed else 'not installed'})")
    if st.installed and st.current is False:
        click.echo("           differs from this config or executable: run `whisperd agent install` to update it")
    click.echo(f"loaded:    {_yes(st.loaded)}")
    click.echo(f"running:   {_yes(st.running)}" + (f" (pid {st.pid})" if st.pid else ""))
    if st.detail:
        click.echo(f"detail:    {st.detail}")


@agent.command()
@config_option()
@click.pass_context
def restart(ctx: click.Context, config_path: Path) -> None:
    """Restart the running service (e.g. after granting Full Disk Access)."""
    cfg = load_config(config_path)
    try:
        _manager(ctx).restart(cfg)
    except ServiceError as exc:
        die(exc.message)
    click.echo("Restarted.")


@agent.command()
@config_option()
@executable_option
def plist(config_path: Path, executable: Path | None) -> None:
    """Print the LaunchAgent plist that `install` would write on macOS; changes nothing."""
    cfg = load_config(config_path)
    try:
        data = render_plist(label=cfg.label, executable=_executable(executable), config=config_file(cfg), home=Path.home())
    except ServiceError as exc:
        die(exc.message)
    click.echo(data.decode("utf-8"), nl=False)


@agent.command()
@config_option()
@executable_option
def unit(config_path: Path, executable: Path | None) -> None:
    """Print the systemd user unit that `install` would write on Linux; changes nothing."""
    cfg = load_config(config_path)
    try:
        text = render_unit(executable=_executable(executable), config=config_file(cfg))
    except ServiceError as exc:
        die(exc.message)
    click.echo(text, nl=False)


# --------------------------------------------------------------------------- doctor

_STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}


@click.command()
@config_option()
@click.pass_context
def doctor(ctx: click.Context, config_path: Path) -> None:
    """Check everything whisperd needs; exit 1 if anything FAILs."""
    obj: Any = ctx.find_root().obj
    manager = obj.get("service_manager") if isinstance(obj, dict) else None
    checks = doctor_mod.run_checks(config_path, manager=manager)
    tty = sys.stdout.isatty()
    console = None
    if tty:
        from rich.console import Console
        from rich.markup import escape

        console = Console(highlight=False)
    for c in checks:
        status = c.status.value
        if console is not None:
            console.print(f"[{_STYLE[status]}]{status:<4}[/] {escape(f'{c.name}: {c.detail}')}", soft_wrap=True)
        else:
            click.echo(f"{status:<4} {c.name}: {c.detail}")
        if c.fix and c.status is not doctor_mod.Status.OK:
            click.echo(f"     fix: {c.fix}")
    if doctor_mod.failed(checks):
        sys.exit(1)


# --------------------------------------------------------------------------- logs


@click.command()
@config_option()
@click.option("-n", "--lines", "count", type=click.IntRange(min=0), default=50, show_default=True, help="How many lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.pass_context
def logs(ctx: click.Context, config_path: Path, count: int, follow: bool) -> None:
    """Print the end of whisperd's log file."""
    default = ctx.get_parameter_source("config_path") is click.core.ParameterSource.DEFAULT
    if default and not config_path.exists():
        log_dir = None  # no config here: the platform's default log folder
    else:
        log_dir = load_config(config_path).log_dir
    path = logs_mod.log_file(log_dir)
    if path.exists():
        for line in logs_mod.tail(path, count):
            click.echo(line)
    elif not follow:
        die(f"no log file yet at {path}")
    if follow:
        try:
            logs_mod.follow(path, lambda s: click.echo(s, nl=False), poll=POLL_SECONDS, sleep=lambda s: _sleep(s))
        except KeyboardInterrupt:
            pass


commands = (agent, doctor, logs)
