import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

WHISPERD = str(Path(sys.executable).parent / "whisperd")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One converted tiny.en checkpoint shared by the whole session (conversion is what a user's first run does)."""
    from daemon.engines.models import resolve_checkpoint

    cache = tmp_path_factory.mktemp("models")
    resolved = resolve_checkpoint("tiny.en", cache)
    assert Path(resolved).is_file()
    return cache


@pytest.fixture(scope="session")
def base_checkpoint(model_cache) -> Path:
    """The multilingual base, converted once per session from its two bundled packages (digest checked)."""
    from daemon.engines.models import resolve_checkpoint

    resolved = resolve_checkpoint("base", model_cache)
    assert resolved == model_cache / "base.pt"
    return resolved


@dataclass
class Tree:
    root: Path
    config: Path
    env: dict

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    def run(self, *args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(
            [WHISPERD, *args, "--config", str(self.config)],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=check,
        )

    def popen(self, *args: str, start_new_session: bool = False) -> subprocess.Popen:
        return subprocess.Popen(
            [WHISPERD, *args, "--config", str(self.config)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=start_new_session,
        )

    def files(self, where: Path) -> list[str]:
        return sorted(p.relative_to(where).as_posix() for p in where.rglob("*") if p.is_file() or p.is_symlink())


def make_tree(root: Path, model_cache: Path, extra: str = "") -> Tree:
    home = root / "home"
    home.mkdir(parents=True)
    for d in ("inbox", "outbox", "archive", "failed"):
        (root / d).mkdir()
    cfg = root / "config.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        database: sqlite:///state/queue.db
        model:
          name: tiny.en
          cache_dir: {model_cache}
          batch_size: 8
        folders:
          - inbox: inbox
            output: outbox
            archive: archive
            failed: failed
        watch:
          settle_seconds: 0.3
          poll_seconds: 0.1
        jobs:
          retry_base_seconds: 0.5
        thermal:
          source: none
        power:
          prevent_sleep: false
        notify: false
    """) + textwrap.dedent(extra))
    os.chmod(cfg, 0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHISPERD_", "XDG_"))}
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / ".local" / "state"), XDG_CACHE_HOME=str(home / ".cache"),
               OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    return Tree(root, cfg, env)


@pytest.fixture
def tree(tmp_path, model_cache) -> Tree:
    return make_tree(tmp_path, model_cache)
