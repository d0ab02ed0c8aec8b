"""An openai-whisper checkpoint, converted once into the folder mlx-whisper loads
(``config.json`` and ``weights.safetensors``), cached beside the converted checkpoints.

The conversion: ``mlp.0``/``mlp.2`` become ``mlp1``/``mlp2``; the convolution weights,
(out, in, width) in torch, become MLX's (out, width, in); the encoder's positional embedding
is left out (MLX computes the same sinusoids); ``config.json`` holds the checkpoint's
dimensions and ``"model_type": "whisper"``. The folder is written beside itself and renamed
into place, so a load never sees half a conversion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from daemon.errors import ModelError

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
DTYPES = ("fp16", "fp32")
_LEFT_OUT = ("encoder.positional_embedding",)


def folder_name(ref: Path | str, precision: str) -> str:
    """The cache folder's name: the checkpoint's name, and for a file a digest of where it is,
    its size and time, so that a replaced file is converted again."""
    if isinstance(ref, Path):
        st = ref.stat()
        digest = hashlib.sha256(f"{ref.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]
        return f"{ref.stem}.{digest}.mlx-{precision}"
    return f"{ref}.mlx-{precision}"


def mlx_weights(state_dict: dict[str, Any]) -> dict[str, Any]:
    """An openai-whisper state dict (name → torch tensor) as MLX's names and layouts, numpy fp32."""
    out = {}
    for name, tensor in state_dict.items():
        if name in _LEFT_OUT:
            continue
        array = tensor.detach().float().cpu().numpy()
        if array.ndim == 3:  # Conv1d: (out, in, width) → (out, width, in)
            array = array.swapaxes(1, 2)
        out[name.replace(".mlp.0.", ".mlp1.").replace(".mlp.2.", ".mlp2.")] = array
    return out


def convert(model: Any, folder: Path, precision: str) -> Path:
    """Write ``model`` (openai-whisper's ``Whisper``) as an MLX folder at ``folder``."""
    import mlx.core as mx
    import numpy as np

    if precision not in DTYPES:
        raise ValueError(f"MLX weights are fp16 or fp32, not {precision}")
    dtype = np.float16 if precision == "fp16" else np.float32
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        weights = {k: mx.array(v.astype(dtype)) for k, v in mlx_weights(model.state_dict()).items()}
        mx.save_safetensors(str(tmp / WEIGHTS), weights)
        config = {**vars(model.dims), "model_type": "whisper"}
        (tmp / CONFIG).write_text(json.dumps(config, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / WEIGHTS).is_file():  # not another process's conversion, done first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def mlx_folder(ref: Path | str, cache_dir: Path, precision: str) -> Path:
    """The MLX folder for ``ref`` (what ``models.resolve_checkpoint`` returned) at
    ``precision``, converted now if it is not in ``cache_dir`` yet."""
    from daemon.engines.models import load_checkpoint

    folder = Path(cache_dir) / folder_name(ref, precision)
    if (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file():
        return folder
    model = load_checkpoint(ref, cache_dir=cache_dir)
    log.info("converting %s for MLX (%s) into %s", ref, precision, folder, extra={"action": "model_convert"})
    try:
        return convert(model, folder, precision)
    except OSError as exc:
        raise ModelError(f"could not write the MLX copy of the model to {str(folder)!r}: {exc}") from exc
