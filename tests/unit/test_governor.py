import dataclasses
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from daemon.config import Config, MemoryConfig, ModelConfig, PowerConfig, ScheduleConfig, ThermalConfig, parse
from daemon.governor import (
    GIB,
    MIB,
    Decision,
    Governor,
    GovernorInputs,
    MemoryEstimate,
    decide,
    estimate_memory,
)
from daemon.probes import FileProbe, FixedProbe, PmsetProbe, ThermalLevel

N, F, S, C = ThermalLevel.NOMINAL, ThermalLevel.FAIR, ThermalLevel.SERIOUS, ThermalLevel.CRITICAL
MON_NOON = datetime(2024, 1, 1, 12, 0)  # a Monday
MON_NIGHT = datetime(2024, 1, 1, 23, 0)

BASE = GovernorInputs(now=MON_NIGHT, available_bytes=8 * GIB, max_concurrency=2, job_bytes=500 * MIB,
                      model_bytes=1 * GIB, windows=("22:00-07:00",))


def case(**changes) -> GovernorInputs:
    return dataclasses.replace(BASE, **changes)


# --------------------------------------------------------------------------- policy table


@pytest.mark.parametrize(
    "inputs, expected",
    [
        # thermal
        (case(), Decision(2)),
        (case(running=1), Decision(1)),
        (case(running=2), Decision(0, "busy: 2 of 2 jobs running")),
        (case(thermal=F), Decision(1)),
        (case(thermal=F, running=1, thermal_since=datetime(2024, 1, 1, 22, 40)),
         Decision(0, "thermal fair since 22:40: 1 job at a time")),
        (case(thermal=F, on_fair=0), Decision(0, "waiting for the Mac to cool: thermal fair")),
        (case(thermal=S, thermal_since=datetime(2024, 1, 1, 14, 2)),
         Decision(0, "paused: thermal serious since 14:02", pause_running=True)),
        (case(thermal=C, thermal_detail="thermal_zone0 at 97.0 °C"),
         Decision(0, "paused: thermal critical (thermal_zone0 at 97.0 °C)", pause_running=True)),
        # cooldown: back below serious, but not for long enough
        (case(thermal=N, hot_level=S, seconds_since_hot=30, cooldown_seconds=120),
         Decision(0, "paused: cooling down after thermal serious, resuming at 23:02", pause_running=True)),
        (case(thermal=F, hot_level=C, seconds_since_hot=119.9, cooldown_seconds=120),
         Decision(0, "paused: cooling down after thermal critical, resuming at 23:01", pause_running=True)),
        (case(thermal=N, hot_level=S, seconds_since_hot=120, cooldown_seconds=120), Decision(2)),
        # thermal is not bypassed by immediate folders or --now
        (case(thermal=S, immediate_waiting=True, ignore_windows=True, now=MON_NOON),
         Decision(0, "paused: thermal serious", pause_running=True)),
        # windows gate starts only; immediate folders and --now bypass them
        (case(now=MON_NOON), Decision(0, "waiting for window 22:00")),
        (case(now=MON_NOON, immediate_waiting=True), Decision(2, "waiting for window 22:00", immediate_only=True)),
        (case(now=MON_NOON, ignore_windows=True), Decision(2)),
        (case(now=MON_NOON, days=("fri",)), Decision(0, "waiting for window 22:00 on Friday")),
        (case(now=MON_NOON, windows=()), Decision(2)),
        # AC power
        (case(only_on_ac_power=True, on_ac_power=False),
         Decision(0, "waiting for AC power", pause_running=True)),
        (case(only_on_ac_power=True, on_ac_power=False, immediate_waiting=True, ignore_windows=True),
         Decision(0, "waiting for AC power", pause_running=True)),
        (case(only_on_ac_power=True, on_ac_power=None), Decision(2)),  # cannot tell: does not block
        (case(only_on_ac_power=True, on_ac_power=True), Decision(2)),
        (case(only_on_ac_power=False, on_ac_power=False), Decision(2)),
        # idle
        (case(only_when_idle_minutes=10, idle_seconds=120),
         Decision(0, "waiting until the Mac has been idle 10 min")),
        (case(only_when_idle_minutes=10, idle_seconds=600), Decision(2)),
        (case(only_when_idle_minutes=2.5, idle_seconds=0), Decision(0, "waiting until the Mac has been idle 2.5 min")),
        (case(only_when_idle_minutes=10, idle_seconds=None), Decision(2)),
        (case(only_when_idle_minutes=10, idle_seconds=5, ignore_windows=True), Decision(2)),
        (case(only_when_idle_minutes=10, idle_seconds=5, immediate_waiting=True),
         Decision(2, "waiting until the Mac has been idle 10 min", immediate_only=True)),
        # memory: the floor must survive every start, the first one included
        (case(available_bytes=int(1.4 * GIB)), Decision(0, "waiting for memory: 1.4 GB free, 2 GB floor")),
        (case(available_bytes=3 * GIB),
         Decision(0, "waiting for memory: 3 GB free; a job needs about 1.5 GB and 2 GB must stay free")),
        (case(available_bytes=int(2.6 * GIB), model_loaded=True), Decision(1)),  # weights already resident
        (case(available_bytes=3 * GIB, model_loaded=True), Decision(2)),
        (case(available_bytes=int(3.6 * GIB)), Decision(1)),  # room for model + one job, not two
        (case(available_bytes=4 * GIB), Decision(2)),
        (case(available_bytes=int(2.4 * GIB), running=1), Decision(0,
         "waiting for memory: 2.4 GB free; a job needs about 0.5 GB and 2 GB must stay free")),
        (case(available_bytes=None), Decision(0, "waiting for memory: free memory could not be read")),
        (case(available_bytes=int(1.4 * GIB), now=MON_NOON, immediate_waiting=True),
         Decision(0, "waiting for memory: 1.4 GB free, 2 GB floor", immediate_only=True)),
        (case(max_concurrency=4, available_bytes=10 * GIB, job_bytes=0, model_bytes=0), Decision(4)),
    ],
)
def test_decide(inputs, expected):
    assert decide(inputs) == expected


def test_gates_order_thermal_before_power_before_window_before_memory():
    worst = case(now=MON_NOON, thermal=S, only_on_ac_power=True, on_ac_power=False, available_bytes=0)
    assert decide(worst).reason.startswith("paused: thermal")
    assert decide(dataclasses.replace(worst, thermal=N)).reason == "waiting for AC power"
    assert decide(dataclasses.replace(worst, thermal=N, on_ac_power=True)).reason == "waiting for window 22:00"
    assert decide(dataclasses.replace(worst, thermal=N, on_ac_power=True, now=MON_NIGHT)).reason.startswith(
        "waiting for memory")


# --------------------------------------------------------------------------- estimate


@pytest.mark.parametrize(
    "name, precision, params",
    [
        ("tiny.en", "fp32", 39_000_000),
        ("base", "fp16", 74_000_000),
        ("small.en", "int8", 244_000_000),
        ("medium", "fp32", 769_000_000),
        ("large-v3", "fp16", 1_550_000_000),
        ("large-v3-turbo", "fp16", 809_000_000),
        ("turbo", "int8", 809_000_000),
        ("/models/whisper-small-ct2", "fp32", 244_000_000),
        ("my-own-model", "fp32", 1_550_000_000),  # unknown: counted as large
    ],
)
def test_estimate_weights(name, precision, params):
    per = {"fp32": 4, "fp16": 2, "int8": 1}[precision]
    assert estimate_memory(name, precision, 1).model_bytes == params * per


def test_estimate_auto_precision_counts_as_fp32_and_batch_grows_the_working_set():
    assert estimate_memory("tiny", "auto").model_bytes == estimate_memory("tiny", "fp32").model_bytes
    one, eight = estimate_memory("tiny", "fp16", 1), estimate_memory("tiny", "fp16", 8)
    assert eight.job_bytes - one.job_bytes == 7 * 60 * MIB
    wide = estimate_memory("large-v3", "fp16", 1)
    assert wide.job_bytes > one.job_bytes  # wider model, bigger working set


# --------------------------------------------------------------------------- the Governor object


class FakeClock:
    def __init__(self):
        self.t = 1000.0
        self.wall = MON_NIGHT

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.wall += timedelta(seconds=seconds)


def make_config(**sections) -> Config:
    defaults = dict(
        path=None, database="sqlite:///:memory:", state_dir=Path("/tmp/state"), log_dir=None,
        model=ModelConfig(name="tiny.en", precision="fp16", batch_size=4), folders=(),
        schedule=ScheduleConfig(windows=("22:00-07:00",), max_concurrency=2),
        thermal=ThermalConfig(cooldown_seconds=120, on_fair=1),
    )
    defaults.update(sections)
    return Config(**defaults)


def make_governor(probe, clock: FakeClock, config: Config | None = None, **kw) -> Governor:
    kw.setdefault("memory_probe", lambda: 8 * GIB)
    return Governor(config or make_config(), thermal_probe=probe, clock=lambda: clock.t, now=lambda: clock.wall,
                    thermal_ttl_seconds=0, **kw)


def paused_now(gov: Governor) -> tuple[bool, str | None]:
    """Whether a running job would be told to pause now, and why (what the service sends a worker)."""
    decision = gov.decide(running=1, model_loaded=True)
    return (True, decision.reason) if decision.pause_running else (False, None)


def test_governor_pauses_on_serious_and_resumes_only_after_cooldown():
    clock, probe = FakeClock(), FixedProbe(N)
    gov = make_governor(probe, clock)
    assert gov.decide(running=0).slots == 2

    clock.advance(60)  # 23:01
    probe.set(S)
    assert gov.decide(running=1) == Decision(0, "paused: thermal serious since 23:01", pause_running=True)

    clock.advance(30)
    probe.set(N)  # cooled, but only just
    paused, why = paused_now(gov)
    assert paused and why == "paused: cooling down after thermal serious, resuming at 23:03"
    clock.advance(89)  # 119 s after the last serious reading
    assert paused_now(gov)[0]
    probe.set(F)  # wobbling at fair does not restart the cooldown...
    clock.advance(1)
    assert paused_now(gov) == (False, None)
    assert gov.decide(running=0).slots == 1  # ...and fair allows on_fair jobs
    probe.set(C)  # a new spell
    assert gov.decide(running=0).reason == "paused: thermal critical since 23:03"


def test_governor_cooldown_tracks_the_last_hot_reading_not_the_first():
    clock, probe = FakeClock(), FixedProbe(S)
    gov = make_governor(probe, clock)
    gov.decide(0)
    clock.advance(600)  # still serious ten minutes later
    gov.decide(0)
    probe.set(N)
    clock.advance(60)
    assert gov.decide(0).pause_running  # 60 s after the last hot reading
    clock.advance(60)
    assert gov.decide(0) == Decision(2)


def test_governor_reads_the_thermal_probe_at_most_once_per_ttl():
    class CountingProbe(FixedProbe):
        reads = 0

        def read(self):
            CountingProbe.reads += 1
            return super().read()

    clock, probe = FakeClock(), CountingProbe(N)
    gov = Governor(make_config(), thermal_probe=probe, memory_probe=lambda: 8 * GIB, clock=lambda: clock.t,
                   now=lambda: clock.wall, thermal_ttl_seconds=5)
    gov.decide(0)
    paused_now(gov)
    assert CountingProbe.reads == 1
    clock.advance(5)
    gov.decide(0)
    assert CountingProbe.reads == 2


def test_governor_rereads_cheap_probes_at_every_boundary_and_pmset_every_few_seconds(tmp_path):
    state = tmp_path / "state"
    state.write_text("nominal")
    clock = FakeClock()
    gov = Governor(make_config(), thermal_probe=FileProbe(state), memory_probe=lambda: 8 * GIB,
                   clock=lambda: clock.t, now=lambda: clock.wall)
    assert paused_now(gov) == (False, None)
    state.write_text("serious")
    assert paused_now(gov)[0]  # no time passed: the file is read again

    runs = []

    def pmset(argv, **kw):
        runs.append(argv)
        return subprocess.CompletedProcess(argv, 0, "Note: No thermal warning level has been recorded\n", "")

    gov = Governor(make_config(), thermal_probe=PmsetProbe(pmset), memory_probe=lambda: 8 * GIB,
                   clock=lambda: clock.t, now=lambda: clock.wall)
    paused_now(gov)
    gov.decide(0)
    assert len(runs) == 1
    clock.advance(5)
    paused_now(gov)
    assert len(runs) == 2


def test_governor_with_a_file_probe(tmp_path):
    clock = FakeClock()
    state = tmp_path / "thermal"
    gov = make_governor(FileProbe(state), clock)
    d = gov.decide(0)
    assert d.pause_running and d.reason == f"paused: thermal serious since 23:00 (thermal file {state} is missing)"
    state.write_text("nominal\n")
    clock.advance(121)
    assert gov.decide(0) == Decision(2)
    state.write_text("fair")
    clock.advance(1)
    assert gov.decide(1) == Decision(0, "thermal fair since 23:02: 1 job at a time")


def test_governor_windows_immediate_and_run_now():
    clock = FakeClock()
    clock.wall = MON_NOON
    gov = make_governor(FixedProbe(N), clock)
    assert gov.decide(0) == Decision(0, "waiting for window 22:00")
    assert gov.decide(0, immediate_waiting=True) == Decision(2, "waiting for window 22:00", immediate_only=True)
    assert gov.decide(0, ignore_windows=True) == Decision(2)


def test_governor_memory_and_model_loaded():
    clock = FakeClock()
    est = MemoryEstimate(model_bytes=2 * GIB, job_bytes=1 * GIB)
    free = {"bytes": 4 * GIB}
    gov = make_governor(FixedProbe(N), clock, memory_probe=lambda: free["bytes"], estimate=est)
    assert gov.decide(0).reason == "waiting for memory: 4 GB free; a job needs about 3 GB and 2 GB must stay free"
    assert gov.decide(0, model_loaded=True) == Decision(2)  # only the working sets are new: 2 x 1 GB fit
    assert gov.decide(1) == Decision(1)  # running > 0: the model is loaded
    free["bytes"] = 1 * GIB
    assert gov.decide(1).reason == "waiting for memory: 1 GB free, 2 GB floor"


def test_governor_uses_the_configured_floor_and_estimate():
    clock = FakeClock()
    cfg = make_config(memory=MemoryConfig(floor_gb=6))
    gov = make_governor(FixedProbe(N), clock, cfg, memory_probe=lambda: 7 * GIB)
    assert gov.estimate == estimate_memory("tiny.en", "fp16", 4)
    assert gov.decide(0).slots == 2
    gov = make_governor(FixedProbe(N), clock, cfg, memory_probe=lambda: int(6.1 * GIB))
    assert gov.decide(0).reason.endswith("6 GB must stay free")


def test_governor_power_and_idle_callables():
    clock = FakeClock()
    cfg = make_config(power=PowerConfig(only_on_ac_power=True, only_when_idle_minutes=10))
    power = {"ac": False, "idle": 30.0}
    gov = make_governor(FixedProbe(N), clock, cfg, on_ac_power=lambda: power["ac"], idle_seconds=lambda: power["idle"])
    assert paused_now(gov) == (True, "waiting for AC power")
    power["ac"] = True
    assert paused_now(gov) == (False, None)
    assert gov.decide(0).reason == "waiting until the Mac has been idle 10 min"
    power["idle"] = 601.0
    assert gov.decide(0) == Decision(2)


def test_governor_treats_failing_probes_conservatively():
    class Broken:
        def read(self):
            raise RuntimeError("sensor fell off")

    def no_memory():
        raise OSError("no /proc")

    clock = FakeClock()
    gov = make_governor(Broken(), clock)
    d = gov.decide(0)
    assert d.pause_running and "thermal probe failed: sensor fell off" in d.reason
    gov = make_governor(FixedProbe(N), clock, memory_probe=no_memory)
    assert gov.decide(0).reason == "waiting for memory: free memory could not be read"


def test_governor_from_a_parsed_config(tmp_path):
    cfg = parse({
        "folders": [{"inbox": str(tmp_path / "inbox")}],
        "schedule": {"windows": ["22:00-07:00"], "days": ["fri"], "max_concurrency": 3},
        "thermal": {"source": "none", "on_fair": 2},
    })
    clock = FakeClock()  # a Monday night: not Friday
    gov = make_governor(FixedProbe(F), clock, cfg)
    assert gov.decide(0).reason == "waiting for window 22:00 on Friday"
    clock.advance(4 * 86400)  # Friday 23:00
    assert gov.decide(0) == Decision(2)
    assert gov.reading.level is F


def test_memory_an_engine_holds_on_a_gpu_counts_in_the_estimate_and_blocks_a_start_it_would_not_fit():
    """On a GPU the model's memory is not in any RSS: the engine's own figure (MLX's active
    memory, torch's MPS allocation) stands for the weights once it is larger than their estimate."""
    clock = FakeClock()
    cfg = make_config(memory=MemoryConfig(floor_gb=2.0))
    gov = make_governor(FixedProbe(N), clock, cfg, memory_probe=lambda: 4 * GIB)
    weights = gov.estimate.model_bytes
    assert gov.decide(running=0, ignore_windows=True, model_loaded=False).slots >= 1
    gov.observe_engine(None)  # on the CPU: no figure, the estimate stands
    assert gov.model_bytes == weights
    gov.observe_engine(weights // 2)  # less than the estimate: the estimate stands
    assert gov.model_bytes == weights
    gov.observe_engine(3 * GIB)
    assert gov.inputs(running=0).model_bytes == 3 * GIB
    decision = gov.decide(running=0, ignore_windows=True, model_loaded=False)
    assert decision.slots == 0 and decision.blocked_by == "memory"


def test_a_worker_tells_of_its_engine_with_the_memory_it_holds_on_a_gpu():
    from daemon.engines.base import EngineInfo
    from daemon.engines.fake import FakeEngine
    from daemon.procs import engine_status

    engine = FakeEngine("tiny.en")
    assert engine_status(engine) == {"name": "fake", "model": "tiny.en", "device": "cpu", "precision": "fp32",
                                     "note": None, "gpu_memory_bytes": None}
    engine.info = EngineInfo("mlx-whisper", "tiny.en", "mps", "fp16", note=None)
    engine.memory_bytes = lambda: 123 * MIB
    assert engine_status(engine)["gpu_memory_bytes"] == 123 * MIB
    engine.memory_bytes = lambda: 1 / 0  # a figure for status is never worth a failure
    assert engine_status(engine)["gpu_memory_bytes"] is None
