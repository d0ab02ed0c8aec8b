"""Choosing the engine (engines.loader.pick_engine), with the machine faked."""

from __future__ import annotations

import pytest

from daemon import doctor
from daemon.config import ModelConfig
from daemon.doctor import Status
from daemon.engines.loader import pick_engine


@pytest.mark.parametrize(
    "apple, installed, engine, why",
    [
        (True, True, "mlx", "Apple silicon with mlx-whisper installed"),
        (True, False, "openai-whisper", "mlx-whisper is not installed"),
        (False, True, "openai-whisper", "not a Mac with Apple silicon"),
        (False, False, "openai-whisper", "not a Mac with Apple silicon"),
    ],
)
def test_auto_is_mlx_on_apple_silicon_where_it_is_installed_and_openai_whisper_elsewhere(apple, installed, engine, why):
    choice = pick_engine("auto", apple=lambda: apple, mlx=lambda: installed)
    assert choice.engine == engine and why in choice.why


@pytest.mark.parametrize("name", ["openai-whisper", "mlx", "faster-whisper", "fake"])
def test_a_named_engine_is_taken_as_it_is_on_any_machine(name):
    assert pick_engine(name, apple=lambda: True, mlx=lambda: False).engine == name
    assert pick_engine(name, apple=lambda: False, mlx=lambda: True).engine == name


def test_auto_is_the_default():
    assert ModelConfig().engine == "auto"


def test_doctor_says_which_engine_runs_and_why():
    on_a_mac = pick_engine("auto", apple=lambda: True, mlx=lambda: True)
    check = doctor.check_engine(ModelConfig(), on_a_mac, installed=lambda: True)
    assert check.status is Status.OK and check.detail.startswith("mlx: Apple silicon")
    here = doctor.check_engine(ModelConfig(), pick_engine("auto", apple=lambda: False, mlx=lambda: True))
    assert here.status is Status.OK and here.detail.startswith("openai-whisper: not a Mac")
    missing = doctor.check_engine(ModelConfig(engine="mlx"), installed=lambda: False)
    assert missing.status is Status.FAIL and "pip install '.[mlx]'" in missing.fix


def test_mlx_device_is_the_gpu_where_metal_is_there_and_the_cpu_elsewhere():
    mlx = pytest.importorskip("daemon.engines.mlx", exc_type=ImportError)
    assert mlx.pick_device("auto", metal=lambda: True) == "mps"
    assert mlx.pick_device("mps", metal=lambda: True) == "mps"
    assert mlx.pick_device("cpu", metal=lambda: True) == "cpu"
    assert mlx.pick_device("auto", metal=lambda: False) == "cpu"
    assert mlx.pick_device("cuda", metal=lambda: True) == "cpu"
    assert [mlx.pick_precision(d, "auto") for d in ("mps", "cpu")] == ["fp16", "fp32"]
    assert mlx.pick_precision("mps", "bf16") == "fp16" and mlx.pick_precision("cpu", "fp16") == "fp16"
