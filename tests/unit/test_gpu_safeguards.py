"""openai-whisper and MLX on a GPU, made safe: the known answer at load, the alignment heads and
word timings kept off MPS. The GPU is faked: nothing here has one."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from daemon.engines import known_answer
from daemon.engines.base import EngineInfo
from daemon.engines.fake import FakeEngine
from daemon.engines.loader import checked
from daemon.engines.torch_load import to_mps


@pytest.mark.parametrize(
    "said, wrong",
    [
        ("The two stray kittens.", False),
        ("the two stray kitten", False),  # one word in four off
        ("!", True),  # what large-v3 on MPS has said
        ("", True),
        ("The two.", True),
        ("you you you you you you", True),
    ],
)
def test_the_known_answer_is_the_clips_words(said, wrong):
    assert known_answer.wrong(said) is wrong


def test_the_clip_is_a_second_or_two_of_speech():
    audio = known_answer.clip()
    assert 1.0 <= len(audio) / 16000 <= 2.0 and abs(audio).max() > 0.1


class Gpu(FakeEngine):
    """The fake engine on a faked GPU, saying ``said`` for every chunk."""

    def __init__(self, said: str | None = None) -> None:
        super().__init__("tiny.en")
        self.info = EngineInfo("mlx-whisper", "tiny.en", "mps", "fp16")
        self.said = said

    def transcribe(self, chunks, *, language, task):
        results = super().transcribe(chunks, language=language, task=task)
        if self.said is None:
            return results
        return [replace(r, segments=tuple(replace(s, text=self.said) for s in r.segments)) for r in results]


def test_a_gpu_that_gets_the_known_answer_wrong_gives_way_to_the_cpu_and_says_why():
    gpu = Gpu()  # says "known_answer, part 1."
    cpu = FakeEngine("tiny.en")
    engine = checked(gpu, lambda: cpu)
    assert engine is cpu and gpu.closed
    assert engine.info.device == "cpu"
    assert "known clip" in engine.info.note and '"known_answer, part 1."' in engine.info.note and "CPU" in engine.info.note


def test_a_gpu_that_fails_on_the_clip_gives_way_to_the_cpu():
    class Broken(Gpu):
        def transcribe(self, chunks, *, language, task):
            raise RuntimeError("MPS backend out of memory")

    engine = checked(Broken(), lambda: FakeEngine("tiny.en"))
    assert engine.info.device == "cpu" and "MPS backend out of memory" in engine.info.note


def test_a_gpu_that_gets_it_right_is_kept_and_the_cpu_is_not_checked():
    gpu = Gpu("The two stray kittens.")
    assert checked(gpu, lambda: pytest.fail("the CPU was built")) is gpu and gpu.info.note is None
    cpu = FakeEngine("tiny.en")
    assert checked(cpu, lambda: pytest.fail("built again"), check=lambda e: pytest.fail("checked")) is cpu


class Moves(torch.nn.Module):
    """A model with whisper's sparse alignment-heads mask, recording how it was moved."""

    def __init__(self, fails: bool = False) -> None:
        super().__init__()
        self.register_buffer("alignment_heads", torch.eye(4, dtype=torch.bool).to_sparse(), persistent=False)
        self.fails = fails
        self.moves: list[tuple[str, bool]] = []

    def to(self, device):  # type: ignore[override]
        self.moves.append((device, self.alignment_heads.is_sparse))
        if self.fails and device == "mps":
            raise RuntimeError("Could not run 'aten::_to_dense' with arguments from the 'SparseMPS' backend")
        return self


def test_the_alignment_heads_are_dense_before_the_model_moves_to_mps():
    model = Moves()
    device, moved = to_mps(model)
    assert (device, moved) == ("mps", model)
    assert model.moves == [("mps", False)]
    assert torch.equal(model.alignment_heads, torch.eye(4, dtype=torch.bool))


def test_a_model_that_cannot_move_to_mps_stays_on_the_cpu():
    model = Moves(fails=True)
    assert to_mps(model)[0] == "cpu"


def test_word_timings_of_a_model_on_mps_are_aligned_on_a_cpu_copy(monkeypatch):
    from whisper.model import ModelDimensions, Whisper

    from daemon.engines import words
    from daemon.jobs import Segment

    dims = ModelDimensions(n_mels=80, n_audio_ctx=10, n_audio_state=8, n_audio_head=2, n_audio_layer=1,
                           n_vocab=60, n_text_ctx=6, n_text_state=8, n_text_head=2, n_text_layer=2)

    class OnMps(Whisper):  # a Whisper whose tensors say they are on Apple's GPU
        @property
        def device(self):
            return torch.device("mps")

    model = OnMps(dims)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    heads = torch.zeros(2, 2, dtype=torch.bool)
    heads[1, 0] = True
    model.register_buffer("alignment_heads", heads, persistent=False)  # dense, as moved to MPS
    seen = []
    monkeypatch.setattr(words, "add_word_timestamps", lambda **kw: seen.append(kw))
    features = torch.zeros(10, 8, dtype=torch.float16)
    pieces = [(Segment(1.0, 2.0, "hi"), [5, 6])]
    words.align(model, None, pieces, features, 20, 1.0, 3.0)
    words.align(model, None, pieces, features, 20, 1.0, 3.0)
    first, second = seen
    copy = first["model"].model
    assert copy is second["model"].model is not model  # one CPU copy, made once
    assert next(copy.parameters()).device.type == "cpu" and copy.alignment_heads.is_sparse
    assert first["model"].alignment_heads.is_sparse
    assert torch.equal(copy.alignment_heads.to_dense(), heads)
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), model.state_dict().values()))
    assert first["mel"].dtype == torch.float32 and first["mel"].device.type == "cpu"
