"""openai-whisper backend: a batch of chunks becomes one batched ``whisper.decode`` call.

The engine runs the stages, each in a file of its own: ``torch_load`` (the checkpoint on its
device and in its precision, the CPU settings decided once), ``torch_features`` (spectrograms
and the encoder, with what was encoded ahead), ``torch_decoding`` (decoding with fallback) and
``transcribing`` (windows into segments, the rest of a chunk decoded again). What it keeps
itself: thread counts, tokenizers, the prompt, word timings, and the move to the CPU when a GPU
fails.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from daemon.audio import SAMPLE_RATE, Chunk
from daemon.engines import torch_load
from daemon.engines.base import ChunkResult, EngineInfo
from daemon.engines.hardware import short_openmp_spin
from daemon.engines.threads import FreeCores, reading, torch_threads
from daemon.engines.torch_decoding import Decoder
from daemon.engines.torch_features import Encoder
from daemon.engines.transcribing import Pieces, batched, token_limit, transcribe_windows
from daemon.jobs import Segment

log = logging.getLogger(__name__)


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
        self.info = EngineInfo("openai-whisper", name or str(checkpoint), device, precision)
        # the padding of fit windows is masked by the CPU's greedy token step only
        self.encoder = Encoder(self.model, device, precision, fit_windows=fit_windows and device == "cpu")
        self._tokenizers: dict[tuple[str | None, str], Any] = {}
        self._tokenizer(None, "transcribe")  # loads the vocabulary once, now
        self._prompts_seen: set[str] = set()  # prompts whose length was checked (and said, if too long)

    @property
    def decoder(self) -> Decoder:
        return Decoder(self.model, self.info.precision, self.cpu)

    def _threads_now(self) -> int:
        """As many threads as other programs leave cores free (model.threads: 0), else as configured."""
        return self.free_cores() if self.free_cores is not None else self.threads

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

    def share(self, seconds: float, language: str | None) -> float:
        """A chunk's share of a batch: its window's length over 30 s. A batch holds windows
        worth ``batch_size`` full ones, so with fit windows it holds up to three times as many
        voice memos in the same memory: what a token step reads grows with the frames, and the
        vocabulary projection, the same for the whole batch, is shared by more rows."""
        from whisper.audio import N_FRAMES

        if not self.model.is_multilingual:
            language = "en"
        return self.encoder.window_frames(seconds, language) / N_FRAMES

    def _batches(self, windows: list[tuple[int, int]], chunks: Sequence[Chunk], language: str | None) -> Iterator[list[tuple[int, int]]]:
        """``windows`` (chunk, samples into it) in batches of at most ``batch_size`` full windows' worth."""
        return batched(windows, chunks, self.batch_size, lambda seconds: self.share(seconds, language))

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
        if not self.encoder.fit_windows or language is None or self.info.device != "cpu":
            return
        if self.encoder.has(chunk.audio):
            return  # encoded already, to detect its file's language
        frames = self.encoder.window_frames(len(chunk.audio) / SAMPLE_RATE, language)
        try:
            self.encoder.prepare(chunk.audio, frames, self._threads_now())
        except Exception as exc:  # noqa: BLE001 - the batch encodes it again, and reports what fails there
            log.debug("encoding ahead failed (%s); the batch will encode it", exc, extra={"action": "transcribe"})

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
        frames = self.encoder.window_frames(len(audio) / SAMPLE_RATE, "en")  # as with any decided language
        n = self._threads_now()
        tokenizer = self._tokenizer(None, "transcribe")
        with torch.inference_mode(), torch_threads(n):
            features = self.encoder.features([audio], [frames])
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
            self.encoder.keep(audio, frames, features)
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
            self.encoder.clear()  # what was prepared and not used (a window cut shorter, say) goes

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
        batch: dict[str, list[Any]] = {"audios": [], "features": []}  # the batch decoded last, for its word timings

        def decode(audios: list[np.ndarray]) -> list[Any]:
            results, features = self._decode_audio(audios, language, task, prompt, keep_features=words)
            batch["audios"], batch["features"] = audios, features
            return results

        def timed(i: int, tokenizer: Any, pieces: Pieces, start: float, end: float) -> list[Segment]:
            return self._align(tokenizer, pieces, batch["features"][i], batch["audios"][i], start, end)

        return transcribe_windows(
            chunks,
            decode=decode,
            batches=lambda windows: self._batches(windows, chunks, language),
            tokenizer=lambda lang: self._tokenizer(lang, task),
            prompt=prompt,
            without_prompt=lambda audios: self._decode_audio(audios, language, task, None)[0],
            timed=timed if words else None,
        )

    def _align(
        self, tokenizer: Any, pieces: Pieces, features: Any, audio: np.ndarray, start: float, end: float
    ) -> list[Segment]:
        """The window's segments with their words timed (see ``words``), with the threads the
        batch's decoding had."""
        import torch
        from whisper.audio import HOP_LENGTH, N_FRAMES

        from daemon.engines import words  # whisper.timing brings numba: only for the folders that ask

        audio_frames = min(N_FRAMES, -(-len(audio) // HOP_LENGTH))
        n = self._threads_now()
        with torch.inference_mode(), torch_threads(n if self.info.device == "cpu" else torch.get_num_threads()):
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

        frames = self.encoder.frames(windows, language)
        order = sorted(range(len(windows)), key=frames.__getitem__)
        windows, frames = [windows[i] for i in order], [frames[i] for i in order]
        limit = token_limit(max(len(w) for w in windows) / SAMPLE_RATE, self.model.dims.n_text_ctx // 2)
        with torch.inference_mode():
            try:
                decoded, features = self._run(windows, frames, language, task, prompt, limit)
            except (RuntimeError, NotImplementedError) as exc:
                if self.info.device != "mps":
                    raise
                self._fall_back_to_cpu(exc)
                decoded, features = self._run(windows, frames, language, task, prompt, limit)
        results: list[Any] = [None] * len(order)
        kept: list[Any] = [None] * len(order)
        for j, (i, r) in enumerate(zip(order, decoded)):
            results[i] = r
            if keep_features:
                kept[i] = features[j, : frames[j] // 2]
        return results, kept

    def _run(
        self, windows: Sequence[np.ndarray], frames: list[int], language: str | None, task: str, prompt: str | None = None,
        sample_len: int | None = None,
    ) -> tuple[list[Any], Any]:
        """The decoded windows, and their audio features. The mel spectrograms are let go once encoded, before the decoding's caches
        (the largest part of a batch's memory) are laid out."""
        feature_frames = [n // 2 for n in frames]  # the encoder's second convolution halves them
        if self.info.device != "cpu":
            features = self.encoder.features(windows, frames)
            return self.decoder.with_fallback(features, language, task, feature_frames, prompt, sample_len), features
        n = self._threads_now()
        if n != self._last_threads:
            log.info("using %d of %d cores: other programs keep the rest busy" if n < self.threads else
                     "using all %d of %d cores", n, self.threads, extra={"action": "transcribe"})
            self._last_threads = n
        with torch_threads(n):
            features = self.encoder.features(windows, frames)
        with torch_threads(min(n, self.decode_threads)):
            return self.decoder.with_fallback(features, language, task, feature_frames, prompt, sample_len), features

    def _fall_back_to_cpu(self, exc: BaseException) -> None:
        log.warning("the GPU could not run the model (%s); using the CPU from now on", exc, extra={"action": "transcribe"})
        self.model = torch_load.to_cpu(self.model)
        self.info = EngineInfo(self.info.name, self.info.model, "cpu", "fp32")
        # a new one: it sets nothing aside off the CPU, and fit windows stay as they were (off)
        self.encoder = Encoder(self.model, "cpu", "fp32", fit_windows=self.encoder.fit_windows)

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
        self.encoder = None  # type: ignore[assignment]  # it holds the model too
        self._tokenizers.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # freeing a cache is best effort
            pass
