"""whisper is imported without numba wherever whisperd's code imports it first: the package
``daemon.engines`` puts the lazy ``whisper.timing`` in place when it is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_no_module_of_whisperd_that_imports_whisper_brings_numba_in():
    code = "\n".join([
        "import sys",
        "import daemon.engines.gemm, daemon.engines.shrinking",  # both import whisper at the top
        "from daemon import outputs",
        "outputs._writers()",
        "assert 'whisper' in sys.modules",
        "print('numba' in sys.modules)",
    ])
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
