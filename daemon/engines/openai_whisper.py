"""openai-whisper backend: a batch of chunks becomes one batched ``whisper.decode`` call."""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from daemon.audio import SAMPLE_RATE, Chunk
from daemon.engines.base import ChunkResult, EngineInfo
from daemon.engines import torch_load
from daemon.engines.hardware import short_openmp_spin
from daemon.engines.threads import FreeCores, reading
from daemon.engines.transcribing import (
    MAX_WINDOWS_PER_CHUNK, MEL_PAD_SAMPLES, MIN_SKIPPED_SECONDS, SAMPLING_SEED, batched, is_silence, window_pieces,
    with_fallback,
)
from daemon.jobs import Segment

log = logging.getLogger(__name__)

# Fit windows (``fit_windows``): a chunk shorter than 30 s is encoded in a window cut to its
# length plus this much, at least FIT_MIN_SECONDS; the encoder's cost falls with it (a 3 s memo
# no longer pays for 30 s). Closer fits make the model loop ("the 2 stray kittens ..." over and
# over in a 4.2 s window, measured on LibriSpeech).
FIT_MARGIN_SECONDS = 3.0
FIT_MIN_SECONDS = 10.0
# Fit windows come in steps of 2 s (200 mel frames), so that a long recording makes a dozen
# window shapes, not hundreds: each new shape leaves kernels and freed blocks of its own behind,
# and a long recording's peak memory would grow with them (docs/decisions.md).
FIT_STEP_FRAMES = 200
# On a CPU in bf16, short windows of one length are encoded together, up to this many mel frames
# per call: four 10 s windows, two 20 s ones, a 30 s window alone. Alone, a short window's products
# are too small for the matrix units; full windows gain nothing in groups and their attention then
# holds four times the memory; fp32 gains nothing (docs/decisions.md).
ENCODE_GROUP_FRAMES = 4000


class OpenAIWhisperEngine:
    """Engine over openai-whisper. ``checkpoint`` is what ``models.resolve_checkpoint`` returned."""

    def __init__(
        self,
        checkpoint: Path | str,
        *,
        device: str = "auto",
        precision: str = "auto",
        threads: int = 0,
        batch_size: int = 8,
        name: str | None = None,
        cache_dir: Path | None = None,
        fit_windows: bool = False,
    ) -> None:
        load_began = reading()  # before torch loads: the first batch's thread count looks back this far
        short_spin = short_openmp_spin()
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self.batch_size = max(1, batch_size)
        # The token loop is thousands of tiny operations. When idle OpenMP workers give their
        # cores up soon it uses every thread; with long-spinning workers (torch was loaded before
        # hardware could set that up) one thread, which stays fast when other programs share the
        # cores, where two threads slow down tenfold.
        self.decode_threads = torch.get_num_threads() if short_spin else 1
        self.threads = torch.get_num_threads()
        # threads: 0 lets the number follow the load, as long as idle threads give their cores up
        self.free_cores = FreeCores(self.threads, since=load_began) if threads <= 0 and short_spin else None
        self._last_threads = self.threads
        loaded = torch_load.load(checkpoint, device=device, precision=precision, batch_size=self.batch_size, cache_dir=cache_dir)
        self.model = loaded.model
        self.cpu = loaded.cpu  # how the CPU steps compute: matrix products, bfloat16
        device, precision = loaded.device, loaded.precision
        # the padding of fit windows is masked by the CPU's greedy token step only
        self.fit_windows = fit_windows and device == "cpu"
        self.info = EngineInfo("openai-whisper", name or str(checkpoint), device, precision)
        self._tokenizers: dict[tuple[str | None, str], Any] = {}
        self._tokenizer(None, "transcribe")  # loads the vocabulary once, now
        self._prompts_seen: set[str] = set()  # prompts whose length was checked (and said, if too long)
        # features that ``prepare`` computed ahead, for the next ``transcribe`` (CPU, fit windows)
        self._early: dict[tuple[int, int], tuple[np.ndarray, int, Any]] = {}
        # on a CPU in bf16, short windows of one length are encoded several at a time: alone, their
        # products are too small for the matrix units (see _features, ENCODE_GROUP_FRAMES)
        self.encode_group_frames = ENCODE_GROUP_FRAMES if precision == "bf16" else 0
        # windows ``prepare`` took whose group is not complete yet: length -> [(key, audio, mel)]
        self._waiting: dict[int, list[tuple[tuple[int, int], np.ndarray, Any]]] = {}

    # ------------------------------------------------------------------ decoding

    def _tokenizer(self, language: str | None, task: str) -> Any:
        from whisper.tokenizer import get_tokenizer

        key = (language, task)
        if key not in self._tokenizers:
            m = self.model
            with warnings.catch_warnings():
                # whisper reads its vocabulary file without closing it (once per process)
                warnings.simplefilter("ignore", ResourceWarning)
                self._tokenizers[key] = get_tokenizer(
                    m.is_multilingual, num_languages=m.num_languages, language=language or "en", task=task
                )
        return self._tokenizers[key]

    def _mel(self, windows: Sequence[np.ndarray]) -> Any:
        """Log-mel windows as whisper.transcribe builds them: the spectrogram of the audio
        followed by 30 s of zeros, cut to the audio's frames, then padded with zeros in the
        mel domain. (Padding the audio instead gives the model a stretch of "silence" that
        makes it stop early and skip whole sentences.)

        The audio is followed by MEL_PAD_SAMPLES of zeros rather than 30 s: the frames kept
        see only the audio and the first 200 zeros, and every frame past the ones that touch
        the audio is all zeros, whose log-mel (-10) is the floor, so the spectrogram's maximum
        (which sets the clamp) is the same too. The result is whisper's, value for value
        (a test compares them), without a 30 s transform per window."""
        import torch
        import whisper
        from whisper.audio import HOP_LENGTH, N_FRAMES, N_SAMPLES

        n_mels = self.model.dims.n_mels
        pad_frames = MEL_PAD_SAMPLES // HOP_LENGTH
        mels = []
        for audio in windows:
            samples = torch.from_numpy(np.ascontiguousarray(audio[:N_SAMPLES], dtype=np.float32))
            mel = whisper.log_mel_spectrogram(samples, n_mels, padding=MEL_PAD_SAMPLES)
            content = mel.shape[-1] - pad_frames
            mels.append(whisper.pad_or_trim(mel[:, : min(N_FRAMES, content)], N_FRAMES))
        return torch.stack(mels).to(self.info.device)

    def _frames(self, windows: Sequence[np.ndarray], language: str | None) -> list[int]:
        """Mel frames of each window to encode: all 3,000 (30 s), or with fit windows the
        audio's length plus a margin, in steps of FIT_STEP_FRAMES (even: the encoder halves it). Not when the
        language is to be detected: whisper detects it on unmasked features."""
        return [self._window_frames(len(audio) / SAMPLE_RATE, language) for audio in windows]

    def _window_frames(self, seconds: float, language: str | None) -> int:
        from whisper.audio import HOP_LENGTH, N_FRAMES

        if not self.fit_windows or language is None:
            return N_FRAMES
        seconds = max(FIT_MIN_SECONDS, seconds + FIT_MARGIN_SECONDS)
        return min(N_FRAMES, FIT_STEP_FRAMES * int(np.ceil(seconds * SAMPLE_RATE / HOP_LENGTH / FIT_STEP_FRAMES)))

    def share(self, seconds: float, language: str | None) -> float:
        """A chunk's share of a batch: its window's length over 30 s. A batch holds windows
        worth ``batch_size`` full ones, so with fit windows it holds up to three times as many
        voice memos in the same memory: what a token step reads grows with the frames, and the
        vocabulary projection, the same for the whole batch, is shared by more rows."""
        from whisper.audio import N_FRAMES

        if not self.model.is_multilingual:
            language = "en"
        return self._window_frames(seconds, language) / N_FRAMES

    def _batches(self, windows: list[tuple[int, int]], chunks: Sequence[Chunk], language: str | None) -> Iterator[list[tuple[int, int]]]:
        """``windows`` (chunk, samples into it) in batches of at most ``batch_size`` full windows' worth."""
        return batched(windows, chunks, self.batch_size, lambda seconds: self.share(seconds, language))

    def _decode(
        self, features: Any, temperature: float, language: str | None, task: str, frames: list[int] | None = None,
        prompt: str | None = None,
    ) -> list[Any]:
        """One decoding pass. ``frames``: each item's own number of audio features, when the
        items are padded to the longest (fit windows)."""
        import torch
        import whisper

        frames = frames or [features.shape[1]] * features.shape[0]
        fp16 = self.info.precision == "fp16"
        if temperature > 0:
            options = whisper.DecodingOptions(
                task=task, language=language, temperature=temperature, best_of=5, fp16=fp16, prompt=prompt
            )
        else:
            options = whisper.DecodingOptions(
                task=task, language=language, temperature=0.0, fp16=fp16, prompt=prompt
            )
        from daemon.engines import shrinking  # torch and whisper load at first use, as everywhere in this module

        if (options.best_of or options.beam_size or 1) > 1:
            # openai-whisper 20250625 no longer repeats the audio features per beam or sample,
            # which only broadcasts for one item at a time: decode these items one by one,
            # each without padding (whisper's own loop masks none)
            out = []
            with torch.random.fork_rng(devices=[]):
                for i in range(features.shape[0]):
                    torch.manual_seed(SAMPLING_SEED)  # each item's sampling depends on that item alone
                    out.append(shrinking.decode(self.model, features[i : i + 1, : frames[i]], options)[0])
            return out
        return shrinking.decode(self.model, features, options, frames, cpu=self.cpu)

    def _decode_with_fallback(
        self, features: Any, language: str | None, task: str, frames: list[int], prompt: str | None = None
    ) -> list[Any]:
        """Greedy first; only the items whose text looks wrong are decoded again, at rising
        temperatures, as whisper.transcribe does (``transcribing.with_fallback``). ``frames``: each
        item's own number of audio features (the rest is padding)."""

        def decode(todo: list[int], temperature: float) -> list[Any]:
            rows = features if len(todo) == features.shape[0] else features[todo]  # no copy of a whole batch
            return self._decode(rows, temperature, language, task, [frames[i] for i in todo], prompt)

        return with_fallback(features.shape[0], decode)

    def _features(self, windows: Sequence[np.ndarray], frames: list[int] | None = None) -> Any:
        """Audio features for a batch of windows, computed once per batch: temperature
        fallbacks reuse them. A GPU encodes the whole batch at once. On a CPU the encoder takes
        short windows of one length together, ``_group_size`` at a time (one in fp32: it is
        compute-bound there and a batch gains nothing, its activations only growing out of the
        caches, the features bit for bit the same). Each window is encoded from its first ``frames[i]`` mel
        frames (fit windows; all 3,000 without ``frames``), the features padded with zeros to the
        longest. What ``prepare`` encoded ahead is taken from there, and the windows it left
        waiting for their group are encoded with the rest, so that a window's group is the same
        whether or not it was prepared."""
        import torch
        from whisper.audio import N_FRAMES

        if self.info.device != "cpu":
            return self._encode_batch(self._mel(windows))
        frames = frames or [N_FRAMES] * len(windows)
        waiting = {key: (n, mel) for n, group in self._waiting.items() for key, _, mel in group}
        self._waiting.clear()
        parts: list[Any] = [None] * len(windows)
        mels: list[Any] = [None] * len(windows)
        for i, (window, n) in enumerate(zip(windows, frames)):
            key = _window_key(window)
            hit = self._early.pop(key, None)
            if hit is not None and hit[1] == n:
                parts[i] = hit[2]
            elif key in waiting and waiting[key][0] == n:
                mels[i] = waiting[key][1]
        missing = [i for i in range(len(windows)) if parts[i] is None and mels[i] is None]
        if missing:
            mel = self._mel([windows[i] for i in missing])
            for j, i in enumerate(missing):
                mels[i] = mel[j : j + 1, :, : frames[i]]
        by_length: dict[int, list[int]] = {}
        for i in range(len(windows)):
            if parts[i] is None:
                by_length.setdefault(frames[i], []).append(i)
        for n, same in by_length.items():
            size = self._group_size(n)
            for g in range(0, len(same), size):
                group = same[g : g + size]
                features = self._encode_batch(torch.cat([mels[i] for i in group]))
                for j, i in enumerate(group):
                    parts[i] = features[j : j + 1]
        return _padded(parts)

    def _group_size(self, frames: int) -> int:
        """How many windows of ``frames`` mel frames are encoded in one call on a CPU."""
        return max(1, self.encode_group_frames // frames)

    def _encode_batch(self, mel: Any) -> Any:
        import torch

        precision = self.info.precision
        x = mel.to(torch.bfloat16) if precision == "bf16" else mel.half() if precision == "fp16" else mel
        if x.shape[-1] == self.model.dims.n_audio_ctx * 2:
            x = self.model.embed_audio(x)
        else:
            x = _encode_short(self.model.encoder, x)
        return x.float() if precision == "bf16" else x

    def prepare(self, chunk: Chunk, language: str | None) -> None:
        """Encode ``chunk`` now, for the batch it is about to join: while the worker waits for
        the batch's next chunks (a long file is still being decoded and cut), the encoder's
        work is done instead of after. On the CPU with fit windows only, where windows are
        encoded in small groups of one length anyway (the features are the same either way: a
        window waits here until its group is complete, and ``transcribe`` encodes the groups
        left incomplete); elsewhere, and when the language is to be detected, it does nothing.
        Best effort: a failure here leaves the work to ``transcribe``, which reports it."""
        if not self.model.is_multilingual:
            language = "en"
        if not self.fit_windows or language is None or self.info.device != "cpu":
            return
        import torch

        if _window_key(chunk.audio) in self._early:
            return  # encoded already, to detect its file's language
        frames = self._window_frames(len(chunk.audio) / SAMPLE_RATE, language)
        n = self.free_cores() if self.free_cores is not None else self.threads
        try:
            with torch.inference_mode():
                mel = self._mel([chunk.audio])[:, :, :frames]
            group = self._waiting.setdefault(frames, [])
            group.append((_window_key(chunk.audio), chunk.audio, mel))
            if len(group) < self._group_size(frames):
                return
            del self._waiting[frames]
            with torch.inference_mode(), _torch_threads(n):
                features = self._encode_batch(torch.cat([m for _, _, m in group]))
        except Exception as exc:  # noqa: BLE001 - the batch encodes it again, and reports what fails there
            log.debug("encoding ahead failed (%s); the batch will encode it", exc, extra={"action": "transcribe"})
            return
        for j, (key, audio, _) in enumerate(group):
            self._early[key] = (audio, frames, features[j : j + 1])

    def detect_language(self, audio: np.ndarray) -> dict[str, float]:
        """The probability of each language the model knows for ``audio`` (up to 30 s of
        speech), as ``whisper.detect_language`` gives it: the decoder's first step after
        start-of-transcript, over the language tokens. The audio is encoded in the window its
        transcription will use (fit to its length on the CPU with fit windows, the padding
        masked), and those features are kept for that transcription, so that deciding a file's
        language costs one token step. An English-only model knows English alone."""
        import torch

        if not self.model.is_multilingual:
            return {"en": 1.0}
        frames = self._window_frames(len(audio) / SAMPLE_RATE, "en")  # as with any decided language
        n = self.free_cores() if self.free_cores is not None else self.threads
        tokenizer = self._tokenizer(None, "transcribe")
        with torch.inference_mode(), _torch_threads(n):
            features = self._features([audio], [frames])
            sot = torch.tensor([[tokenizer.sot]], device=features.device)
            if self.info.device == "cpu":
                from daemon.engines import shrinking

                # one token step: the keys and values laid out in fp32, whatever the batches do
                cpu = replace(self.cpu, bf16_attention=False)
                inference = shrinking.CpuInference(self.model, [frames // 2], cpu=cpu)
                logits = inference.logits(sot, features)[0, 0].float()
                inference.cleanup_caching()
            else:
                logits = self.model.logits(sot, features)[0, 0].float()
            tokens = list(tokenizer.all_language_tokens)
            probs = logits[tokens].softmax(dim=-1).tolist()
        if self.info.device == "cpu":
            self._early[_window_key(audio)] = (audio, frames, features)
        return dict(zip(tokenizer.all_language_codes, probs))

    def transcribe(
        self, chunks: Sequence[Chunk], *, language: str | None, task: str, prompt: str | None = None, words: bool = False
    ) -> list[ChunkResult]:
        """Each chunk is one window (30 s, or fitted to a short chunk), batched. Where the model stops with speech left
        (whisper.transcribe would go on from its last timestamp), the rest of the chunk is
        decoded again, batched with the other chunks' rests.

        ``prompt``: text given to the decoder before every window (Whisper's ``<|startofprev|>``
        context; batched windows have no previous text of their own). A segment that only
        repeats the prompt is dropped (Whisper echoes its prompt over noise). ``words``: each
        segment's words timed by whisper's alignment, from the batch's encoder output."""
        try:
            return self._transcribe(chunks, language=language, task=task, prompt=self._fit_prompt(prompt), words=words)
        finally:
            self._early.clear()  # what was prepared and not used (a window cut shorter, say) goes
            self._waiting.clear()

    def _fit_prompt(self, prompt: str | None) -> str | None:
        """``prompt`` as the decoder takes it; past its budget (half the text context, less one:
        223 tokens) whisper keeps the end, and that is said once per prompt."""
        if not prompt or not prompt.strip():
            return None
        if prompt not in self._prompts_seen:
            self._prompts_seen.add(prompt)
            budget = self.model.dims.n_text_ctx // 2 - 1
            tokens = self._tokenizer(None, "transcribe").encode(" " + prompt.strip())
            if len(tokens) > budget:
                kept = self._tokenizer(None, "transcribe").decode(tokens[-budget:])
                log.warning(
                    "the prompt is %d tokens, more than the %d the model reads; only its end is used: %r",
                    len(tokens), budget, kept, extra={"action": "transcribe"},
                )
        return prompt

    def _transcribe(
        self, chunks: Sequence[Chunk], *, language: str | None, task: str, prompt: str | None = None, words: bool = False
    ) -> list[ChunkResult]:
        if not chunks:
            return []
        if not self.model.is_multilingual:
            language = "en"
        echo = _Echo(prompt)
        found: list[list[Segment]] = [[] for _ in chunks]
        languages: list[str | None] = [None] * len(chunks)
        windows = [(slot, 0) for slot in range(len(chunks))]  # (which chunk, samples into it)
        for turn in range(MAX_WINDOWS_PER_CHUNK):
            final = turn == MAX_WINDOWS_PER_CHUNK - 1
            rest: list[tuple[int, int]] = []
            for batch in self._batches(windows, chunks, language):
                audios = [chunks[slot].audio[offset:] for slot, offset in batch]
                results, features = self._decode_audio(audios, language, task, prompt, keep_features=words)
                if prompt:
                    # A prompt sometimes leads the model to write a long window as one run of text
                    # with no timestamp after the first, and to stop mid-window: with no timestamp
                    # to go on from, the rest of its speech would be lost. Those windows are
                    # decoded again without the prompt.
                    begin = self._tokenizer(language, task).timestamp_begin
                    lost = [i for i, r in enumerate(results) if _untimed(r, len(audios[i]), begin)]
                    if lost:
                        again, _ = self._decode_audio([audios[i] for i in lost], language, task, None)
                        for i, r in zip(lost, again):
                            results[i] = r
                for i, ((slot, offset), r) in enumerate(zip(batch, results)):
                    chunk = chunks[slot]
                    languages[slot] = languages[slot] or r.language
                    if is_silence(r):
                        continue
                    start = chunk.start + offset / SAMPLE_RATE
                    tokenizer = self._tokenizer(r.language, task)
                    pieces, resume = window_pieces(r.tokens, tokenizer, start, chunk.end, final=final)
                    pieces = [(s, t) for s, t in pieces if not echo(s.text)]
                    if words:
                        segments = self._align(tokenizer, pieces, features[i], audios[i], start, chunk.end)
                    else:
                        segments = [s for s, _ in pieces]
                    found[slot].extend(segments)
                    if resume is not None:
                        rest.append((slot, offset + round(resume * SAMPLE_RATE)))
            windows = rest
            if not windows:
                break
        return [
            ChunkResult(c.index, c.start, c.end, tuple(found[slot]), languages[slot]) for slot, c in enumerate(chunks)
        ]

    def _align(
        self, tokenizer: Any, pieces: list[tuple[Segment, list[int]]], features: Any, audio: np.ndarray, start: float, end: float
    ) -> list[Segment]:
        """The window's segments with their words timed (see ``words``), with the threads the
        batch's decoding had."""
        import torch
        from whisper.audio import HOP_LENGTH, N_FRAMES

        from daemon.engines import words  # whisper.timing brings numba: only for the folders that ask

        audio_frames = min(N_FRAMES, -(-len(audio) // HOP_LENGTH))
        n = self.free_cores() if self.free_cores is not None else self.threads
        with torch.inference_mode(), _torch_threads(n if self.info.device == "cpu" else torch.get_num_threads()):
            return words.align(self.model, tokenizer, pieces, features, audio_frames, start, end)

    def _decode_audio(
        self, windows: Sequence[np.ndarray], language: str | None, task: str, prompt: str | None = None,
        *, keep_features: bool = False,
    ) -> tuple[list[Any], list[Any]]:
        """Results for ``windows``, in their order, and with ``keep_features`` each window's
        audio features (its own frames only), for the word alignment. They are decoded shortest first: the CPU
        step groups rows of like lengths (``shrinking.length_groups``), and rows that come
        sorted are not copied into a sorted batch (features and all) on the way."""
        import torch

        frames = self._frames(windows, language)
        order = sorted(range(len(windows)), key=frames.__getitem__)
        windows, frames = [windows[i] for i in order], [frames[i] for i in order]
        with torch.inference_mode():
            try:
                decoded, features = self._run(windows, frames, language, task, prompt)
            except (RuntimeError, NotImplementedError) as exc:
                if self.info.device != "mps":
                    raise
                self._fall_back_to_cpu(exc)
                decoded, features = self._run(windows, frames, language, task, prompt)
        results: list[Any] = [None] * len(order)
        kept: list[Any] = [None] * len(order)
        for j, (i, r) in enumerate(zip(order, decoded)):
            results[i] = r
            if keep_features:
                kept[i] = features[j, : frames[j] // 2]
        return results, kept

    def _run(
        self, windows: Sequence[np.ndarray], frames: list[int], language: str | None, task: str, prompt: str | None = None
    ) -> tuple[list[Any], Any]:
        """The decoded windows, and their audio features. The mel spectrograms are let go once encoded, before the decoding's caches
        (the largest part of a batch's memory) are laid out."""
        feature_frames = [n // 2 for n in frames]  # the encoder's second convolution halves them
        if self.info.device != "cpu":
            features = self._features(windows, frames)
            return self._decode_with_fallback(features, language, task, feature_frames, prompt), features
        # as many threads as other programs leave cores free (model.threads: 0), else as configured
        n = self.free_cores() if self.free_cores is not None else self.threads
        if n != self._last_threads:
            log.info("using %d of %d cores: other programs keep the rest busy" if n < self.threads else
                     "using all %d of %d cores", n, self.threads, extra={"action": "transcribe"})
            self._last_threads = n
        with _torch_threads(n):
            features = self._features(windows, frames)
        with _torch_threads(min(n, self.decode_threads)):
            return self._decode_with_fallback(features, language, task, feature_frames, prompt), features

    def _fall_back_to_cpu(self, exc: BaseException) -> None:
        log.warning("the GPU could not run the model (%s); using the CPU from now on", exc, extra={"action": "transcribe"})
        self.model = torch_load.to_cpu(self.model)
        self.info = EngineInfo(self.info.name, self.info.model, "cpu", "fp32")

    def memory_bytes(self) -> int | None:
        """torch's own figure for the GPU: the memory its tensors hold there."""
        import torch

        device = self.info.device
        if device == "mps":
            return int(torch.mps.current_allocated_memory())
        if device == "cuda":
            return int(torch.cuda.memory_allocated())
        return None

    def close(self) -> None:
        self.model = None
        self._tokenizers.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # freeing a cache is best effort
            pass


def _padded(parts: list[Any]) -> Any:
    """Windows' features, one tensor each, padded with zeros to the longest and stacked."""
    import torch

    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, width - p.shape[1])) for p in parts])


def _window_key(audio: np.ndarray) -> tuple[int, int]:
    """Which samples a window holds: where they start in memory, and how many. A chunk's
    audio and the window ``transcribe`` cuts from its start share both."""
    return audio.__array_interface__["data"][0], len(audio)


def _encode_short(encoder: Any, mel: Any) -> Any:
    """whisper's ``AudioEncoder.forward`` for a window shorter than 30 s (which it refuses):
    the positional embedding is cut to the window's length."""
    import torch.nn.functional as F

    x = F.gelu(encoder.conv2(F.gelu(encoder.conv1(mel)))).permute(0, 2, 1)
    x = (x + encoder.positional_embedding[: x.shape[1]]).to(x.dtype)
    for block in encoder.blocks:
        x = block(x)
    return encoder.ln_post(x)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_WORD = re.compile(r"\w+")


class _Echo:
    """Whether a segment only repeats the prompt: Whisper, given a prompt, sometimes writes it
    out over noise or a word or two of speech. Such a segment is a run of at least three of the
    prompt's words in its order (all of them, for a shorter prompt), and nothing else, case and
    punctuation aside. A one-word prompt is never taken for an echo: that word alone may well
    have been said."""

    def __init__(self, prompt: str | None) -> None:
        self.words = _WORD.findall(prompt.lower()) if isinstance(prompt, str) else []
        self.least = min(3, len(self.words))

    def __call__(self, text: str) -> bool:
        said = _WORD.findall(text.lower())
        if len(self.words) < 2 or len(said) < self.least:
            return False
        n = len(said)
        return any(self.words[i : i + n] == said for i in range(len(self.words) - n + 1))


def _untimed(r: Any, samples: int, begin: int) -> bool:
    """A window of speech worth going on from (MIN_SKIPPED_SECONDS and more) decoded as text
    with no timestamp after the opening one: where its text ends in the audio is not known.
    ``begin``: the vocabulary's first timestamp token."""
    if samples < MIN_SKIPPED_SECONDS * SAMPLE_RATE or is_silence(r) or not r.tokens:
        return False
    return sum(1 for t in r.tokens if t >= begin) <= 1
