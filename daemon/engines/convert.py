"""Convert a CTranslate2 Whisper model (``model.bin`` + ``config.json``) into an
openai-whisper checkpoint, so the bundled models (tiny.en, base) work with no download.

The CTranslate2 file is a little-endian stream: u32 binary version, the spec
name, u32 revision, u32 variable count, then for each variable its name, rank,
dimensions, dtype, byte count and raw bytes; finally u32 alias count and
(alias, target) pairs. Strings are a u16 length (counting a trailing NUL), the
UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from daemon.errors import ModelError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BF16 = 5
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


@dataclass(frozen=True)
class CT2Model:
    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ModelError(f"the model file ended early (wanted {n} more bytes)")
    return data


def _u(f: BinaryIO, fmt: str) -> int:
    return struct.unpack("<" + fmt, _read(f, struct.calcsize(fmt)))[0]


def _string(f: BinaryIO) -> str:
    length = _u(f, "H")
    return _read(f, length).rstrip(b"\0").decode("utf-8")


def read_ct2(path: Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` into numpy arrays (bf16 is widened to fp32)."""
    with open(path, "rb") as f:
        return read_ct2_stream(f, str(path))


def read_ct2_stream(f: Any, label: str) -> CT2Model:
    """``read_ct2`` from anything with ``read(n)`` (a model in pieces, read as one stream)."""
    try:
        return _parse(f, label)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{label}: not a readable CTranslate2 model file ({exc})") from exc


def _parse(f: Any, label: str) -> CT2Model:
    version = _u(f, "I")
    if version < 5 or version > 6:
        raise ModelError(f"{label}: CTranslate2 binary version {version} is not supported (5 or 6 expected)")
    spec = _string(f)
    revision = _u(f, "I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(_u(f, "I")):
        name = _string(f)
        rank = _u(f, "B")
        shape = tuple(_u(f, "I") for _ in range(rank))
        dtype = _u(f, "B")
        raw = _read(f, _u(f, "I"))
        if dtype == _BF16:
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif dtype in _DTYPES:
            arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise ModelError(f"{label}: variable {name!r} has unknown dtype code {dtype}")
        variables[name] = arr.reshape(shape)
    aliases = {}
    for _ in range(_u(f, "I")):
        alias = _string(f)
        aliases[alias] = _string(f)
    return CT2Model(version, spec, revision, variables, aliases)


def _layer_map(prefix: str, cross: bool) -> list[tuple[str, str, int | None]]:
    """(ct2 name, whisper name, part of a fused matrix) for one layer."""
    rows: list[tuple[str, str, int | None]] = []
    sa = f"{prefix}/self_attention"
    rows += [(f"{sa}/linear_0", "attn.query", 0), (f"{sa}/linear_0", "attn.key", 1), (f"{sa}/linear_0", "attn.value", 2)]
    rows += [(f"{sa}/linear_1", "attn.out", None), (f"{sa}/layer_norm", "attn_ln", None)]
    if cross:
        ca = f"{prefix}/attention"
        rows += [(f"{ca}/linear_0", "cross_attn.query", None)]
        rows += [(f"{ca}/linear_1", "cross_attn.key", 0), (f"{ca}/linear_1", "cross_attn.value", 1)]
        rows += [(f"{ca}/linear_2", "cross_attn.out", None), (f"{ca}/layer_norm", "cross_attn_ln", None)]
    rows += [(f"{prefix}/ffn/linear_0", "mlp.0", None), (f"{prefix}/ffn/linear_1", "mlp.2", None)]
    rows += [(f"{prefix}/ffn/layer_norm", "mlp_ln", None)]
    return rows


def _count_layers(names: list[str], side: str) -> int:
    found = {int(m.group(2)) for n in names if (m := _LAYER.match(n)) and m.group(1) == side}
    if not found or found != set(range(max(found) + 1)):
        raise ModelError(f"the {side} layers in the model file are missing or not numbered 0..N-1")
    return max(found) + 1


def _scalar(v: dict[str, np.ndarray], name: str) -> int:
    if name not in v:
        raise ModelError(f"the model file has no {name!r}")
    return int(np.asarray(v[name]).reshape(-1)[0])


def ct2_to_whisper(model: CT2Model, alignment_heads: list[list[int]] | None = None) -> dict:
    """Build the openai-whisper checkpoint dict (``dims``, ``model_state_dict``) in fp16."""
    import torch

    if model.spec != "WhisperSpec":
        raise ModelError(f"the model file holds a {model.spec}, not a Whisper model")
    v = dict(model.variables)
    for alias, target in model.aliases.items():
        v.setdefault(alias, v[target])

    names = list(v)
    n_audio_layer = _count_layers(names, "encoder")
    n_text_layer = _count_layers(names, "decoder")
    conv1 = v["encoder/conv1/weight"]
    pos_audio = v["encoder/position_encodings/encodings"]
    pos_text = v["decoder/position_encodings/encodings"]
    emb = v["decoder/embeddings/weight"]
    n_audio_state = pos_audio.shape[1]
    # torch's Conv1d weight is (out, in, kernel); CTranslate2 may store (out, kernel, in).
    if conv1.ndim != 3 or conv1.shape[0] != n_audio_state:
        raise ModelError(f"unexpected conv1 weight shape {conv1.shape}")
    conv_transpose = conv1.shape[2] != 3 and conv1.shape[1] == 3
    dims = {
        "n_mels": int(conv1.shape[2] if conv_transpose else conv1.shape[1]),
        "n_audio_ctx": int(pos_audio.shape[0]),
        "n_audio_state": int(n_audio_state),
        "n_audio_head": _scalar(v, "encoder/num_heads"),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(emb.shape[0]),
        "n_text_ctx": int(pos_text.shape[0]),
        "n_text_state": int(emb.shape[1]),
        "n_text_head": _scalar(v, "decoder/num_heads"),
        "n_text_layer": n_text_layer,
    }

    sd: dict[str, np.ndarray] = {}

    def linear(src: str, dst: str, part: int | None, parts: int) -> None:
        w, b = v[f"{src}/weight"], v.get(f"{src}/bias")
        if part is not None:
            w = np.split(w, parts, axis=0)[part]
            b = np.split(b, parts, axis=0)[part] if b is not None else None
        sd[f"{dst}.weight"] = w
        if dst.endswith(".key"):
            if b is not None and np.any(b != 0):
                raise ModelError(f"{src} has a non-zero key bias, which Whisper's key projection cannot hold")
        elif b is not None:
            sd[f"{dst}.bias"] = b

    def norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/gamma"]
        sd[f"{dst}.bias"] = v[f"{src}/beta"]

    def block(side: str, i: int, cross: bool) -> None:
        rows = _layer_map(f"{side}/layer_{i}", cross)
        fused = {}
        for src, _, part in rows:
            if part is not None:
                fused[src] = fused.get(src, 0) + 1
        for src, dst, part in rows:
            full = f"{side}.blocks.{i}.{dst}"
            if dst.endswith("_ln"):
                norm(src, full)
            else:
                linear(src, full, part, fused.get(src, 1))

    for conv in ("conv1", "conv2"):
        w = v[f"encoder/{conv}/weight"]
        sd[f"encoder.{conv}.weight"] = np.transpose(w, (0, 2, 1)) if conv_transpose else w
        sd[f"encoder.{conv}.bias"] = v[f"encoder/{conv}/bias"]
    sd["encoder.positional_embedding"] = pos_audio
    for i in range(n_audio_layer):
        block("encoder", i, cross=False)
    norm("encoder/layer_norm", "encoder.ln_post")
    sd["decoder.token_embedding.weight"] = emb
    sd["decoder.positional_embedding"] = pos_text
    for i in range(n_text_layer):
        block("decoder", i, cross=True)
    norm("decoder/layer_norm", "decoder.ln")

    state = {k: torch.from_numpy(np.array(a, dtype=np.float16, order="C", copy=True)) for k, a in sd.items()}
    checkpoint: dict = {"dims": dims, "model_state_dict": state}
    if alignment_heads:
        checkpoint["alignment_heads"] = encode_alignment_heads(alignment_heads, n_text_layer, dims["n_text_head"])
    return checkpoint


def encode_alignment_heads(pairs: list[list[int]], n_layer: int, n_head: int) -> bytes:
    """The base85-gzipped bool mask that ``Whisper.set_alignment_heads`` reads."""
    mask = np.zeros((n_layer, n_head), dtype=bool)
    for layer, head in pairs:
        mask[int(layer), int(head)] = True
    return base64.b85encode(gzip.compress(mask.tobytes(), mtime=0))


def check_languages(checkpoint: dict, lang_ids: list[int] | None) -> None:
    """The model's language tokens (CTranslate2's ``lang_ids``) must be the ones openai-whisper's
    tokenizer gives a model of this vocabulary, or every detected language would be wrong.
    (An English-only model detects nothing: CTranslate2 lists ids for it that whisper never reads.)"""
    n_vocab = checkpoint["dims"]["n_vocab"]
    if not lang_ids or n_vocab < 51865:
        return
    from whisper.tokenizer import get_tokenizer

    num_languages = n_vocab - 51766
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # whisper reads its vocabulary file without closing it
        expected = sorted(get_tokenizer(True, num_languages=num_languages).all_language_tokens)
    if sorted(int(t) for t in lang_ids) != expected:
        raise ModelError(
            f"the model's {len(lang_ids)} language tokens are not the {len(expected)} openai-whisper expects "
            f"for a vocabulary of {n_vocab}; it cannot be converted"
        )


def convert_ct2_dir(model_dir: Path, dest: Path) -> Path:
    """Convert ``model_dir`` (model.bin, config.json) into ``dest`` atomically."""
    model_dir = Path(model_dir)
    config: dict = {}
    if (model_dir / "config.json").is_file():
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    checkpoint = ct2_to_whisper(read_ct2(model_dir / "model.bin"), config.get("alignment_heads"))
    check_languages(checkpoint, config.get("lang_ids"))
    return save_checkpoint(checkpoint, dest)


def save_checkpoint(checkpoint: dict, dest: Path) -> Path:
    """Write ``checkpoint`` to ``dest`` atomically.

    The checkpoint is written to a temporary file beside ``dest`` and renamed,
    so a crash never leaves half a checkpoint and two racing processes both end
    with a complete one.
    """
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return dest
