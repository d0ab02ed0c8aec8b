"""The real world's parts for the service, chosen in one place: probes, governor, clock, notifier, sleep guard."""

from __future__ import annotations

from typing import Any

from daemon.config import Config


def build_service_parts(config: Config) -> dict[str, Any]:
    from daemon import platform
    from daemon.governor import Governor
    from daemon.notify import Notifier
    from daemon.platform.base import NoKeepAwake
    from daemon.probes import available_memory_bytes, make_thermal_probe
    from daemon.scheduler import Clock

    governor = Governor(
        config,
        thermal_probe=make_thermal_probe(config.thermal),
        memory_probe=available_memory_bytes,
        on_ac_power=platform.on_ac_power,
        idle_seconds=platform.idle_seconds,
    )
    return {
        "governor": governor,
        "clock_factory": Clock,
        "notifier": Notifier.from_config(config),
        "keep_awake": platform.keep_awake() if config.power.prevent_sleep else NoKeepAwake(),
    }
