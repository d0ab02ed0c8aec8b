"""mlx-whisper backend: Whisper on Apple's MLX, on the Mac's GPU (Metal), or on MLX's CPU backend.

Above the model it is the openai-whisper engine's own work (``transcribing``: windows, fallback,
segments). Below it, mlx-whisper's model and its port of whisper's ``DecodingTask``, with two
changes, as in ``shrinking`` for torch:

- whisper's timestamp rules for every row at once, with MLX operations (mlx-whisper's own
  reads every row back to Python at every token, and bounds the timestamps by a position
  in the row instead of the last timestamp token, so a segment could run backwards);
- rows whose text ended leave the batch (their tokens, features and caches) once a quarter
  of the batch has ended, instead of decoding end-of-text until the longest row is done.

MLX keeps freed buffers in a cache of its own for reuse; it is emptied after every batch
(``mx.clear_cache()``), so that memory stays flat in a file's length. Windows are always
30 s here: mlx-whisper's encoder takes no shorter ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map
from mlx_whisper.audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, log_mel_spectrogram, mel_filters
from mlx_whisper.decoding import ApplyTimestampRules, DecodingOptions, DecodingTask
from mlx_whisper.load_models import load_model
from mlx_whisper.tokenizer import get_tokenizer

from daemon.audio import SAMPLE_RATE, Chunk
from daemon.engines.base import ChunkResult, EngineInfo
from daemon.engines.mlx_convert import mlx_folder
from daemon.engines.models import whisper_cache_dir
from daemon.engines.transcribing import (
    LEAVE_SHARE, MEL_PAD_SAMPLES, SAMPLING_SEED, batched, compact, token_limit, transcribe_windows, with_fallback,
)
from daemon.errors import ModelError

log = logging.getLogger(__name__)

NAME = "mlx-whisper"
BEST_OF = 5  # samples per window at a fallback temperature, as whisper.transcribe


def metal_available() -> bool:
    """Whether MLX can run on an Apple GPU here."""
    try:
        return bool(mx.metal.is_available())
    except Exception:  # a build without Metal
        return False


def pick_device(requested: str, *, metal: Callable[[], bool] = metal_available) -> str:
    """``auto`` and ``mps`` are the Apple GPU where MLX has it, else the CPU (``mps`` with a
    warning); ``cuda`` is not MLX's (whisperd installs no CUDA build of it): the CPU."""
    requested = (requested or "auto").lower()
    if requested in ("auto", "mps") and metal():
        return "mps"
    if requested not in ("auto", "cpu"):
        log.warning("MLX cannot use device %s here; using the CPU", requested, extra={"action": "model_load"})
    return "cpu"


def pick_precision(device: str, requested: str) -> str:
    """fp16 on the GPU; fp32 on the CPU, where MLX's fp16 products are slower (docs/decisions.md).
    bf16 and int8 are the torch CPU engine's modes: here they become the device's default."""
    requested = (requested or "auto").lower()
    if requested in ("fp16", "fp32"):
        return requested
    if requested not in ("auto",):
        log.warning("precision %s is not an MLX mode; using the default", requested, extra={"action": "model_load"})
    return "fp16" if device == "mps" else "fp32"


class MlxEngine:
    """Engine over mlx-whisper. ``checkpoint`` is what ``models.resolve_checkpoint`` returned;
    it is converted once into an MLX folder in ``cache_dir`` (see ``mlx_convert``)."""

    def __init__(
        self,
        checkpoint: Path | str,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        name: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        device = pick_device(device)
        precision = pick_precision(device, precision)
        mx.set_default_device(mx.gpu if device == "mps" else mx.cpu)
        self.batch_size = max(1, batch_size)
        folder = mlx_folder(checkpoint, Path(cache_dir or whisper_cache_dir()), precision)
        self.dtype = mx.float16 if precision == "fp16" else mx.float32
        try:
            self.model = load_model(str(folder), dtype=self.dtype)
        except Exception as exc:
            raise ModelError(f"the MLX copy of the model at {str(folder)!r} could not be loaded ({exc}); delete the folder to convert it again") from exc
        _settle(self.model)
        self.info = EngineInfo(NAME, name or str(checkpoint), device, precision)
        self._tokenizers: dict[tuple[str | None, str], Any] = {}

    # ------------------------------------------------------------------ the Engine interface

    def share(self, seconds: float, language: str | None) -> float:
        return 1.0  # every window is a full 30 s one

    def prepare(self, chunk: Chunk, language: str | None) -> None:
        return None

    def detect_language(self, audio: np.ndarray) -> dict[str, float]:
        """The probability of each language the model knows for ``audio`` (up to 30 s of speech),
        as ``whisper.detect_language`` gives it: the decoder's first step after start-of-transcript,
        over the language tokens. An English-only model knows English alone."""
        if not self.model.is_multilingual:
            return {"en": 1.0}
        tokenizer = self._tokenizer(None, "transcribe")
        try:
            features = self.model.encoder(self._mel([audio]))
            logits = self.model.logits(mx.array([[tokenizer.sot]]), features)[0, 0].astype(mx.float32)
            probs = mx.softmax(logits[mx.array(list(tokenizer.all_language_tokens))], axis=-1).tolist()
        finally:
            mx.clear_cache()
        return dict(zip(tokenizer.all_language_codes, probs))

    def transcribe(
        self, chunks: Sequence[Chunk], *, language: str | None, task: str, prompt: str | None = None, words: bool = False
    ) -> list[ChunkResult]:
        """``prompt`` goes to the decoder before every window, as with openai-whisper (its echo
        filter and untimed-window retry are that engine's alone for now); word timings are not
        available here yet, and asking for them fails the batch with a plain reason."""
        if words:
            raise ModelError(
                "word timings (words: true) are not available with model.engine mlx yet; "
                "set model.engine: openai-whisper, or words: false for this folder"
            )
        if not chunks:
            return []
        if not self.model.is_multilingual:
            language = "en"
        prompt = prompt.strip() if prompt and prompt.strip() else None
        return transcribe_windows(
            chunks,
            decode=lambda audios: self._decode_audio(audios, language, task, prompt),
            batches=lambda windows: batched(windows, chunks, self.batch_size, lambda _s: 1.0),
            tokenizer=lambda lang: self._tokenizer(lang, task),
        )

    def memory_bytes(self) -> int | None:
        """What MLX holds in the GPU's memory (weights and live arrays), which a process's RSS
        does not show; None on the CPU, where RSS does."""
        if self.info.device == "cpu":
            return None
        return int(mx.get_active_memory())

    def close(self) -> None:
        self.model = None
        self._tokenizers.clear()
        try:
            mx.clear_cache()
        except Exception:  # freeing a cache is best effort
            pass

    # ------------------------------------------------------------------ decoding

    def _tokenizer(self, language: str | None, task: str) -> Any:
        key = (language, task)
        if key not in self._tokenizers:
            m = self.model
            self._tokenizers[key] = get_tokenizer(m.is_multilingual, num_languages=m.num_languages, language=language or "en", task=task)
        return self._tokenizers[key]

    def _mel(self, windows: Sequence[np.ndarray]) -> Any:
        """Log-mel windows, (batch, 3000 frames, mels), as the openai-whisper engine builds them
        (see its ``_mel``): the audio's spectrogram, cut to the audio's frames and padded with
        zeros in the mel domain to 30 s."""
        mels = []
        for audio in windows:
            samples = np.ascontiguousarray(audio[:N_SAMPLES], dtype=np.float32)
            mel = log_mel_spectrogram(samples, self.model.dims.n_mels, padding=MEL_PAD_SAMPLES)
            content = min(N_FRAMES, mel.shape[0] - MEL_PAD_SAMPLES // HOP_LENGTH)
            mels.append(mx.pad(mel[:content], [(0, N_FRAMES - content), (0, 0)]))
        return mx.stack(mels).astype(self.dtype)

    def _decode_audio(self, windows: Sequence[np.ndarray], language: str | None, task: str, prompt: str | None = None) -> list[Any]:
        """Encode a batch of windows once, decode it with fallback; MLX's buffer cache is
        emptied after the batch."""
        limit = token_limit(max(len(w) for w in windows) / SAMPLE_RATE, self.model.dims.n_text_ctx // 2)
        try:
            features = self.model.encoder(self._mel(windows))
            mx.eval(features)

            def decode(rows: list[int], temperature: float) -> list[Any]:
                part = features if len(rows) == features.shape[0] else features[mx.array(rows)]
                return self._decode(part, temperature, language, task, prompt, limit)

            return with_fallback(len(windows), decode)
        finally:
            features = None
            mx.clear_cache()

    def _decode(
        self, features: Any, temperature: float, language: str | None, task: str, prompt: str | None = None,
        sample_len: int | None = None,
    ) -> list[Any]:
        fp16 = self.dtype == mx.float16
        if temperature == 0:
            options = DecodingOptions(task=task, language=language, temperature=0.0, fp16=fp16, prompt=prompt,
                                      sample_len=sample_len)
            return ShrinkingTask(self.model, options).run(features)
        # sampling: each window alone and seeded, so that its text depends on it alone
        options = DecodingOptions(task=task, language=language, temperature=temperature, best_of=BEST_OF, fp16=fp16, prompt=prompt,
                                  sample_len=sample_len)
        out = []
        for i in range(features.shape[0]):
            mx.random.seed(SAMPLING_SEED)
            out.append(SampledTask(self.model, options).run(features[i : i + 1])[0])
        return out


def _settle(model: Any) -> None:
    """Evaluate every array the model holds, its computed ones included (the encoder's positional
    embedding, the decoder's mask), not only its weights. MLX's streams belong to a thread, and an
    array still to be computed refers to the stream of the thread that made it: the worker loads
    the model in a thread of its own and transcribes on another, which would then fail ("There is
    no Stream(cpu, 0) in current thread")."""
    arrays = [v for m in model.modules() for v in [*m.values(), *vars(m).values()] if isinstance(v, mx.array)]
    mx.eval(model.parameters(), *arrays, mel_filters(model.dims.n_mels))  # the filters: loaded once, kept


class SampledTask(DecodingTask):
    """mlx-whisper's ``DecodingTask`` with whisper's own timestamp rules, for all rows at once:
    for sampling one window, whose features the ``best_of`` samples share by broadcasting."""

    def __init__(self, model: Any, options: Any) -> None:
        super().__init__(model, options)
        self.logit_filters = _with_batch_rules(self.logit_filters, model.dims.n_vocab)


def _with_batch_rules(filters: list[Any], n_vocab: int) -> list[Any]:
    return [
        BatchTimestampRules(f.tokenizer, f.sample_begin, f.max_initial_timestamp_index, n_vocab)
        if type(f) is ApplyTimestampRules else f
        for f in filters
    ]


class BatchTimestampRules:
    """whisper's ``ApplyTimestampRules`` for every row at once, in MLX operations (the same
    rules as ``shrinking.BatchTimestampRules`` for torch; a test holds them to whisper's own)."""

    def __init__(self, tokenizer: Any, sample_begin: int, max_initial_timestamp_index: int | None, n_vocab: int) -> None:
        self.sample_begin = sample_begin
        begin, eot = tokenizer.timestamp_begin, tokenizer.eot
        self.begin = begin
        ids = np.arange(n_vocab)
        base = np.zeros(n_vocab, np.float32)
        if tokenizer.no_timestamps is not None:
            base[tokenizer.no_timestamps] = -np.inf
        first = base.copy()
        first[:begin] = -np.inf  # the first token is a timestamp
        if max_initial_timestamp_index is not None:
            first[begin + max_initial_timestamp_index + 1 :] = -np.inf
        self.base, self.first = mx.array(base), mx.array(first)
        self.ids = mx.array(ids)
        self.is_time = mx.array(ids >= begin)
        self.is_text = mx.array(ids < begin)
        self.below_eot = mx.array(ids < eot)

    def apply(self, logits: Any, tokens: Any) -> Any:
        begin = self.begin
        sampled = tokens[:, self.sample_begin :]
        n = sampled.shape[1]
        neg = mx.array(-np.inf, dtype=logits.dtype)
        logits = logits + (self.first if n == 0 else self.base)
        if n > 0:
            # timestamps come in pairs, except directly before end-of-text
            last_time = sampled[:, -1] >= begin
            before_time = sampled[:, -2] >= begin if n >= 2 else mx.ones_like(last_time)
            pair = last_time & before_time
            opened = last_time & ~before_time
            logits = mx.where(pair[:, None] & self.is_time[None], neg, logits)
            logits = mx.where(opened[:, None] & self.below_eot[None], neg, logits)
            # timestamps never decrease, and a segment has a length
            where = mx.max(mx.where(sampled >= begin, mx.arange(n)[None], -1), axis=1)
            last = mx.take_along_axis(sampled, mx.maximum(where, 0)[:, None], axis=1)[:, 0]
            bound = mx.where(where >= 0, last + (~opened).astype(last.dtype), begin)
            logits = mx.where(self.is_time[None] & (self.ids[None] < bound[:, None]), neg, logits)
        # a timestamp when the timestamps together are likelier than any one text token
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        time_logprob = mx.logsumexp(logprobs[:, begin:], axis=-1)
        text_logprob = mx.max(logprobs[:, :begin], axis=-1)
        return mx.where((time_logprob > text_logprob)[:, None] & self.is_text[None], neg, logits)


class ShrinkingTask(DecodingTask):
    """Greedy decoding with rows leaving the batch once a quarter of it has ended
    (see the module's text); the tokens are the ones mlx-whisper's loop picks."""

    def __init__(self, model: Any, options: Any) -> None:
        super().__init__(model, options)
        self.logit_filters = _with_batch_rules(self.logit_filters, model.dims.n_vocab)

    def _main_loop(self, audio_features: Any, tokens: Any) -> tuple[Any, Any, Any]:
        if self.n_group != 1:
            return super()._main_loop(audio_features, tokens)
        eot = self.tokenizer.eot
        n_batch = tokens.shape[0]
        rows = list(range(n_batch))  # the rows still decoding, in batch order
        running = mx.zeros(n_batch)
        finished: dict[int, tuple[Any, Any]] = {}  # row → (its tokens, its sum of log-probabilities)
        no_speech = mx.full((n_batch,), np.nan)
        inputs = tokens
        for i in range(self.sample_len):
            logits = self.inference.logits(inputs, audio_features)
            if i == 0 and self.tokenizer.no_speech is not None:
                no_speech = mx.softmax(logits[:, self.sot_index], axis=-1)[:, self.tokenizer.no_speech]
            logits = logits[:, -1]
            for logit_filter in self.logit_filters:
                logits = logit_filter.apply(logits, tokens)
            tokens, _, running = self.decoder.update(tokens, logits, running)
            ended = (tokens[:, -1] == eot).tolist()
            if all(ended) or tokens.shape[-1] > self.n_ctx:
                break
            if sum(ended) * LEAVE_SHARE >= len(ended):
                for k, e in enumerate(ended):
                    if e:
                        finished[rows[k]] = (tokens[k], running[k])
                keep = compact(ended)
                rows = [rows[k] for k in keep]
                index = mx.array(keep)
                tokens, running, audio_features = tokens[index], running[index], audio_features[index]
                self.inference.kv_cache = tree_map(lambda x: x[index], self.inference.kv_cache)
            inputs = tokens[:, -1:]
        for k, row in enumerate(rows):
            finished[row] = (tokens[k], running[k])
        width = max(t.shape[0] for t, _ in finished.values())
        out = [mx.pad(finished[r][0], [(0, width - finished[r][0].shape[0])], constant_values=eot) for r in range(n_batch)]
        return mx.stack(out), mx.stack([finished[r][1] for r in range(n_batch)]), no_speech
