import dataclasses
import os
import re
import textwrap
import typing
from pathlib import Path

import pytest
import yaml

from daemon import config as config_mod
from daemon.config import load, parse
from daemon.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(textwrap.dedent(text))
    os.chmod(p, 0o644)
    return p


def test_minimal_config_resolves_paths_relative_to_the_file(tmp_path):
    cfg = load(write(tmp_path, """
        folders:
          - inbox: in
    """))
    f = cfg.folders[0]
    assert f.inbox == tmp_path / "in"
    assert f.output == tmp_path / "output"
    assert f.formats == ("txt", "srt", "vtt", "json")
    assert cfg.database == f"sqlite:///{tmp_path}/state/queue.db"
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.model.name == "base" and cfg.model.device == "auto"
    assert cfg.model.fit_windows is True


EXAMPLE = Path(__file__).parents[2] / "config.example.yaml"
NOT_SETTINGS = {"path", "raw"}  # Config fields filled in by load(), not read from the file


def test_example_config_loads():
    cfg = load(EXAMPLE)
    assert cfg.folders[0].output.name == "outbox"


def setting_keys(cls: type, prefix: str = "") -> set[str]:
    """Every key the config file may hold, read off the dataclasses: nested dataclasses are
    sections, a tuple of dataclasses is a list of entries (``folders.inbox``)."""
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in NOT_SETTINGS:
            continue
        kind = hints[f.name]
        inner = [a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(kind):
            keys |= setting_keys(kind, f"{prefix}{f.name}.")
        elif typing.get_origin(kind) is tuple and inner:
            keys |= setting_keys(inner[0], f"{prefix}{f.name}.")
        else:
            keys.add(prefix + f.name)
    return keys


def document_keys(node: object, prefix: str = "") -> set[str]:
    """The dotted keys of a loaded YAML document's leaves (an empty list is a leaf); list entries
    share their list's prefix."""
    if isinstance(node, list) and node:
        return set().union(*(document_keys(item, prefix) for item in node))
    if isinstance(node, dict) and node:
        return set().union(*(document_keys(v, f"{prefix}{k}.") for k, v in node.items()))
    return {prefix.rstrip(".")}


def test_example_config_documents_every_setting(tmp_path):
    """Each setting is in config.example.yaml, as a key or as a commented-out ``# key: example``
    line; and the commented-out examples are valid settings with valid values."""
    text = EXAMPLE.read_text()
    # a commented-out key starts where keys start (at most three levels in), not after a value
    uncommented = re.sub(r"(?m)^( {0,6})# ([a-z_]+:\s)", r"\1\2", text)
    data = yaml.safe_load(uncommented)
    missing = setting_keys(config_mod.Config) - document_keys(data)
    assert not missing, f"config.example.yaml does not document: {sorted(missing)}"
    parse(data, tmp_path / "config.yaml", uncommented)  # refuses unknown keys and bad values


def test_example_config_shows_the_defaults():
    """The values the example sets are the dataclasses' defaults, except the folder names it suggests."""
    cfg = load(EXAMPLE)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            assert value == type(value)(), f"config.example.yaml's {f.name} section differs from its defaults"
    assert (cfg.notify, cfg.label) == (config_mod.Config.notify, config_mod.Config.label)
    folder = cfg.folders[0]
    for f in dataclasses.fields(folder):
        if f.default is not dataclasses.MISSING:
            assert getattr(folder, f.name) == f.default, f"config.example.yaml's folders.{f.name} is not its default"


def test_tilde_expands(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load(write(tmp_path, """
        folders:
          - inbox: ~/Recordings
            output: ~/Transcripts
    """))
    assert cfg.folders[0].inbox == tmp_path / "Recordings"
    assert cfg.folders[0].output == tmp_path / "Transcripts"


@pytest.mark.parametrize(
    "body, key, fragment",
    [
        ("model: {device: gpu}\nfolders: [{inbox: in}]", "model.device", "one of auto, cpu, mps, cuda"),
        ("folders: [{inbox: in, formats: [txt, docx]}]", "folders.0.formats", "txt, srt, vtt, json"),
        ("folders: [{inbox: in, task: summarize}]", "folders.0.task", "transcribe, translate"),
        ("folders: []", "folders", "non-empty list"),
        ("model: {batch_size: 0}\nfolders: [{inbox: in}]", "model.batch_size", "at least 1"),
        ("schedule: {windows: ['10pm-7am']}\nfolders: [{inbox: in}]", "schedule.windows", "HH:MM-HH:MM"),
        ("folders: [{inbox: in}]\nnotify: yes please", "notify", "true or false"),
        ("model: {fit_windows: sometimes}\nfolders: [{inbox: in}]", "model.fit_windows", "true or false"),
        ("folders: [{inbox: in, chinese: mandarin}]", "folders.0.chinese", "as-is, simplified, traditional"),
        ("folders: [{inbox: in, prompt: ''}]", "folders.0.prompt", "a non-empty string"),
        ("folders: [{inbox: in, highlight_words: true}]", "folders.0.highlight_words", "together with words: true"),
        ("folders: [{inbox: in, max_line_width: 0}]", "folders.0.max_line_width", "auto, or a whole number"),
        ("folders: [{inbox: in, max_line_count: 1.5}]", "folders.0.max_line_count", "a whole number of at least 1"),
        ("folders: [{inbox: in, language: [zh, auto2]}]", "folders.0.language", "a list of them to choose among"),
        ("folders: [{inbox: in, language: []}]", "folders.0.language", "auto, a language Whisper knows"),
        ("folders: [{inbox: in, language: xx}]", "folders.0.language", "a code such as en, de, zh"),
        ("folders: [{inbox: in, language: Klingon}]", "folders.0.language", "its English name"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(tmp_path, body, key, fragment):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, body))
    msg = str(err.value)
    assert f"'{key}'" in msg and fragment in msg


@pytest.mark.parametrize(
    "value, read",
    [("auto", "auto"), ("DE", "de"), ("German", "de"), ("[zh, en]", ("zh", "en")), ("[de]", "de"), ("[en, EN, english, de]", ("en", "de"))],
)
def test_language_is_auto_a_code_or_a_list_to_choose_among(tmp_path, value, read):
    assert load(write(tmp_path, f"folders: [{{inbox: in, language: {value}}}]")).folders[0].language == read


def test_unknown_key_is_refused_with_its_line(tmp_path):
    with pytest.raises(ConfigError, match=r"'folders\.0\.outbox' \(line 4\) is not a known setting"):
        load(write(tmp_path, """
            folders:
              - inbox: in
                outbox: out
        """))


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        load(write(tmp_path, "folders:\n  - inbox: in\n  output: [unclosed\n"))


@pytest.mark.parametrize("which", ["output", "archive", "failed"])
def test_a_folder_inside_the_inbox_is_refused(tmp_path, which):
    with pytest.raises(ConfigError, match=f"folders.0.{which}.*inside the inbox"):
        load(write(tmp_path, f"folders:\n  - inbox: in\n    {which}: in/done\n"))


def test_an_output_inside_another_folders_inbox_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="inside the inbox of folders.0"):
        load(write(tmp_path, "folders:\n  - inbox: a\n  - inbox: b\n    output: a/out\n"))


def test_a_config_others_can_write_is_refused(tmp_path):
    p = write(tmp_path, "folders: [{inbox: in}]\n")
    os.chmod(p, 0o666)
    with pytest.raises(ConfigError, match="can be changed by other users"):
        load(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml")


def test_config_is_frozen(tmp_path):
    cfg = parse({"folders": [{"inbox": "in"}]}, tmp_path / "c.yaml")
    with pytest.raises(AttributeError):
        cfg.database = "x"  # type: ignore[misc]


def test_absent_keys_take_the_dataclass_defaults(tmp_path):
    cfg = parse({"folders": [{"inbox": "in"}]}, tmp_path / "config.yaml")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            assert value == type(value)()
    assert cfg.log_dir is None and cfg.notify is config_mod.Config.notify and cfg.label == config_mod.Config.label
    folder = cfg.folders[0]
    for f in dataclasses.fields(folder):
        if f.default is not dataclasses.MISSING:
            assert getattr(folder, f.name) == f.default, f.name


def test_output_keys_per_folder(tmp_path):
    cfg = load(write(tmp_path, """
        folders:
          - inbox: a
          - inbox: b
            chinese: Traditional
            prompt: Anna Kowalczyk, Kubernetes, OKR
            words: true
            highlight_words: true
            max_line_width: 30
            max_line_count: 1
          - inbox: c
            max_line_width: auto
    """))
    a, b, c = cfg.folders
    assert (a.chinese, a.prompt, a.words, a.max_line_width, a.max_line_count, a.highlight_words) == ("as-is", None, False, None, 2, False)
    assert (b.chinese, b.prompt, b.words, b.max_line_width, b.max_line_count, b.highlight_words) == (
        "traditional", "Anna Kowalczyk, Kubernetes, OKR", True, 30, 1, True)
    assert c.max_line_width is None
