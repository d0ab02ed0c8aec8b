"""The openai-whisper engine's second stage: windows of audio become audio features (log-mel
spectrograms, then the encoder), with fit windows on a CPU, short windows of one length encoded
together in bf16, and the features of windows encoded ahead (``Encoder.prepare``) kept for the
batch they join.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from daemon.audio import SAMPLE_RATE
from daemon.engines.threads import torch_threads
from daemon.engines.transcribing import MEL_PAD_SAMPLES

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

Key = tuple[int, int]  # see ``window_key``


class Encoder:
    """Audio features of windows for ``model`` on ``device`` in ``precision``. ``fit_windows``:
    a short window is encoded cut to its length (CPU only: the padding of fit windows is masked by
    the CPU's greedy token step alone). Holds what ``prepare`` and ``keep`` set aside for the next
    batch until ``clear``."""

    def __init__(self, model: Any, device: str, precision: str, *, fit_windows: bool) -> None:
        self.model, self.device, self.precision = model, device, precision
        self.fit_windows = fit_windows
        # on a CPU in bf16, short windows of one length are encoded several at a time: alone, their
        # products are too small for the matrix units (see ``features``, ENCODE_GROUP_FRAMES)
        self.group_frames = ENCODE_GROUP_FRAMES if precision == "bf16" else 0
        # features computed ahead, for the next batch (CPU, fit windows): key -> (audio, frames, features)
        self.early: dict[Key, tuple[np.ndarray, int, Any]] = {}
        # windows ``prepare`` took whose group is not complete yet: length -> [(key, audio, mel)]
        self.waiting: dict[int, list[tuple[Key, np.ndarray, Any]]] = {}

    def clear(self) -> None:
        """Let go of what was set aside and not used (a window cut shorter, say)."""
        self.early.clear()
        self.waiting.clear()

    def window_frames(self, seconds: float, language: str | None) -> int:
        """Mel frames of a window of ``seconds`` to encode: all 3,000 (30 s), or with fit windows
        the audio's length plus a margin, in steps of FIT_STEP_FRAMES (even: the encoder halves
        it). Not when the language is to be detected: whisper detects it on unmasked features."""
        from whisper.audio import HOP_LENGTH, N_FRAMES

        if not self.fit_windows or language is None:
            return N_FRAMES
        seconds = max(FIT_MIN_SECONDS, seconds + FIT_MARGIN_SECONDS)
        return min(N_FRAMES, FIT_STEP_FRAMES * int(np.ceil(seconds * SAMPLE_RATE / HOP_LENGTH / FIT_STEP_FRAMES)))

    def frames(self, windows: Sequence[np.ndarray], language: str | None) -> list[int]:
        """``window_frames`` of each window."""
        return [self.window_frames(len(audio) / SAMPLE_RATE, language) for audio in windows]

    def mel(self, windows: Sequence[np.ndarray]) -> Any:
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
        return torch.stack(mels).to(self.device)

    def features(self, windows: Sequence[np.ndarray], frames: list[int] | None = None) -> Any:
        """Audio features for a batch of windows, computed once per batch: temperature
        fallbacks reuse them. A GPU encodes the whole batch at once. On a CPU the encoder takes
        short windows of one length together, ``group_size`` at a time (one in fp32: it is
        compute-bound there and a batch gains nothing, its activations only growing out of the
        caches, the features bit for bit the same). Each window is encoded from its first ``frames[i]`` mel
        frames (fit windows; all 3,000 without ``frames``), the features padded with zeros to the
        longest. What ``prepare`` encoded ahead is taken from there, and the windows it left
        waiting for their group are encoded with the rest, so that a window's group is the same
        whether or not it was prepared."""
        import torch
        from whisper.audio import N_FRAMES

        if self.device != "cpu":
            return self.encode(self.mel(windows))
        frames = frames or [N_FRAMES] * len(windows)
        waiting = {key: (n, mel) for n, group in self.waiting.items() for key, _, mel in group}
        self.waiting.clear()
        parts: list[Any] = [None] * len(windows)
        mels: list[Any] = [None] * len(windows)
        for i, (window, n) in enumerate(zip(windows, frames)):
            key = window_key(window)
            hit = self.early.pop(key, None)
            if hit is not None and hit[1] == n:
                parts[i] = hit[2]
            elif key in waiting and waiting[key][0] == n:
                mels[i] = waiting[key][1]
        missing = [i for i in range(len(windows)) if parts[i] is None and mels[i] is None]
        if missing:
            mel = self.mel([windows[i] for i in missing])
            for j, i in enumerate(missing):
                mels[i] = mel[j : j + 1, :, : frames[i]]
        by_length: dict[int, list[int]] = {}
        for i in range(len(windows)):
            if parts[i] is None:
                by_length.setdefault(frames[i], []).append(i)
        for n, same in by_length.items():
            size = self.group_size(n)
            for g in range(0, len(same), size):
                group = same[g : g + size]
                features = self.encode(torch.cat([mels[i] for i in group]))
                for j, i in enumerate(group):
                    parts[i] = features[j : j + 1]
        return padded(parts)

    def group_size(self, frames: int) -> int:
        """How many windows of ``frames`` mel frames are encoded in one call on a CPU."""
        return max(1, self.group_frames // frames)

    def encode(self, mel: Any) -> Any:
        """The encoder's output for a batch of mel windows of one length, in fp32 from bf16."""
        import torch

        precision = self.precision
        x = mel.to(torch.bfloat16) if precision == "bf16" else mel.half() if precision == "fp16" else mel
        if x.shape[-1] == self.model.dims.n_audio_ctx * 2:
            x = self.model.embed_audio(x)
        else:
            x = encode_short(self.model.encoder, x)
        return x.float() if precision == "bf16" else x

    def prepare(self, audio: np.ndarray, frames: int, threads: int) -> None:
        """Set ``audio``'s window (``frames`` mel frames) aside for the next batch: its mel now,
        and once its group is complete (``group_size`` windows of its length), the group's
        features, encoded on ``threads`` threads. May raise: the caller leaves the work to the
        batch then."""
        import torch

        with torch.inference_mode():
            mel = self.mel([audio])[:, :, :frames]
        group = self.waiting.setdefault(frames, [])
        group.append((window_key(audio), audio, mel))
        if len(group) < self.group_size(frames):
            return
        del self.waiting[frames]
        with torch.inference_mode(), torch_threads(threads):
            features = self.encode(torch.cat([m for _, _, m in group]))
        for j, (key, waited, _) in enumerate(group):
            self.early[key] = (waited, frames, features[j : j + 1])

    def keep(self, audio: np.ndarray, frames: int, features: Any) -> None:
        """``audio``'s window's features, computed already, for the next batch."""
        self.early[window_key(audio)] = (audio, frames, features)

    def has(self, audio: np.ndarray) -> bool:
        """Whether ``audio``'s window's features are set aside already."""
        return window_key(audio) in self.early


def padded(parts: list[Any]) -> Any:
    """Windows' features, one tensor each, padded with zeros to the longest and stacked."""
    import torch

    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, width - p.shape[1])) for p in parts])


def window_key(audio: np.ndarray) -> Key:
    """Which samples a window holds: where they start in memory, and how many. A chunk's
    audio and the window ``transcribe`` cuts from its start share both."""
    return audio.__array_interface__["data"][0], len(audio)


def encode_short(encoder: Any, mel: Any) -> Any:
    """whisper's ``AudioEncoder.forward`` for a window shorter than 30 s (which it refuses):
    the positional embedding is cut to the window's length."""
    import torch.nn.functional as F

    x = F.gelu(encoder.conv2(F.gelu(encoder.conv1(mel)))).permute(0, 2, 1)
    x = (x + encoder.positional_embedding[: x.shape[1]]).to(x.dtype)
    for block in encoder.blocks:
        x = block(x)
    return encoder.ln_post(x)
