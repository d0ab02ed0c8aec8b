"""Thermal probes over recorded outputs and fake sysfs trees.

tests/data/platform/pmset_therm_nominal_*.txt are outputs as macOS prints them
(Apple Silicon prints only the three notes). The warning samples follow the
format strings of pmset's thermal report (``"%s Thermal Warning Level = %d"``
after a timestamp, ``"\\t%s \\t= %d"`` for the CPU power keys).
"""

import subprocess
import types
from pathlib import Path

import pytest

from daemon.config import ThermalConfig
from daemon.probes import (
    FileProbe,
    FixedProbe,
    FoundationProbe,
    PmsetProbe,
    SysfsProbe,
    ThermalLevel,
    available_memory_bytes,
    limit_level,
    make_thermal_probe,
    parse_pmset_therm,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "platform"
N, F, S, C = ThermalLevel.NOMINAL, ThermalLevel.FAIR, ThermalLevel.SERIOUS, ThermalLevel.CRITICAL


# --------------------------------------------------------------------------- levels


def test_levels_are_ordered_and_print_as_words():
    assert N < F < S < C
    assert [str(level) for level in ThermalLevel] == ["nominal", "fair", "serious", "critical"]
    assert ThermalLevel.parse("  Serious\n") is S
    with pytest.raises(ValueError):
        ThermalLevel.parse("hot")


# --------------------------------------------------------------------------- pmset


@pytest.mark.parametrize(
    "name, expected",
    [
        ("pmset_therm_nominal_apple_silicon.txt", N),
        ("pmset_therm_nominal_intel.txt", N),
        ("pmset_therm_warning_speed_limit.txt", S),  # CPU_Speed_Limit = 70
        ("pmset_therm_warning_level_danger.txt", S),  # Thermal Warning Level = 100, speed 88 (fair)
        ("pmset_therm_warning_level_crisis.txt", C),  # Thermal Warning Level = 10
    ],
)
def test_parse_recorded_pmset_outputs(name, expected):
    assert parse_pmset_therm((DATA / name).read_text(encoding="utf-8")) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", None),
        ("something else entirely\n", None),
        ("Error: No thermal warning level with error code 0xe00002c2\n", None),
        ("Thermal Warning Level = 0\n", N),
        ("Thermal Warning Level = 5\n", S),
        ("Thermal Warning Level = 100\n", S),
        ("Thermal Warning Level = 10\n", C),
        ("Thermal Warning Level = 110\n", C),
        ("Thermal Warning Level = 42\n", S),  # unknown non-zero: serious
        ("Performance Warning Level = 100\n", F),
        ("Performance Warning Level = 0\n", N),
        ("\tCPU_Scheduler_Limit \t= 60\n\tCPU_Speed_Limit \t= 100\n", S),
        ("CPU_Speed_Limit = 35\n", C),
        ("CPU_Available_CPUs = 4\n", None),  # a count, not a limit
        ("Note: No thermal warning level has been recorded\nCPU_Speed_Limit = 90\n", F),
    ],
)
def test_parse_pmset_text(text, expected):
    assert parse_pmset_therm(text) is expected


@pytest.mark.parametrize("percent, expected", [(100, N), (99, F), (80, F), (79, S), (50, S), (49, C), (0, C)])
def test_limit_level(percent, expected):
    assert limit_level(percent) is expected


def test_pmset_probe_runs_pmset_without_a_shell_and_reads_stderr_too():
    calls = []

    def run(args, **kwargs):
        calls.append((args, kwargs))
        # older pmset prints "CPU Power notify" on stderr and the values on stdout
        return subprocess.CompletedProcess(args, 0, stdout="\tCPU_Speed_Limit \t= 45\n", stderr="CPU Power notify\n")

    reading = PmsetProbe(run=run).read()
    assert reading.level is C and reading.source == "pmset"
    args, kwargs = calls[0]
    assert args == ["pmset", "-g", "therm"]
    assert not kwargs.get("shell") and kwargs["capture_output"] and kwargs["timeout"] > 0


def test_pmset_probe_missing_command_or_silence_reads_nominal_with_a_reason():
    def missing(args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "pmset")

    def silent(args, **kwargs):
        return subprocess.CompletedProcess(args, 0, stdout="", stderr="")

    def slow(args, **kwargs):
        raise subprocess.TimeoutExpired(args, kwargs["timeout"])

    for run in (missing, silent, slow):
        reading = PmsetProbe(run=run).read()
        assert reading.level is N and reading.detail


# --------------------------------------------------------------------------- Foundation


class FakeProcessInfo:
    def __init__(self, state):
        self.state = state

    def thermalState(self):  # noqa: N802 - the Objective-C selector's name
        return self.state


@pytest.mark.parametrize("state, expected", [(0, N), (1, F), (2, S), (3, C), (7, C)])
def test_foundation_probe_maps_thermal_state(state, expected):
    assert FoundationProbe(FakeProcessInfo(state)).read().level is expected


def test_foundation_probe_load_uses_nsprocessinfo():
    info = FakeProcessInfo(2)
    fake = types.SimpleNamespace(NSProcessInfo=types.SimpleNamespace(processInfo=lambda: info))
    probe = FoundationProbe.load(lambda name: fake if name == "Foundation" else None)
    assert probe.read().level is S


# --------------------------------------------------------------------------- sysfs


def zone(root: Path, n: int, millideg: str, kind: str | None = None) -> None:
    d = root / f"thermal_zone{n}"
    d.mkdir(parents=True)
    (d / "temp").write_text(millideg + "\n")
    if kind:
        (d / "type").write_text(kind + "\n")


@pytest.mark.parametrize(
    "temps, expected",
    [
        (["45000", "52000"], N),
        (["69999"], N),
        (["70000"], F),
        (["40000", "85000"], S),
        (["96500", "30000"], C),
        (["-273000", "0", "garbage", "71000"], F),  # bad and disabled zones are skipped
    ],
)
def test_sysfs_probe_uses_the_hottest_zone(tmp_path, temps, expected):
    for i, t in enumerate(temps):
        zone(tmp_path, i, t)
    reading = SysfsProbe(70.0, 85.0, 95.0, root=tmp_path).read()
    assert reading.level is expected and reading.source == "sysfs"


def test_sysfs_probe_names_the_zone(tmp_path):
    zone(tmp_path, 0, "50000", "acpitz")
    zone(tmp_path, 3, "88000", "x86_pkg_temp")
    assert SysfsProbe(70, 85, 95, root=tmp_path).read().detail == "thermal_zone3 (x86_pkg_temp) at 88.0 °C"


def test_sysfs_probe_without_zones_reads_nominal(tmp_path):
    reading = SysfsProbe(70, 85, 95, root=tmp_path / "absent").read()
    assert reading.level is N and "no readable thermal zones" in reading.detail


# --------------------------------------------------------------------------- file


@pytest.mark.parametrize("text, expected", [("nominal", N), ("FAIR\n", F), ("  Serious \n", S), ("critical", C)])
def test_file_probe_reads_words(tmp_path, text, expected):
    f = tmp_path / "thermal"
    f.write_text(text)
    assert FileProbe(f).read().level is expected


def test_file_probe_missing_or_garbage_reads_serious_with_the_reason(tmp_path):
    missing = FileProbe(tmp_path / "nope").read()
    assert missing.level is S and "missing" in missing.detail
    garbage = tmp_path / "thermal"
    garbage.write_text("toasty")
    reading = FileProbe(garbage).read()
    assert reading.level is S and "not understood" in reading.detail
    (tmp_path / "dir").mkdir()
    assert FileProbe(tmp_path / "dir").read().level is S


def test_fixed_probe_can_be_changed():
    probe = FixedProbe("fair")
    assert probe.read().level is F
    probe.set(ThermalLevel.CRITICAL, "test")
    assert probe.read().level is C and probe.read().detail == "test"


# --------------------------------------------------------------------------- choice


def no_foundation(name):
    raise ImportError(f"No module named {name!r}")


def test_make_probe_none_and_file(tmp_path):
    assert make_thermal_probe(ThermalConfig(source="none")).read().level is N
    f = tmp_path / "state"
    f.write_text("critical")
    probe = make_thermal_probe(ThermalConfig(source=f"file:{f}"))
    assert isinstance(probe, FileProbe) and probe.read().level is C


def test_make_probe_auto_per_platform(tmp_path):
    cfg = ThermalConfig(source="auto", fair_celsius=60, serious_celsius=80, critical_celsius=90)
    zone(tmp_path, 0, "61000")
    linux = make_thermal_probe(cfg, platform="linux", sysfs_root=tmp_path)
    assert isinstance(linux, SysfsProbe) and linux.read().level is F  # configured thresholds are used

    fake = types.SimpleNamespace(NSProcessInfo=types.SimpleNamespace(processInfo=lambda: FakeProcessInfo(1)))
    assert isinstance(make_thermal_probe(cfg, platform="darwin", import_module=lambda n: fake), FoundationProbe)
    assert isinstance(make_thermal_probe(cfg, platform="darwin", import_module=no_foundation), PmsetProbe)
    assert make_thermal_probe(cfg, platform="win32").read().level is N


def test_available_memory_is_a_positive_byte_count():
    assert available_memory_bytes() > 0
