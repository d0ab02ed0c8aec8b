"""What every command line shares: the ``--config`` option, and leaving with a message."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from daemon import config as config_mod
from daemon.config import EX_CONFIG, Config
from daemon.errors import ConfigError

CONFIG_HELP = "The YAML configuration file (default: config.yaml; or set WHISPERD_CONFIG)."


def config_option(default: str | None = "config.yaml", help: str = CONFIG_HELP) -> Callable[[Any], Any]:
    """``--config``/``-c`` as ``config_path`` (a Path), also read from ``$WHISPERD_CONFIG``."""
    return click.option(
        "--config", "-c", "config_path", default=default, envvar="WHISPERD_CONFIG", show_default=default is not None,
        type=click.Path(dir_okay=False, path_type=Path), help=help,
    )


def die(message: str, code: int = 1) -> NoReturn:
    click.echo(f"whisperd: {message}", err=True)
    sys.exit(code)


def load_config(path: str | Path) -> Config:
    """Load the config, or exit 78 (EX_CONFIG) with the reason on stderr."""
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        die(exc.message, EX_CONFIG)
