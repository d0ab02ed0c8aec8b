"""The engines on real speech, with the bundled tiny.en converted offline."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import whisper

from daemon.audio import SAMPLE_RATE, Chunk, Vad, iter_chunks
from daemon.config import ModelConfig
from daemon.engines.faster_whisper import FasterWhisperEngine
from daemon.engines.hardware import pick_device, pick_precision
from daemon.engines.loader import load_engine
from daemon.engines.models import bundled_ct2_dir, resolve_checkpoint
from daemon.engines.openai_whisper import OpenAIWhisperEngine
from daemon.engines.threads import torch_threads
from daemon.engines.transcribing import parse_window, token_limit
from daemon.errors import ModelError
from tests import speech

NAMES = [
    "ls_1272-141231-0002.flac",
    "ls_2412-153948-0001.flac",
    "ls_1988-24833-0001.flac",
    "ls_61-70968-0000.flac",
    "ls_3752-4944-0000.flac",
    "ls_1221-135766-0002.wav",
]


@pytest.fixture(scope="module")
def checkpoint(model_cache) -> Path:
    return Path(resolve_checkpoint("tiny.en", model_cache))


@pytest.fixture(scope="module")
def engine(checkpoint):
    e = OpenAIWhisperEngine(checkpoint, device="cpu", precision="fp32", batch_size=8, name="tiny.en")
    yield e
    e.close()


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> tuple[list[Chunk], str]:
    audio, reference = speech.concat(NAMES, gap=0.8)
    path = speech.write(tmp_path_factory.mktemp("talk") / "talk.flac", audio)
    return list(iter_chunks(path, vad=Vad(), key="talk")), reference


def _text(results) -> str:
    return " ".join(s.text for r in results for s in r.segments)


def _check_times(chunks, results) -> None:
    assert [r.index for r in results] == [c.index for c in chunks]
    previous = 0.0
    for chunk, r in zip(chunks, results):
        assert (r.start, r.end) == (chunk.start, chunk.end)
        for s in r.segments:
            assert chunk.start <= s.start <= s.end <= chunk.end
            assert s.start >= previous
            assert s.text == s.text.strip() and s.text
            previous = s.start


def test_batched_engine_transcribes_real_speech(engine, talk):
    chunks, reference = talk
    assert len(chunks) >= 2
    results = engine.transcribe(chunks, language=None, task="transcribe")
    _check_times(chunks, results)
    assert all(r.language == "en" for r in results)
    assert speech.wer(reference, _text(results)) < 0.15
    assert (engine.info.name, engine.info.device, engine.info.precision) == ("openai-whisper", "cpu", "fp32")


def test_onednn_products_give_the_same_transcript(checkpoint, talk, tmp_path):
    """Whichever matrix products the machine measures faster, the words are the same."""
    from daemon.engines import gemm

    chunks, _ = talk
    e = OpenAIWhisperEngine(checkpoint, device="cpu", precision="fp32", batch_size=8, cache_dir=tmp_path)
    assert e.cpu.gemm in (gemm.TORCH, gemm.ONEDNN)
    assert len(list(tmp_path.glob("gemm-*.json"))) == 1  # measured once, for the next start
    texts = {}
    for choice in (gemm.TORCH, gemm.ONEDNN):
        gemm.use(e.model, choice)
        e.cpu = replace(e.cpu, gemm=choice)
        results = e.transcribe(chunks, language="en", task="transcribe")
        _check_times(chunks, results)
        texts[choice] = [[s.text for s in r.segments] for r in results]
    assert texts[gemm.TORCH] == texts[gemm.ONEDNN]


def test_fit_windows_transcribe_real_speech_from_shorter_windows(checkpoint, talk):
    from whisper.audio import N_FRAMES

    chunks, reference = talk
    fit = OpenAIWhisperEngine(checkpoint, device="cpu", precision="fp32", batch_size=8, fit_windows=True)
    frames = fit.encoder.frames([c.audio for c in chunks], "en")
    assert all(n % 2 == 0 and n <= N_FRAMES for n in frames)
    assert min(frames) < N_FRAMES  # the short chunks of this talk get shorter windows
    assert fit.encoder.frames([c.audio for c in chunks], None) == [N_FRAMES] * len(chunks)  # language detection: full
    results = fit.transcribe(chunks, language="en", task="transcribe")
    _check_times(chunks, results)
    assert speech.wer(reference, _text(results)) < 0.15


@pytest.mark.parametrize("budget", [0, 4800], ids=["one window at a time", "windows of one length together"])
def test_chunks_encoded_ahead_say_the_same_and_are_not_encoded_again(checkpoint, engine, talk, budget):
    """Chunks prepared one by one as they join a batch (as the worker does) give the batch's
    results unchanged, and no window is encoded twice. With windows encoded in groups of one
    length (bf16 on a CPU), a prepared window waits for its group; the groups left incomplete
    are encoded with the batch, each window in the same group as without preparing."""
    chunks, _ = talk
    fit = OpenAIWhisperEngine(checkpoint, device="cpu", precision="fp32", batch_size=8, fit_windows=True)
    # mel frames per encoder call; 4,800: the talk's two windows of 1,800 frames in one call, the
    # one of 2,400 waiting for a second of its length that does not come
    fit.encoder.group_frames = budget
    encoded: list[int] = []  # windows the encoder takes, call by call
    real = fit.encoder.encode
    fit.encoder.encode = lambda mel: encoded.append(mel.shape[0]) or real(mel)
    plain = fit.transcribe(chunks, language="en", task="transcribe")
    in_batch = sum(encoded)
    assert (max(encoded) > 1) == (budget > 0)  # windows of one length did share a call, or none did
    encoded.clear()
    for chunk in chunks:
        fit.prepare(chunk, "en")
    ahead_of_time = sum(encoded)
    lengths = Counter(fit.encoder.window_frames(len(c.audio) / SAMPLE_RATE, "en") for c in chunks)
    assert ahead_of_time == sum(k - k % fit.encoder.group_size(n) for n, k in lengths.items())  # the complete groups
    assert ahead_of_time == len(chunks) if budget == 0 else 0 < ahead_of_time < len(chunks)
    ahead = fit.transcribe(chunks, language="en", task="transcribe")
    assert ahead == plain
    assert sum(encoded) == in_batch  # the prepared windows were not encoded a second time
    assert not fit.encoder.early and not fit.encoder.waiting
    fit.prepare(chunks[-1], "en")  # prepared, but its batch is cut differently: let go with the next batch
    fit.transcribe(chunks[:1], language="en", task="transcribe")
    assert not fit.encoder.early and not fit.encoder.waiting
    engine.prepare(chunks[0], "en")  # full 30 s windows: nothing to do ahead
    assert not engine.encoder.early and not engine.encoder.waiting
    fit.close()


@pytest.mark.parametrize(
    "bf16_vocabulary, bf16_attention",
    [(False, False), (True, False), (True, True)],
    ids=["fp32 step", "bf16 vocabulary", "bf16 vocabulary and attention"],
)
def test_padding_of_fit_windows_is_masked_out(checkpoint, talk, bf16_vocabulary, bf16_attention):
    """Windows of different lengths decoded in one padded batch: what lies in the padding
    changes no token and no score (it is masked), and each window gets the tokens it gets
    alone, unpadded. The batch is given out of length order and splits into groups of like
    lengths, whose rows end at different steps and leave. The engine sorts a batch before its
    spectrograms and gives the results back in its order. Both token steps: fp32 keys and
    values in two products with an additive mask, and bfloat16 ones read by the fused
    attention with a boolean mask. In bfloat16 a row read in a longer block rounds otherwise
    (on a CPU without AMX that turned "Somehow" into "somehow"), so there each window's
    words, normalized, are held against its words alone."""
    import torch

    from daemon.engines import shrinking
    from daemon.engines.torch_load import bf16_vocabulary as vocabulary_of

    chunks, _ = talk
    fit = OpenAIWhisperEngine(checkpoint, device="cpu", precision="fp32", batch_size=8, fit_windows=True)
    vocabulary = vocabulary_of(fit.model) if bf16_vocabulary else None
    fit.cpu = replace(fit.cpu, vocabulary=vocabulary, bf16_attention=bf16_attention)
    bf16 = {"cpu": fit.cpu}
    windows = [
        chunks[0].audio,
        speech.read(NAMES[1])[: 3 * SAMPLE_RATE],
        chunks[1].audio[: 8 * SAMPLE_RATE],
        speech.read(NAMES[3])[: 2 * SAMPLE_RATE],
        chunks[1].audio,
        speech.read(NAMES[2])[: 4 * SAMPLE_RATE],
    ]
    frames = fit.encoder.frames(windows, "en")
    own = [n // 2 for n in frames]
    assert own != sorted(own)
    assert len(shrinking.length_groups(sorted(own))) >= 2  # the short rows do not read the long ones' padding
    options = whisper.DecodingOptions(language="en", temperature=0.0, fp16=False)
    with torch.inference_mode():
        features = fit.encoder.features(windows, frames)
        assert features.shape[1] == max(own)
        together = shrinking.decode(fit.model, features, options, own, **bf16)
        noise = features.clone()
        for i, n in enumerate(own):
            noise[i, n:] = torch.randn_like(noise[i, n:]) * 3
        over_noise = shrinking.decode(fit.model, noise, options, own, **bf16)
        alone = [
            shrinking.decode(fit.model, features[i : i + 1, :n], options, **bf16)[0] for i, n in enumerate(own)
        ]
        engine_order, _ = fit._decode_audio(windows, "en", "transcribe")  # decoded shortest first, given back in order
    assert len({len(r.tokens) for r in alone}) >= 3  # rows end at different steps
    assert [r.tokens for r in over_noise] == [r.tokens for r in together]
    assert [(r.avg_logprob, r.no_speech_prob) for r in over_noise] == [(r.avg_logprob, r.no_speech_prob) for r in together]
    if not bf16_vocabulary:
        assert [r.tokens for r in together] == [r.tokens for r in alone]
        assert [r.tokens for r in engine_order] == [r.tokens for r in alone]
        for a, b in zip(together, alone):
            assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-4)
            assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-4)
    else:
        from whisper.normalizers import EnglishTextNormalizer

        norm = EnglishTextNormalizer()
        assert [norm(r.text) for r in together] == [norm(r.text) for r in alone]
        assert [norm(r.text) for r in engine_order] == [norm(r.text) for r in alone]


def test_log_mel_windows_are_whispers_own_value_for_value(engine, talk):
    """The engine pads each window's audio with a few zeros before its spectrogram, not 30 s;
    the mel it gives the model must be exactly the one whisper.transcribe computes. Also for
    a window of silence and one that ends loud, where the padding's frames could set the maximum."""
    import torch
    from whisper.audio import N_FRAMES, N_SAMPLES

    chunks, _ = talk
    loud_end = speech.read(NAMES[2])[: 5 * SAMPLE_RATE].copy()
    loud_end[-200:] = 1.0
    windows = [c.audio for c in chunks] + [
        speech.read(NAMES[1])[: 3 * SAMPLE_RATE + 77],
        np.zeros(4 * SAMPLE_RATE, np.float32),
        loud_end,
        speech.read(NAMES[0])[:N_SAMPLES],
    ]
    ours = engine.encoder.mel(windows)
    for i, audio in enumerate(windows):
        full = whisper.log_mel_spectrogram(torch.from_numpy(audio), engine.model.dims.n_mels, padding=N_SAMPLES)
        content = full.shape[-1] - N_FRAMES
        theirs = whisper.pad_or_trim(full[:, : min(N_FRAMES, content)], N_FRAMES)
        assert torch.equal(ours[i], theirs), i


def test_a_batch_holds_windows_worth_batch_size_full_ones(checkpoint):
    """With fit windows a short chunk counts for its window's share of 30 s; without, for one."""
    fit = OpenAIWhisperEngine(checkpoint, device="cpu", precision="fp32", batch_size=2, fit_windows=True)
    full = OpenAIWhisperEngine(checkpoint, device="cpu", precision="fp32", batch_size=2)
    assert fit.share(3.0, "en") == pytest.approx(1 / 3)  # the 10 s floor
    assert fit.share(20.0, "en") == pytest.approx(24 / 30)  # 23 s, in 2 s steps
    assert fit.share(29.0, "en") == full.share(3.0, "en") == 1.0
    chunks = [Chunk(i, 0.0, 4.0, np.zeros(4 * SAMPLE_RATE, np.float32), "k") for i in range(7)]
    windows = [(slot, 0) for slot in range(7)]
    assert [len(b) for b in fit._batches(windows, chunks, "en")] == [6, 1]
    assert [len(b) for b in full._batches(windows, chunks, "en")] == [2, 2, 2, 1]
    rests = [(0, 2 * SAMPLE_RATE), (1, 0)]  # a window's share is that of the audio left from its offset
    assert [len(b) for b in fit._batches(rests, chunks, "en")] == [2]


def test_rows_are_grouped_by_length_where_that_saves_reading():
    from daemon.engines.shrinking import GROUP_COST, length_groups

    assert length_groups([750] * 8) == [8]
    assert length_groups([250] * 6 + [750] * 2) == [6, 2]
    assert length_groups([250, 250 + GROUP_COST // 4]) == [2]  # a group costs more than it saves
    assert length_groups([250, 260, 1500]) == [2, 1]
    assert length_groups([]) == []


def test_rows_leave_within_their_group():
    """Ended rows are filled from the end of their own group, so every group stays together."""
    from daemon.engines.shrinking import CpuInference

    step = CpuInference.__new__(CpuInference)
    step.groups = [3, 2, 3]
    F, T = False, True
    assert step.compact([F, T, F, T, T, T, F, F]) == [0, 2, 7, 6]
    assert step.compact([F] * 8) == list(range(8))


def test_small_batches_give_every_chunk_its_result(checkpoint, talk):
    chunks, reference = talk
    small = OpenAIWhisperEngine(checkpoint, device="cpu", precision="fp32", batch_size=2)
    results = small.transcribe(chunks, language="en", task="transcribe")
    _check_times(chunks, results)
    assert speech.wer(reference, _text(results)) < 0.15
    small.close()


def test_converted_checkpoint_says_what_faster_whisper_says(checkpoint):
    from faster_whisper import WhisperModel

    clip = speech.read("ls_1272-141231-0002.flac")
    ours = whisper.load_model(str(checkpoint), device="cpu").transcribe(
        clip, fp16=False, temperature=0.0, condition_on_previous_text=False
    )["text"]
    reference = WhisperModel(str(bundled_ct2_dir()), device="cpu", compute_type="float32")
    pieces, _ = reference.transcribe(
        clip, beam_size=1, temperature=0.0, condition_on_previous_text=False, vad_filter=False
    )
    theirs = "".join(p.text for p in pieces)
    assert ours.strip() == theirs.strip()
    assert speech.wer(speech.manifest()["ls_1272-141231-0002.flac"], ours) < 0.2


def test_silence_gives_no_words(engine):
    rng = np.random.default_rng(1)
    hiss = (rng.standard_normal(8 * SAMPLE_RATE) * 1e-4).astype(np.float32)
    results = engine.transcribe([Chunk(0, 10.0, 18.0, hiss)], language="en", task="transcribe")
    assert results[0].segments == ()


def test_sampling_fallback_decodes_a_batch_reproducibly(engine):
    import torch

    short = [Chunk(i, 0.0, 4.0, speech.read(n)) for i, n in enumerate(["ls_1988-24833-0000.flac", "ls_3752-4944-0002.flac"])]
    with torch.inference_mode(), torch_threads(1):
        features = engine.encoder.features([c.audio for c in short])
        first = engine.decoder.decode(features, 0.4, "en", "transcribe")
        again = engine.decoder.decode(features, 0.4, "en", "transcribe")
    assert len(first) == 2
    assert [r.text for r in first] == [r.text for r in again]
    assert all(r.temperature == 0.4 and r.text for r in first)


def test_int8_on_cpu(checkpoint, talk):
    import torch

    chunks, reference = talk
    small = OpenAIWhisperEngine(checkpoint, device="cpu", precision="int8", batch_size=8)
    assert small.info.precision == "int8"
    quantized = [m for m in small.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == 4 * 6 + 4 * 10  # every projection of every encoder and decoder block
    results = small.transcribe(chunks, language=None, task="transcribe")
    _check_times(chunks, results)
    assert speech.wer(reference, _text(results)) < 0.2
    small.close()


def test_faster_whisper_engine(talk):
    chunks, reference = talk
    fw = FasterWhisperEngine("tiny.en", device="cpu", precision="auto")
    assert (fw.info.name, fw.info.device, fw.info.precision) == ("faster-whisper", "cpu", "int8")
    results = fw.transcribe(chunks, language=None, task="transcribe")
    _check_times(chunks, results)
    assert speech.wer(reference, _text(results)) < 0.15
    fw.close()


def test_load_engine_from_config(model_cache):
    from daemon.engines.hardware import cpu_has_bf16

    engine = load_engine(ModelConfig(name="tiny.en", device="cpu", precision="auto", batch_size=4), model_cache)
    expected = "bf16" if cpu_has_bf16() else "fp32"
    assert (engine.info.model, engine.info.device, engine.info.precision) == ("tiny.en", "cpu", expected)
    assert engine.batch_size == 4
    engine.close()


def test_a_loaded_model_holds_the_checkpoints_weights_and_whispers_own_buffers(checkpoint):
    """The model is built with torch's initializers switched off; every weight must still be
    the checkpoint's, and what whisper computes itself (sinusoids, masks) must be as usual."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    from daemon.engines.models import load_checkpoint

    model = load_checkpoint(checkpoint)
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    plain = Whisper(ModelDimensions(**stored["dims"]))
    plain.load_state_dict(stored["model_state_dict"])
    mine, theirs = model.state_dict(), plain.float().state_dict()
    assert mine.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.equal(mine[name], value), name
    assert torch.equal(model.decoder.mask, plain.decoder.mask)
    # and the initializers are torch's own again
    assert torch.nn.init.kaiming_uniform_.__module__ == "torch.nn.init"
    assert torch.nn.init.normal_.__module__ == "torch.nn.init"


def test_a_worker_loads_the_model_without_numba_and_word_timings_still_work(checkpoint, talk, tmp_path):
    """whisper.timing (which imports numba) is left out of the model's load; asking whisper
    for word timings afterwards imports it then and gives real word times."""
    import subprocess
    import sys

    chunks, _ = talk
    np.save(tmp_path / "speech.npy", chunks[0].audio)
    code = f"""
import sys, numpy as np
from daemon.engines.models import load_checkpoint
model = load_checkpoint({str(checkpoint)!r})
import whisper, whisper.utils
loaded = 'numba' in sys.modules
result = model.transcribe(np.load({str(tmp_path / "speech.npy")!r}), word_timestamps=True, fp16=False, language="en")
words = [w for s in result["segments"] for w in s["words"]]
print(loaded, 'numba' in sys.modules, len(words), words[0]["start"] < words[-1]["end"] <= {len(chunks[0].audio) / SAMPLE_RATE + 0.5})
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded, later, count, ordered = out.stdout.split()
    assert (loaded, later, ordered) == ("False", "True", "True")
    assert int(count) >= 5


def test_load_engine_names_a_missing_model(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_engine(ModelConfig(name=str(tmp_path / "missing.pt")), tmp_path)


def test_pick_device():
    yes, no = (lambda: True), (lambda: False)
    assert pick_device("auto", cuda=yes, mps=yes) == "cuda"
    assert pick_device("auto", cuda=no, mps=yes) == "mps"
    assert pick_device("auto", cuda=no, mps=no) == "cpu"
    assert pick_device("cpu", cuda=yes, mps=yes) == "cpu"
    assert pick_device("mps", cuda=yes, mps=no) == "cpu"  # asked for, not there
    assert pick_device("cuda", cuda=yes, mps=no) == "cuda"


def test_rows_still_decoding_move_into_the_places_of_ended_ones():
    from daemon.engines.shrinking import compact

    F, T = False, True
    assert compact([F, T, F, F, T, F]) == [0, 5, 2, 3]
    assert compact([T, T, F, F]) == [2, 3]
    assert compact([F, F, T, T]) == [0, 1]
    assert compact([T, F]) == [1]
    assert compact([T, T]) == []


def _token_states(rng, tokenizer, sample_begin: int, rows: int, length: int):
    """``rows`` token sequences as decoding leaves them: text, timestamps (some in pairs,
    some opening a segment, never decreasing) and end-of-text, after ``sample_begin`` prompt tokens."""
    import torch

    begin, eot = tokenizer.timestamp_begin, tokenizer.eot
    out = []
    for _ in range(rows):
        seq, time = [], int(rng.integers(0, 50))
        for _ in range(length):
            pick = rng.random()
            if pick < 0.45:
                seq.append(int(rng.integers(0, eot)))
            elif pick < 0.9:
                time += int(rng.integers(0, 40))
                seq.append(begin + min(time, 1500))
            else:
                seq.append(eot)
        out.append(list(tokenizer.sot_sequence_including_notimestamps[:sample_begin]) + seq)
    return torch.tensor(out)


@pytest.mark.parametrize("length", [0, 1, 2, 3, 8, 40])
def test_batched_timestamp_rules_mask_what_whispers_own_mask(engine, length):
    """The rules applied to all rows at once against whisper's row-by-row loop, on logits
    where timestamps and text compete (so that every rule changes something in some row)."""
    import torch
    from whisper.decoding import ApplyTimestampRules

    from daemon.engines.shrinking import BatchTimestampRules

    tokenizer = engine._tokenizer("en", "transcribe")
    sample_begin = len(tokenizer.sot_sequence_including_notimestamps)
    rng = np.random.default_rng(length)
    changed = set()
    for trial in range(20):
        tokens = _token_states(rng, tokenizer, sample_begin, rows=12, length=length)
        logits = torch.from_numpy(rng.normal(0, 3, (12, tokenizer.timestamp_begin + 1501)).astype(np.float32))
        logits[:, tokenizer.timestamp_begin :] += float(rng.normal(0, 4))  # timestamps likelier in some trials
        for initial in (1, None):
            theirs, ours = logits.clone(), logits.clone()
            ApplyTimestampRules(tokenizer, sample_begin, initial).apply(theirs, tokens)
            BatchTimestampRules(tokenizer, sample_begin, initial).apply(ours, tokens)
            assert torch.equal(ours, theirs), (length, trial, initial)
            changed |= set(torch.isinf(theirs).sum(dim=1).tolist())
    assert len(changed) >= 2  # the rows were masked in different ways


@pytest.mark.parametrize("step", ["cpu", "whisper"])
def test_finished_items_leaving_the_batch_change_no_token(engine, talk, step):
    """The shrinking loop against whisper.decode itself: windows of very different lengths (so
    items end at different steps and leave the batch), greedy, fp32: the same tokens, scores
    and no-speech probabilities. With the CPU token step, and with whisper's own (hooked
    key/value caches), which is what a GPU uses."""
    import torch
    from whisper.decoding import PyTorchInference

    from daemon.engines import shrinking

    chunks, _ = talk
    windows = [c.audio for c in chunks] + [speech.read(NAMES[1])[: 2 * SAMPLE_RATE], np.zeros(SAMPLE_RATE, np.float32)]
    options = whisper.DecodingOptions(language="en", temperature=0.0, fp16=False)
    with torch.inference_mode():
        features = engine.encoder.features(windows)
        task = shrinking.ShrinkingDecodingTask(engine.model, options, cpu=engine.cpu)
        assert isinstance(task.inference, shrinking.CpuInference)
        if step == "whisper":
            task.inference = PyTorchInference(engine.model, len(task.initial_tokens))
        ours = task.run(features)
        stock = whisper.decode(engine.model, features, options)
    assert len({len(r.tokens) for r in stock}) >= 3  # the items really end at different steps
    assert [r.tokens for r in ours] == [r.tokens for r in stock]
    assert [r.text for r in ours] == [r.text for r in stock]
    for a, b in zip(ours, stock):
        assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-4)
        assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-4)
        assert a.compression_ratio == b.compression_ratio


def test_bf16_runs_the_encoder_in_bfloat16_where_the_cpu_has_it(checkpoint, talk):
    import torch

    from daemon.engines.hardware import cpu_has_amx, cpu_has_bf16

    chunks, reference = talk
    bf16 = OpenAIWhisperEngine(checkpoint, device="cpu", precision="bf16", batch_size=8)
    native = cpu_has_bf16()
    assert bf16.info.precision == ("bf16" if native else "fp32")
    encoder_types = {p.dtype for p in bf16.model.encoder.parameters()}
    assert encoder_types == ({torch.bfloat16, torch.float32} if native else {torch.float32})  # layer norms stay fp32
    assert {p.dtype for p in bf16.model.decoder.parameters()} == {torch.float32}
    assert (bf16.cpu.vocabulary is not None) == native  # the token step reads the vocabulary in bfloat16
    assert bf16.cpu.bf16_attention == (native and cpu_has_amx())  # and, with AMX, the keys and values
    if native:
        assert bf16.cpu.vocabulary.dtype == torch.bfloat16
        assert torch.equal(bf16.cpu.vocabulary, bf16.model.decoder.token_embedding.weight.to(torch.bfloat16))
    results = bf16.transcribe(chunks, language="en", task="transcribe")
    _check_times(chunks, results)
    fp32 = OpenAIWhisperEngine(checkpoint, device="cpu", precision="fp32", batch_size=8)
    assert fp32.cpu.vocabulary is None and not fp32.cpu.bf16_attention
    fp32_wer = speech.wer(reference, _text(fp32.transcribe(chunks, language="en", task="transcribe")))
    bf16_wer = speech.wer(reference, _text(results))
    assert bf16_wer < 0.15 and bf16_wer <= fp32_wer + 0.02


def test_pick_precision():
    assert pick_precision("cpu", "auto", bf16=lambda: False) == "fp32"
    assert pick_precision("cpu", "auto", bf16=lambda: True) == "bf16"  # the encoder in bfloat16 where the CPU has it
    assert pick_precision("cpu", "fp32", bf16=lambda: True) == "fp32"
    assert pick_precision("cuda", "auto", bf16=lambda: True) == "fp16"
    assert pick_precision("cpu", "bf16") == "bf16"
    assert pick_precision("cuda", "bf16") == "fp16"
    assert pick_precision("cpu", "fp16") == "fp32"  # never half precision on the CPU
    assert pick_precision("cpu", "int8") == "int8"
    assert pick_precision("cuda", "auto") == "fp16"
    assert pick_precision("mps", "auto") == "fp16"
    assert pick_precision("mps", "int8") == "fp16"
    assert pick_precision("cuda", "fp32") == "fp32"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, "True 30000 1 -"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "False - - ACTIVE"),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, "True - - PASSIVE"),
    ],
)
def test_openmp_workers_stop_spinning_soon_unless_told_otherwise(given, expected):
    import os
    import subprocess
    import sys

    names = ("GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_WAIT_POLICY")
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(given)
    code = "\n".join([
        "import os, sys",
        f"names = {names!r}",
        "before = [os.environ.get(k) for k in names]",
        "import daemon.engines.loader",
        "assert 'torch' not in sys.modules, 'importing the loader loaded torch'",
        "assert [os.environ.get(k) for k in names] == before, 'importing the loader changed the environment'",
        "from daemon.engines.hardware import short_openmp_spin",
        "print(short_openmp_spin(), *(os.environ.get(k, '-') for k in names))",
    ])
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_parse_window_reads_timestamp_pairs(engine):
    tok = engine._tokenizer("en", "transcribe")

    def ts(seconds: float) -> int:
        return tok.timestamp_begin + round(seconds / 0.02)

    tokens = [ts(0.0), *tok.encode(" Hello there."), ts(1.5), ts(1.5), *tok.encode(" General"), ts(3.0)]
    tokens += [*tok.encode(" Kenobi")]  # no closing timestamp: runs to the chunk's end
    segments, _ = parse_window(tokens, tok, 100.0, 104.0, final=True)
    assert [(s.start, s.end, s.text) for s in segments] == [
        (100.0, 101.5, "Hello there."),
        (101.5, 103.0, "General"),
        (103.0, 104.0, "Kenobi"),
    ]
    late, _ = parse_window([ts(0.5), *tok.encode(" Late"), ts(29.0)], tok, 10.0, 20.0, final=True)
    assert [(s.start, s.end) for s in late] == [(10.5, 20.0)]  # clamped to the chunk


def test_parse_window_says_where_to_resume(engine):
    tok = engine._tokenizer("en", "transcribe")

    def ts(seconds: float) -> int:
        return tok.timestamp_begin + round(seconds / 0.02)

    one, two = tok.encode(" One."), tok.encode(" Two")
    # stopped after opening a new segment: go on from there
    segs, resume = parse_window([ts(0), *one, ts(5), ts(5)], tok, 100.0, 120.0)
    assert [(s.start, s.end, s.text) for s in segs] == [(100.0, 105.0, "One.")] and resume == 5.0
    # text with no closing timestamp is decoded again from its start, unless this is the last window
    segs, resume = parse_window([ts(0), *one, ts(5), ts(5), *two], tok, 100.0, 120.0)
    assert [s.text for s in segs] == ["One."] and resume == 5.0
    segs, resume = parse_window([ts(0), *one, ts(5), ts(5), *two], tok, 100.0, 120.0, final=True)
    assert [(s.start, s.end, s.text) for s in segs] == [(100.0, 105.0, "One."), (105.0, 120.0, "Two")]
    assert resume is None
    # a closed last segment: done if only the padding is left, resumed if seconds of speech are
    assert parse_window([ts(0), *one, ts(18.5)], tok, 100.0, 120.0)[1] is None
    assert parse_window([ts(0), *one, ts(15)], tok, 100.0, 120.0)[1] == 15.0
    # a segment opened with under a second left: a last word may be in it ("behind the curtain on the |left")
    assert parse_window([ts(0), *one, ts(19.2), ts(19.2)], tok, 100.0, 120.0)[1] == 19.2
    # too little left to hold a word
    assert parse_window([ts(0), *one, ts(19.7), ts(19.7)], tok, 100.0, 120.0)[1] is None
    # a window of under a second with more words than it can hold heard them in noise: nothing of it is kept
    many = tok.encode(" I do not remember. I do not remember.")
    assert parse_window([ts(0), *many, ts(0.6)], tok, 119.2, 120.0) == ([], None)
    assert [s.text for s in parse_window([ts(0), *tok.encode(" left."), ts(0.6)], tok, 119.2, 120.0)[0]] == ["left."]


def test_a_short_window_decodes_no_more_tokens_than_it_can_hold():
    assert token_limit(0.8, 224) == 16 + 13
    assert token_limit(24.0, 224) == 224


def test_speech_after_an_early_stop_is_not_lost(engine):
    # Two utterances 1.7 s apart in one chunk: decoded as a single window, tiny.en closes its
    # segment after the first and stops (WER 81%). The rest of the chunk must still be heard.
    audio, reference = speech.concat(["ls_2412-153948-0002.flac", "ls_1221-135766-0001.wav"], gap=1.7)
    audio = audio[: len(audio) - int(1.3 * SAMPLE_RATE)]  # 0.4 s after the last word, as chunks have
    chunk = Chunk(0, 40.0, 40.0 + len(audio) / SAMPLE_RATE, audio)
    result = engine.transcribe([chunk], language="en", task="transcribe")[0]
    _check_times([chunk], [result])
    assert len(result.segments) >= 2
    assert speech.wer(reference, _text([result])) < 0.1
