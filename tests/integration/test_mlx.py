"""The MLX engine on MLX's CPU backend, with the real tiny.en on real speech.

MLX's CPU backend on Linux multiplies with a plain reference BLAS, so a 30 s window takes it
tens of seconds to encode: these tests decode few windows, in one batch where they can."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="MLX is not installed (pip install '.[mlx]')")
pytest.importorskip("mlx_whisper", reason="mlx-whisper is not installed (pip install '.[mlx]')")

import mlx.nn as nn  # noqa: E402
import torch  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_whisper.load_models import load_model  # noqa: E402

from daemon.audio import Vad, iter_chunks  # noqa: E402
from daemon.engines.mlx import MlxEngine  # noqa: E402
from daemon.engines.mlx_convert import mlx_folder, mlx_weights  # noqa: E402
from daemon.engines.models import load_checkpoint, resolve_checkpoint  # noqa: E402
from daemon.engines.openai_whisper import OpenAIWhisperEngine  # noqa: E402
from tests import speech  # noqa: E402

# two files: one of two sentences by two speakers, one of a single sentence
FILES = {"two.flac": ["ls_2412-153948-0001.flac", "ls_1988-24833-0001.flac"], "one.wav": ["ls_1221-135766-0002.wav"]}


@pytest.fixture(scope="module")
def checkpoint(model_cache) -> Path:
    return Path(resolve_checkpoint("tiny.en", model_cache))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[list, str]]:
    """Each file's chunks (VAD's, as the worker cuts them) and reference."""
    root = tmp_path_factory.mktemp("mlx")
    out = {}
    for name, clips in FILES.items():
        audio, reference = speech.concat(clips, gap=0.8)
        path = speech.write(root / name, audio)
        out[name] = (list(iter_chunks(path, vad=Vad(), key=name)), reference)
    return out


def test_conversion_keeps_every_weight_in_mlxs_layout_and_gives_whispers_output(checkpoint, tmp_path):
    torch_model = load_checkpoint(checkpoint)
    folder = mlx_folder(checkpoint, tmp_path, "fp32")
    assert mlx_folder(checkpoint, tmp_path, "fp32") == folder  # converted once, then found
    model = load_model(str(folder), dtype=mx.float32)
    loaded = dict(tree_flatten(model.parameters()))
    loaded.pop("alignment_heads")  # word timings' heads: an array on the model, not a weight
    converted = mlx_weights(torch_model.state_dict())
    assert set(loaded) == set(converted)
    assert all(tuple(loaded[k].shape) == converted[k].shape for k in loaded)
    conv = torch_model.state_dict()["encoder.conv1.weight"]
    assert tuple(loaded["encoder.conv1.weight"].shape) == (conv.shape[0], conv.shape[2], conv.shape[1])

    rng = np.random.default_rng(0)
    mel = rng.standard_normal((1, 80, 300)).astype(np.float32)  # (batch, mels, frames) as torch takes it
    with torch.no_grad():
        want = torch.nn.functional.gelu(torch_model.encoder.conv1(torch.from_numpy(mel))).numpy()
    got = np.array(nn.gelu(model.encoder.conv1(mx.array(mel.transpose(0, 2, 1)))))  # MLX: (batch, frames, mels)
    np.testing.assert_allclose(got.transpose(0, 2, 1), want, atol=2e-4)

    features = rng.standard_normal((2, 150, 384)).astype(np.float32)
    tokens = np.array([[50257, 50362, 50363], [50257, 50362, 50364]])
    with torch.no_grad():
        want = torch_model.decoder(torch.from_numpy(tokens), torch.from_numpy(features)).numpy()
    got = np.array(model.decoder(mx.array(tokens), mx.array(features))[0])
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)

    half = load_model(str(mlx_folder(checkpoint, tmp_path, "fp16")), dtype=mx.float16)
    assert all(v.dtype == mx.float16 for k, v in tree_flatten(half.parameters()) if k != "alignment_heads")


@pytest.fixture(scope="module")
def engine(checkpoint, model_cache):
    e = MlxEngine(checkpoint, device="auto", batch_size=8, name="tiny.en", cache_dir=model_cache)
    yield e
    e.close()


@pytest.mark.timeout(600)  # two 30 s windows on MLX's CPU backend: under a minute alone, minutes on a busy machine
def test_chunks_of_several_files_in_one_batch_say_what_the_openai_whisper_engine_says(engine, checkpoint, files):
    assert (engine.info.name, engine.info.device, engine.info.precision) == ("mlx-whisper", "cpu", "fp32")
    chunks = [c for chunks, _ in files.values() for c in chunks]
    assert len({c.key for c in chunks}) == 2 and len(chunks) <= engine.batch_size  # one batch, two files
    results = engine.transcribe(chunks, language=None, task="transcribe")
    reference = OpenAIWhisperEngine(checkpoint, device="cpu", batch_size=8, name="tiny.en")
    expected = reference.transcribe(chunks, language=None, task="transcribe")
    reference.close()

    assert [r.index for r in results] == [c.index for c in chunks]
    for chunk, r in zip(chunks, results):
        assert (r.start, r.end, r.language) == (chunk.start, chunk.end, "en")
        assert r.segments and all(chunk.start <= s.start <= s.end <= chunk.end for s in r.segments)
        assert [s.start for s in r.segments] == sorted(s.start for s in r.segments)
    for name, (file_chunks, ref) in files.items():
        mine = [r for c, r in zip(chunks, results) if c.key == name]
        theirs = [r for c, r in zip(chunks, expected) if c.key == name]
        mlx_wer = speech.wer(ref, " ".join(s.text for r in mine for s in r.segments))
        openai_wer = speech.wer(ref, " ".join(s.text for r in theirs for s in r.segments))
        assert abs(mlx_wer - openai_wer) <= 0.01, (name, mlx_wer, openai_wer)
        # the same segments, to within a timestamp step or two
        got = [(s.start, s.end) for r in mine for s in r.segments]
        want = [(s.start, s.end) for r in theirs for s in r.segments]
        assert len(got) == len(want) and np.allclose(got, want, atol=0.1), (got, want)
