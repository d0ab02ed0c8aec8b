"""Speech-to-text backends behind one small interface (see base.py).

Importing this package puts a stand-in for ``whisper.timing`` in place (``whisper_lib``), so
that whisper, imported by any module here, leaves numba out until word timings are asked for.
"""

from daemon.engines.whisper_lib import lazy_timing as _lazy_timing

_lazy_timing()
