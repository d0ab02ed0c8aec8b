"""Streamed decoding (PyAV) and voice-activity-aligned chunking (Silero VAD)."""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

SAMPLE_RATE = 16000
MAX_CHUNK_SECONDS = 30.0  # Whisper's window
# Chunks are cut a little shorter than the window: when speech fills all 30 s, Whisper tends to stop
# before the last words (docs/decisions.md, "Chunks cut at pauses").
CHUNK_SECONDS = 24.0


@dataclass(frozen=True)
class Chunk:
    """A stretch of speech of at most 30 s, cut at pauses."""

    index: int  # 0-based position in the file's sequence of chunks
    start: float  # seconds into the file
    end: float  # seconds into the file; the next chunk starts at or after this
    audio: np.ndarray = field(repr=False, compare=False)  # float32 mono 16 kHz
    key: str = ""  # which file it came from (opaque to the engine; used to regroup batches)
    source: str = ""  # the path of the file it came from, for messages (and the fake engine's faults)


log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- opening and probing


@dataclass(frozen=True)
class AudioInfo:
    duration: float | None  # seconds, when the container says
    codec: str  # e.g. "aac", "mp3", "pcm_s16le"
    sample_rate: int  # of the source stream, before resampling
    container: str = ""  # FFmpeg's demuxer name, e.g. "wav", "mov,mp4,m4a,3gp,3g2,mj2"


# Signatures of containers FFmpeg reads: a file that starts like one of these
# but will not open is a damaged recording, not "not audio".
_MAGIC: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"wide"), (4, b"free"),
    (0, b"RIFF"), (0, b"RF64"), (0, b"FORM"), (0, b"fLaC"), (0, b"OggS"), (0, b"ID3"),
    (0, b"\x1a\x45\xdf\xa3"), (0, b"caff"), (0, b"#!AMR"), (0, b"0&\xb2u"),
)


def _looks_like_media(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if any(head[at : at + len(sig)] == sig for at, sig in _MAGIC):
        return True
    # MPEG audio (mp3) or ADTS (aac) frame sync
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def _open(path: str | Path):
    """Open ``path`` and return (container, its first audio stream)."""
    import av

    from daemon.errors import CorruptAudioError, EmptyFileError, NoAudioStreamError, NotAudioError

    path = Path(path)
    if path.stat().st_size == 0:  # raises FileNotFoundError for a missing file: the caller decides
        raise EmptyFileError()
    try:
        container = av.open(str(path), mode="r")
    except OSError:
        raise
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        if _looks_like_media(path):
            raise CorruptAudioError() from exc
        raise NotAudioError() from exc
    if not container.streams.audio:
        container.close()
        raise NoAudioStreamError()
    return container, container.streams.audio[0]


def probe(path: str | Path) -> AudioInfo:
    """Describe the audio of ``path``, decoding its first moments to prove it can be read.

    Raises NotAudioError, NoAudioStreamError or CorruptAudioError (from daemon.errors).
    """
    import av

    from daemon.errors import CorruptAudioError

    container, stream = _open(path)
    try:
        ctx = stream.codec_context
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        info = AudioInfo(duration, ctx.name, int(ctx.sample_rate or 0), container.format.name)
        decoded = errors = packets = 0
        try:
            for packet in container.demux(stream):
                packets += 1
                try:
                    decoded += sum(f.samples for f in packet.decode())
                except av.error.FFmpegError:
                    errors += 1
                if decoded >= 2 * (ctx.sample_rate or SAMPLE_RATE) or packets >= 200:
                    break
        except av.error.FFmpegError as exc:
            if isinstance(exc, OSError):
                raise
            raise CorruptAudioError() from exc
        if errors and not decoded:
            raise CorruptAudioError()
        if not decoded:
            return AudioInfo(0.0, info.codec, info.sample_rate, info.container)
        return info
    finally:
        container.close()


# --------------------------------------------------------------------------- streamed decoding

_PREROLL_S = 0.5  # decode this much before a seek target, so the decoder and resampler settle
_MAX_BAD_SHARE = 0.1  # give up when more than this share of packets (after 20) will not decode
_GAP_MIN = SAMPLE_RATE // 50  # a jump in timestamps longer than this (20 ms) is filled with silence...
_GAP_MAX = 600 * SAMPLE_RATE  # ...up to this; a longer jump is a timestamp reset, not lost audio


class _NeedFullDecode(Exception):
    """A seek could not be placed exactly; decode from the beginning instead."""


def _resampler():
    import av

    return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)


def _frames(path: str | Path, start: int, seek: bool) -> Iterator[np.ndarray]:
    """Float32 mono 16 kHz pieces of ``path`` from sample ``start`` on, in order.

    Sample positions come from the first decoded frame's timestamp (relative to
    the stream's start) and are counted from there, so every sample lands where
    an uninterrupted decode would put it.
    """
    if seek and start > 0:
        try:
            yield from _decode(path, start, seek=True)
            return
        except _NeedFullDecode:
            log.debug("seek in %s was not exact; decoding from the start", path, extra={"action": "decode"})
    yield from _decode(path, start, seek=False)


def _decode(path: str | Path, start: int, seek: bool) -> Iterator[np.ndarray]:
    import av

    from daemon.errors import CorruptAudioError

    container, stream = _open(path)
    try:
        tb = stream.time_base
        origin = stream.start_time or 0
        sought = False
        if seek and tb is not None:
            target = start / SAMPLE_RATE - _PREROLL_S
            if target > 0:
                try:
                    container.seek(origin + int(target / tb), stream=stream, backward=True, any_frame=False)
                    sought = True
                except av.error.FFmpegError as exc:
                    raise _NeedFullDecode() from exc
        resampler = _resampler()
        pos: int | None = None
        packets = bad = 0
        decoded_any = False

        def emit(pieces: list[np.ndarray]) -> Iterator[np.ndarray]:
            nonlocal pos
            for arr in pieces:
                n = len(arr)
                assert pos is not None
                if pos + n > start:
                    yield arr[max(0, start - pos) :]
                pos += n

        def resample(frame) -> list[np.ndarray]:
            nonlocal resampler
            try:
                out = resampler.resample(frame)
            except ValueError:  # the stream changed layout or rate mid-way: start a fresh resampler
                tail = resampler.resample(None)
                resampler = _resampler()
                out = list(tail) + list(resampler.resample(frame))
            return [np.array(f.to_ndarray(), dtype=np.float32).reshape(-1) for f in out]

        for packet in container.demux(stream):
            packets += 1
            try:
                frames = packet.decode()
            except av.error.FFmpegError:  # a damaged packet (decoders report it with assorted codes)
                bad += 1
                if bad > 20 and bad > _MAX_BAD_SHARE * packets:
                    raise CorruptAudioError() from None
                continue
            for frame in frames:
                at = None if frame.pts is None or tb is None else round(float((frame.pts - origin) * tb) * SAMPLE_RATE)
                if pos is None:
                    if at is None:
                        if sought:
                            raise _NeedFullDecode()
                        at = 0
                    elif sought and at > start:
                        raise _NeedFullDecode()
                    pos = at
                elif at is not None and _GAP_MIN < at - pos < _GAP_MAX:
                    # audio went missing (damaged or dropped packets): silence keeps later times right
                    yield from emit([np.zeros(at - pos, np.float32)])
                decoded_any = True
                yield from emit(resample(frame))
        if pos is not None:
            yield from emit([np.array(f.to_ndarray(), dtype=np.float32).reshape(-1) for f in resampler.resample(None)])
        if not decoded_any and bad:
            raise CorruptAudioError()
    except av.error.FFmpegError as exc:
        if isinstance(exc, OSError):
            raise
        raise CorruptAudioError() from exc
    finally:
        container.close()


def iter_pcm(path: str | Path, start: float = 0.0, block_seconds: float = 5.0) -> Iterator[np.ndarray]:
    """Decode ``path`` as float32 mono 16 kHz blocks of ``block_seconds`` (the last may be shorter).

    Starts at ``start`` seconds: seeks there when the container allows it, then
    drops the samples before ``start`` exactly. Holds one block at a time.
    """
    begin = max(0, round(start * SAMPLE_RATE))
    size = max(1, round(block_seconds * SAMPLE_RATE))
    pending: list[np.ndarray] = []
    have = 0
    for piece in _frames(path, begin, seek=True):
        pending.append(piece)
        have += len(piece)
        if have >= size:
            joined = np.concatenate(pending)
            cut = (len(joined) // size) * size
            for i in range(0, cut, size):
                yield joined[i : i + size]
            pending = [joined[cut:]] if cut < len(joined) else []
            have = len(joined) - cut
    if have:
        yield np.concatenate(pending)


# --------------------------------------------------------------------------- voice activity


def _silero_dir() -> Path:
    from daemon.errors import ModelError

    # find_spec does not import silero_vad (its import pulls in torch and changes torch's thread count)
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the silero-vad package is not installed, so speech cannot be found; reinstall whisperd")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


class Vad:
    """Silero VAD on onnxruntime: one session, reusable across files and threads.

    ``probabilities`` returns one speech probability per 32 ms frame (512
    samples), starting from a fresh model state each call.
    """

    FRAME = 512
    CONTEXT = 64
    _BLOCK = 512  # frames per call of the sequence model

    def __init__(self, model_path: str | Path | None = None, *, threads: int = 1) -> None:
        import onnxruntime as ort

        from daemon.errors import ModelError

        if model_path is None:
            data = _silero_dir()
            model_path = data / "silero_vad_16k_sequence.onnx"
            if not model_path.is_file():
                model_path = data / "silero_vad.onnx"
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(f"Silero VAD's model file {str(model_path)!r} is missing; reinstall whisperd")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.sequence = {i.name for i in self.session.get_inputs()} == {"input", "h", "c"}
        self.path = model_path

    def _rows(self, audio: np.ndarray) -> np.ndarray:
        """(frames, CONTEXT + FRAME): each frame prefixed by the tail of the previous one."""
        n = -(-len(audio) // self.FRAME)
        frames = np.zeros((n, self.FRAME), dtype=np.float32)
        frames.reshape(-1)[: len(audio)] = audio
        rows = np.zeros((n, self.CONTEXT + self.FRAME), dtype=np.float32)
        rows[:, self.CONTEXT :] = frames
        if n > 1:
            rows[1:, : self.CONTEXT] = frames[:-1, -self.CONTEXT :]
        return rows

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if not len(audio):
            return np.zeros(0, dtype=np.float32)
        rows = self._rows(audio)
        out = []
        if self.sequence:
            h = np.zeros((1, 1, 128), dtype=np.float32)
            c = np.zeros((1, 1, 128), dtype=np.float32)
            for i in range(0, len(rows), self._BLOCK):
                probs, h, c = self.session.run(None, {"input": rows[i : i + self._BLOCK], "h": h, "c": c})
                out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
        else:
            state = np.zeros((2, 1, 128), dtype=np.float32)
            sr = np.array(SAMPLE_RATE, dtype=np.int64)
            for row in rows:
                prob, state = self.session.run(None, {"input": row[None, :], "state": state, "sr": sr})
                out.append(np.asarray(prob, dtype=np.float32).reshape(-1))
        return np.concatenate(out)


_default_vad: Vad | None = None
_default_lock = threading.Lock()


def default_vad() -> Vad:
    global _default_vad
    with _default_lock:
        if _default_vad is None:
            _default_vad = Vad()
        return _default_vad


# --------------------------------------------------------------------------- chunk planning

_THRESHOLD = 0.5  # speech starts at this probability
_NEG_THRESHOLD = 0.35  # and ends below this one
_MIN_SPEECH_FRAMES = 8  # 0.256 s: shorter blips are not speech
_MIN_SILENCE_FRAMES = 3  # 0.096 s: a shorter dip does not end speech
_PAD = int(0.4 * SAMPLE_RATE)  # kept around speech so words are not clipped
_MAX_GAP = int(5.0 * SAMPLE_RATE)  # a longer pause ends the chunk instead of being carried inside it
_REANCHOR = int(2.0 * SAMPLE_RATE)  # speech starting later than this in a window gets a window of its own
_LOOKAHEAD = int(2.0 * SAMPLE_RATE)  # audio looked at beyond the chunk budget
_OVERLAP = int(1.0 * SAMPLE_RATE)  # when skipping silence, look again at the last second
_WHOLE = int(MAX_CHUNK_SECONDS * SAMPLE_RATE)  # the end of a file: speech that fits one window is not cut


def speech_regions(probs: np.ndarray) -> list[tuple[int, int]]:
    """Speech as (start, end) frame ranges, end exclusive, with hysteresis."""
    regions: list[tuple[int, int]] = []
    start = -1
    quiet_from = -1
    for i, p in enumerate(probs.tolist()):
        if p >= _THRESHOLD:
            quiet_from = -1
            if start < 0:
                start = i
        elif start >= 0 and p < _NEG_THRESHOLD:
            if quiet_from < 0:
                quiet_from = i
            if i - quiet_from + 1 >= _MIN_SILENCE_FRAMES:
                regions.append((start, quiet_from))
                start = quiet_from = -1
    if start >= 0:
        regions.append((start, quiet_from if quiet_from >= 0 else len(probs)))
    return [(s, e) for s, e in regions if e - s >= _MIN_SPEECH_FRAMES]


@dataclass(frozen=True)
class _Plan:
    """What to do with one window: a chunk [start, end) or, with no chunk, move on by ``advance``.
    All in samples from the window's start."""

    start: int = 0
    end: int = 0
    advance: int = 0


def plan_window(probs: np.ndarray, n: int, eof: bool, max_chunk: int) -> _Plan:
    """Choose the next chunk in a window of ``n`` samples whose VAD frames are ``probs``.

    Depends on nothing but the window, so the same window always gives the same
    answer: that is what makes chunking restartable from any chunk's end.
    """
    f = Vad.FRAME
    regions = [(s * f, min(e * f, n)) for s, e in speech_regions(probs)]
    if not regions:
        return _Plan(advance=n if eof else max(f, n - _OVERLAP))
    start = max(0, regions[0][0] - _PAD)
    if start > _REANCHOR:
        return _Plan(advance=start)
    if eof:
        # the rest of the file fits one window: decoded whole, as whisper.transcribe decodes a short
        # file (a voice memo of 25 s is one utterance, and a cut in it costs the words beside it)
        end = min(regions[-1][1] + _PAD, n)
        if end - start <= _WHOLE and all(b[0] - a[1] <= _MAX_GAP for a, b in zip(regions, regions[1:])):
            return _Plan(start, end)
    budget = start + max_chunk
    candidates: list[tuple[int, int]] = []  # (cut, length of the pause it falls in)
    for i, (s, e) in enumerate(regions):
        if e > budget or (e == n and not eof):
            break  # this stretch of speech does not fit: cut before it
        if i + 1 == len(regions):
            # the last speech in the window; anything after the window starts beyond the budget
            return _Plan(start, min(e + _PAD, n, budget))
        gap = regions[i + 1][0] - e
        cut = min(e + _PAD, e + gap // 2, budget)
        if gap > _MAX_GAP:
            return _Plan(start, cut)
        candidates.append((cut, gap))
    if candidates:
        # the longest pause (1 s and longer count alike) in the budget's second half, the later the better
        late = [c for c in candidates if c[0] - start >= max_chunk // 2] or candidates
        cut, _ = max(late, key=lambda c: (min(c[1], SAMPLE_RATE), c[0]))
        return _Plan(start, cut)
    # one stretch of speech longer than the budget: cut where it is quietest in the budget's second half
    lo = (start + max_chunk // 2) // f
    hi = max(lo + 1, min(budget // f, len(probs)))
    smooth = np.convolve(probs, np.ones(3, dtype=np.float32) / 3, mode="same")
    quiet = lo + int(np.argmin(smooth[lo:hi]))
    return _Plan(start, min(budget, (quiet + 1) * f))


# --------------------------------------------------------------------------- windows over a file

# Containers whose seeks FFmpeg places exactly; others (mp3, raw AAC) are read in one forward pass.
_EXACT_SEEK = {"wav", "w64", "flac", "ogg", "matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2", "aiff", "caf", "au"}


class _SeekWindows:
    """Each window decoded afresh from a seek: a window depends only on its position. Once a
    window reaches the end of the file, the windows after it are cut from it instead (a short
    file is then decoded once, not twice)."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.tail: np.ndarray | None = None  # the window that reached the end of the file
        self.tail_start = 0

    def window(self, pos: int, n: int) -> np.ndarray:
        if self.tail is not None and pos >= self.tail_start:
            return self.tail[pos - self.tail_start : pos - self.tail_start + n]
        audio = self._decode(pos, n)
        if len(audio) < n:
            self.tail, self.tail_start = audio, pos
        return audio

    def _decode(self, pos: int, n: int) -> np.ndarray:
        pieces: list[np.ndarray] = []
        have = 0
        gen = _frames(self.path, pos, seek=True)
        try:
            for piece in gen:
                pieces.append(piece)
                have += len(piece)
                if have >= n:
                    break
        finally:
            gen.close()
        return np.concatenate(pieces)[:n] if pieces else np.zeros(0, np.float32)

    def close(self) -> None:
        pass


class _StreamWindows:
    """Windows cut from one forward decode that starts at the file's beginning."""

    def __init__(self, path: str | Path, start: int) -> None:
        self.gen = _frames(path, start, seek=False)
        self.buf = np.zeros(0, np.float32)
        self.buf_start = start

    def window(self, pos: int, n: int) -> np.ndarray:
        kept = self.buf[pos - self.buf_start :] if pos >= self.buf_start else self.buf
        behind = max(0, pos - (self.buf_start + len(self.buf)))  # still to be read and dropped
        pieces = [kept]
        have = len(kept)
        if have < n:
            for piece in self.gen:
                if behind:
                    if len(piece) <= behind:
                        behind -= len(piece)
                        continue
                    piece, behind = piece[behind:], 0
                pieces.append(piece)
                have += len(piece)
                if have >= n:
                    break
        self.buf = np.concatenate(pieces)
        self.buf_start = pos
        return self.buf[:n]

    def close(self) -> None:
        self.gen.close()


def iter_chunks(
    path: str | Path,
    *,
    start_at: float = 0.0,
    key: str = "",
    max_chunk_s: float = CHUNK_SECONDS,
    vad: Vad | None = None,
    first_index: int = 0,
    container_format: str | None = None,
) -> Iterator[Chunk]:
    """Speech chunks of ``path`` from ``start_at`` seconds on, each at most ``max_chunk_s`` long.

    Silence between chunks is skipped. Each chunk is chosen by looking only at
    audio from the previous chunk's end onward, so
    ``iter_chunks(path, start_at=c.end, first_index=c.index + 1)`` yields
    exactly the chunks that followed ``c``. Memory stays bounded by one window.
    ``container_format``: the container's name as ``probe`` found it, which spares
    opening the file once more to learn it.
    """
    vad = vad or default_vad()
    max_chunk = int(round(min(max_chunk_s, MAX_CHUNK_SECONDS) * SAMPLE_RATE))
    width = _REANCHOR + max_chunk + _LOOKAHEAD  # what a chunk is chosen from
    # read this far, to see whether the rest of the file fits one window (see plan_window)
    reach = _REANCHOR + max(max_chunk, _WHOLE) + _LOOKAHEAD
    pos = max(0, round(start_at * SAMPLE_RATE))
    if container_format is None:
        container, _ = _open(path)
        try:
            container_format = container.format.name
        finally:
            container.close()
    exact = container_format in _EXACT_SEEK
    windows = _SeekWindows(path) if exact else _StreamWindows(path, pos)
    index = first_index
    try:
        while True:
            audio = windows.window(pos, reach)
            if len(audio) == 0:
                return
            eof = len(audio) < reach
            if not eof:
                audio = audio[:width]  # the file goes on: the chunk is chosen from the window alone
            n = len(audio)
            plan = plan_window(vad.probabilities(audio), n, eof, max_chunk)
            if plan.end > plan.start:
                yield Chunk(
                    index=index,
                    start=(pos + plan.start) / SAMPLE_RATE,
                    end=(pos + plan.end) / SAMPLE_RATE,
                    audio=audio[plan.start : plan.end].copy(),  # not a view: the window is let go
                    key=key,
                    source=str(path),
                )
                index += 1
                pos += plan.end
            elif plan.advance > 0:
                if eof and plan.advance >= n:
                    return
                pos += plan.advance
            else:
                return
    finally:
        windows.close()
