"""Thermal and memory probes behind one small interface.

A thermal probe is anything with ``read() -> ThermalReading``; a memory probe is
a callable returning the bytes available to a new job. ``make_thermal_probe``
picks the source once, from ``thermal.source``:

``none``
    always nominal.
``file:/path``
    the file holds one of the four level words (see ``FileProbe``).
``auto``
    macOS: ``NSProcessInfo.thermalState`` through pyobjc when it can be
    imported, otherwise ``pmset -g therm``. Linux: the hottest
    ``/sys/class/thermal/thermal_zone*/temp`` against the configured
    thresholds. Elsewhere: nominal.

How missing information is read: an *automatic* source that is simply absent
(no thermal zones, no pmset, output with nothing recognisable) reads as
nominal with the reason in ``detail`` — otherwise a machine without sensors
would never transcribe anything. A source the user *named* (``file:``) that
cannot be read reads as serious: whoever wired a probe wants it obeyed, and a
dead probe must not let the Mac cook. ``FixedProbe`` is the test double.
"""

from __future__ import annotations

import enum
import importlib
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import psutil

from daemon.config import ThermalConfig

log = logging.getLogger(__name__)

SYSFS_THERMAL = Path("/sys/class/thermal")


class ThermalLevel(enum.IntEnum):
    """The four levels of ``NSProcessInfoThermalState``, ordered by severity."""

    NOMINAL = 0
    FAIR = 1
    SERIOUS = 2
    CRITICAL = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> "ThermalLevel":
        """``" Serious\\n"`` → SERIOUS; raises ValueError on anything but the four words."""
        word = text.strip().lower()
        for level in cls:
            if str(level) == word:
                return level
        raise ValueError(f"{text.strip()[:40]!r} is not one of nominal, fair, serious, critical")


@dataclass(frozen=True)
class ThermalReading:
    level: ThermalLevel
    source: str  # "file", "sysfs", "pmset", "foundation", "fixed", "none"
    detail: str | None = None  # plain words: "hottest zone 86.0 °C", "file /x is missing"


class ThermalProbe(Protocol):
    """``fresh_seconds``: how long a reading may be reused. Cheap probes say 0 and
    are read at every chunk boundary; one that runs a program says a few seconds."""

    fresh_seconds: float

    def read(self) -> ThermalReading: ...


MemoryProbe = Callable[[], "int | None"]


def available_memory_bytes() -> int:
    """Memory a new job can use without pushing the system into swap.

    psutil's ``available`` (on macOS: free + inactive pages; on Linux:
    ``MemAvailable``) already counts reclaimable caches as free.
    """
    return int(psutil.virtual_memory().available)


# --------------------------------------------------------------------------- fixed and file


class FixedProbe:
    """Reports whatever level it was given; ``set()`` changes it. For tests and ``source: none``."""

    fresh_seconds = 0.0

    def __init__(self, level: ThermalLevel | str = ThermalLevel.NOMINAL, detail: str | None = None, source: str = "fixed") -> None:
        self.source = source
        self.set(level, detail)

    def set(self, level: ThermalLevel | str, detail: str | None = None) -> None:
        self._reading = ThermalReading(
            level if isinstance(level, ThermalLevel) else ThermalLevel.parse(level), self.source, detail
        )

    def read(self) -> ThermalReading:
        return self._reading


class FileProbe:
    """Reads a level word from a file that another program keeps up to date.

    Case and surrounding whitespace are ignored. A missing, unreadable or
    garbled file reads as **serious**, with the reason in ``detail``: the user
    configured this probe on purpose, so when it stops answering whisperd
    stops starting work and pauses at the next chunk rather than guess that
    the machine is cool. Work resumes as soon as the file holds a level again
    (after the usual cooldown). A file is cheap to read, so it is read at
    every chunk boundary: whisperd pauses at the first one after it changes.
    """

    fresh_seconds = 0.0

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> ThermalReading:
        try:
            with self.path.open("r", encoding="utf-8", errors="replace") as fh:
                text = fh.read(256)
        except FileNotFoundError:
            return ThermalReading(ThermalLevel.SERIOUS, "file", f"thermal file {self.path} is missing")
        except OSError as exc:
            return ThermalReading(ThermalLevel.SERIOUS, "file", f"thermal file {self.path} could not be read: {exc.strerror or exc}")
        try:
            return ThermalReading(ThermalLevel.parse(text), "file")
        except ValueError as exc:
            return ThermalReading(ThermalLevel.SERIOUS, "file", f"thermal file {self.path} is not understood: {exc}")


# --------------------------------------------------------------------------- Linux sysfs


def level_for_celsius(celsius: float, fair: float, serious: float, critical: float) -> ThermalLevel:
    if celsius >= critical:
        return ThermalLevel.CRITICAL
    if celsius >= serious:
        return ThermalLevel.SERIOUS
    if celsius >= fair:
        return ThermalLevel.FAIR
    return ThermalLevel.NOMINAL


class SysfsProbe:
    """The hottest ``thermal_zone*/temp`` (millidegrees Celsius) against the thresholds.

    Zones that cannot be read, or report zero or less (disabled sensors often
    do), are skipped. No usable zone reads as nominal.
    """

    fresh_seconds = 0.0

    def __init__(self, fair: float, serious: float, critical: float, root: str | Path = SYSFS_THERMAL) -> None:
        self.fair, self.serious, self.critical = fair, serious, critical
        self.root = Path(root)

    def hottest(self) -> tuple[float, str] | None:
        best: tuple[float, str] | None = None
        for temp in sorted(self.root.glob("thermal_zone*/temp")):
            try:
                milli = int(temp.read_text(encoding="ascii").strip())
            except (OSError, ValueError, UnicodeDecodeError):
                continue
            if milli <= 0:
                continue
            name = temp.parent.name
            try:
                kind = (temp.parent / "type").read_text(encoding="ascii").strip()
                if kind:
                    name = f"{name} ({kind})"
            except (OSError, UnicodeDecodeError):
                pass
            if best is None or milli / 1000 > best[0]:
                best = (milli / 1000, name)
        return best

    def read(self) -> ThermalReading:
        hottest = self.hottest()
        if hottest is None:
            return ThermalReading(ThermalLevel.NOMINAL, "sysfs", f"no readable thermal zones under {self.root}")
        celsius, name = hottest
        level = level_for_celsius(celsius, self.fair, self.serious, self.critical)
        return ThermalReading(level, "sysfs", f"{name} at {celsius:.1f} °C")


# --------------------------------------------------------------------------- macOS


_FOUNDATION_LEVELS = (ThermalLevel.NOMINAL, ThermalLevel.FAIR, ThermalLevel.SERIOUS, ThermalLevel.CRITICAL)


class FoundationProbe:
    """``NSProcessInfo.processInfo().thermalState()`` (0..3) through pyobjc."""

    fresh_seconds = 0.0

    def __init__(self, process_info: Any) -> None:
        self.process_info = process_info

    @classmethod
    def load(cls, import_module: Callable[[str], Any] = importlib.import_module) -> "FoundationProbe":
        """Raises ImportError when pyobjc's Foundation is not installed."""
        foundation = import_module("Foundation")
        return cls(foundation.NSProcessInfo.processInfo())

    def read(self) -> ThermalReading:
        state = int(self.process_info.thermalState())
        return ThermalReading(_FOUNDATION_LEVELS[min(max(state, 0), 3)], "foundation")


# kIOPMThermalWarningLevel*: Normal 0, Danger = kIOPMThermalLevelWarning (100),
# Crisis = kIOPMThermalLevelCritical (10); 5 and 110 are the other published levels.
_WARNING_LEVELS = {0: ThermalLevel.NOMINAL, 5: ThermalLevel.SERIOUS, 100: ThermalLevel.SERIOUS,
                   10: ThermalLevel.CRITICAL, 110: ThermalLevel.CRITICAL}
# Level lines may follow a "2024-07-12 14:02:11 +0200 " timestamp, so they are not anchored.
_THERMAL_WARNING = re.compile(r"Thermal\s+Warning\s+Level\s*[=:]\s*(\d+)", re.I)
_PERFORMANCE_WARNING = re.compile(r"Performance\s+Warning\s+Level\s*[=:]\s*(\d+)", re.I)
_CPU_LIMIT = re.compile(r"CPU_(Speed|Scheduler)_Limit\s*=\s*(\d+)", re.I)
_NO_RECORD = re.compile(r"^\s*Note:\s*No (thermal warning level|performance warning level|CPU power status) has been recorded", re.I | re.M)


def limit_level(percent: int) -> ThermalLevel:
    """A CPU speed or scheduler limit (100 = unthrottled) as a level."""
    if percent >= 100:
        return ThermalLevel.NOMINAL
    if percent >= 80:
        return ThermalLevel.FAIR
    if percent >= 50:
        return ThermalLevel.SERIOUS
    return ThermalLevel.CRITICAL


def parse_pmset_therm(text: str) -> ThermalLevel | None:
    """The level ``pmset -g therm`` describes (stdout and stderr together), or None if it says nothing.

    The worst signal wins:

    - ``Thermal Warning Level = N``: 0 nominal; 5 or 100 (danger) serious;
      10 or 110 (crisis) critical; any other non-zero value serious.
    - ``Performance Warning Level = N``: 0 nominal, otherwise fair (the
      system is holding performance back, not necessarily for heat).
    - ``CPU_Speed_Limit`` / ``CPU_Scheduler_Limit`` (percent; Intel Macs):
      100 nominal, 80-99 fair, 50-79 serious, below 50 critical.
    - ``Note: No ... has been recorded`` lines count as nominal.

    ``Error: ...`` lines and anything unrecognised are ignored.
    """
    levels: list[ThermalLevel] = []
    for m in _THERMAL_WARNING.finditer(text):
        levels.append(_WARNING_LEVELS.get(int(m.group(1)), ThermalLevel.SERIOUS))
    for m in _PERFORMANCE_WARNING.finditer(text):
        levels.append(ThermalLevel.NOMINAL if int(m.group(1)) == 0 else ThermalLevel.FAIR)
    for m in _CPU_LIMIT.finditer(text):
        levels.append(limit_level(int(m.group(2))))
    if _NO_RECORD.search(text):
        levels.append(ThermalLevel.NOMINAL)
    return max(levels) if levels else None


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def run_pmset_therm(run: Runner = subprocess.run, timeout: float = 10.0) -> str:
    """``pmset -g therm``'s stdout and stderr (older versions print part of it on stderr). Raises OSError / SubprocessError."""
    done = run(["pmset", "-g", "therm"], capture_output=True, text=True, timeout=timeout, check=False)
    return (done.stdout or "") + (done.stderr or "")


class PmsetProbe:
    """Runs ``pmset -g therm`` (never through a shell) and parses it. A program
    start per reading, so a reading is reused for a few seconds."""

    fresh_seconds = 5.0

    def __init__(self, run: Runner = subprocess.run, timeout: float = 10.0) -> None:
        self.run = run
        self.timeout = timeout

    def read(self) -> ThermalReading:
        try:
            text = run_pmset_therm(self.run, self.timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            return ThermalReading(ThermalLevel.NOMINAL, "pmset", f"pmset could not be run: {exc}")
        level = parse_pmset_therm(text)
        if level is None:
            return ThermalReading(ThermalLevel.NOMINAL, "pmset", "pmset -g therm reported nothing recognisable")
        return ThermalReading(level, "pmset")


# --------------------------------------------------------------------------- choice


def make_thermal_probe(
    cfg: ThermalConfig,
    *,
    platform: str = sys.platform,
    sysfs_root: str | Path = SYSFS_THERMAL,
    import_module: Callable[[str], Any] = importlib.import_module,
    run: Runner = subprocess.run,
) -> ThermalProbe:
    """Choose the thermal source once, from ``thermal.source`` and the platform."""
    source = cfg.source
    if source == "none":
        return FixedProbe(ThermalLevel.NOMINAL, "thermal.source is none", source="none")
    if source.startswith("file:"):
        return FileProbe(source[len("file:"):])
    if source != "auto":
        raise ValueError(f"thermal.source {source!r} is not auto, none or file:/path")
    if platform == "darwin":
        try:
            return FoundationProbe.load(import_module)
        except (ImportError, AttributeError) as exc:
            log.info("pyobjc Foundation unavailable (%s); reading pmset -g therm instead", exc,
                     extra={"action": "thermal.probe"})
            return PmsetProbe(run)
    if platform.startswith("linux"):
        return SysfsProbe(cfg.fair_celsius, cfg.serious_celsius, cfg.critical_celsius, sysfs_root)
    return FixedProbe(ThermalLevel.NOMINAL, f"no thermal source on {platform}", source="none")
