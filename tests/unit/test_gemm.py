"""Choosing torch's or oneDNN's matrix products: measured once per machine, stored, used by every layer."""

from __future__ import annotations

import json

import pytest
import torch
from whisper.model import Linear, ModelDimensions, Whisper

from daemon.engines import gemm

DIMS = ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
    n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1,
)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    model = Whisper(DIMS).eval()
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(std=0.01)  # whisper leaves it uninitialized (torch.empty)
    return model


class Timer:
    """Stands in for the clock: each call reports the next of the given timings."""

    def __init__(self, *timings: dict[str, float]) -> None:
        self.timings = list(timings)
        self.calls = 0

    def __call__(self, shapes):
        assert shapes == [(1500, 64, 256), (16, 64, 51864)]  # an encoder MLP layer; the vocabulary at batch 16
        self.calls += 1
        return self.timings.pop(0)


def test_onednn_only_when_clearly_faster():
    assert gemm.decide({"torch": 1.0, "onednn": 0.5}) == "onednn"
    assert gemm.decide({"torch": 1.0, "onednn": 0.9}) == "torch"  # within noise: keep torch's default
    assert gemm.decide({"torch": 1.0}) == "torch"  # oneDNN not usable here


def test_the_choice_is_measured_once_and_reused(model, tmp_path):
    timer = Timer({"torch": 10.0, "onednn": 4.0}, {"torch": 1.0, "onednn": 4.0})
    assert gemm.choose(model, 16, tmp_path, timer=timer) == "onednn"
    assert gemm.choose(model, 16, tmp_path, timer=timer) == "onednn"  # read back, not measured again
    assert timer.calls == 1
    (stored,) = tmp_path.glob("gemm-*.json")
    assert json.loads(stored.read_text())["choice"] == "onednn"
    # another batch size is other shapes: measured on its own
    assert gemm.choose(model, 8, tmp_path, timer=lambda shapes: {"torch": 1.0, "onednn": 4.0}) == "torch"
    assert len(list(tmp_path.glob("gemm-*.json"))) == 2


def test_a_damaged_record_is_measured_again_and_replaced(model, tmp_path):
    gemm.choose(model, 16, tmp_path, timer=Timer({"torch": 1.0, "onednn": 4.0}))
    (stored,) = tmp_path.glob("gemm-*.json")
    stored.write_text("{not json")
    assert gemm.choose(model, 16, tmp_path, timer=Timer({"torch": 10.0, "onednn": 4.0})) == "onednn"
    assert json.loads(stored.read_text())["choice"] == "onednn"


def test_a_worker_that_measured_at_the_same_time_takes_the_stored_choice(model, tmp_path, monkeypatch):
    """Two workers start together; the one that stores second uses the first one's choice."""
    first = Timer({"torch": 10.0, "onednn": 4.0})

    def racing(shapes):
        gemm.choose(model, 16, tmp_path, timer=first)  # the other worker stores its choice meanwhile
        return {"torch": 1.0, "onednn": 4.0}

    assert gemm.choose(model, 16, tmp_path, timer=racing) == "onednn"


def test_without_a_cache_folder_it_measures_every_time(model):
    timer = Timer({"torch": 10.0, "onednn": 4.0}, {"torch": 10.0, "onednn": 4.0})
    gemm.choose(model, 16, None, timer=timer)
    gemm.choose(model, 16, None, timer=timer)
    assert timer.calls == 2


def test_the_real_measurement_times_every_product_available(model):
    seconds = gemm.measure([(8, 16, 32)])
    assert set(seconds) <= {"torch", "onednn"} and "torch" in seconds
    assert all(s > 0 for s in seconds.values())


def test_every_layer_switches_and_computes_the_same(model):
    mel = torch.randn(1, 80, 3000)
    tokens = torch.tensor([[50257, 50362, 400, 500]])
    with torch.inference_mode():
        before = model(mel, tokens)
        gemm.use(model, "onednn")
        assert gemm.linear("onednn") is gemm.onednn_linear
        layers = [m for m in model.modules() if isinstance(m, Linear)]
        assert layers and all(type(m) is gemm.OneDnnLinear for m in layers)
        after = model(mel, tokens)
        gemm.use(model, "torch")
        assert all(type(m) is Linear for m in layers)
        assert gemm.linear("torch") is torch.nn.functional.linear
        assert not hasattr(model, "gemm")  # the choice is the engine's to keep, not the model's
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)
    assert before.argmax(-1).tolist() == after.argmax(-1).tolist()


def test_other_types_keep_their_own_products(model):
    layer = gemm.use(model, "onednn").encoder.blocks[0].mlp[0]
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = layer(x)  # whisper's Linear casts its weight to the input's type
    assert out.dtype == torch.bfloat16
