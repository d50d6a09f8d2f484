"""The fleet part: inventory, bulk tasks and profiles, from the configuration."""

from __future__ import annotations

from cwmpgw.config import Config

__all__ = ["online_window"]


def online_window(config: Config) -> float:
    """Seconds since its last Inform within which a device counts as online."""
    if config.fleet.online_window:
        return float(config.fleet.online_window)
    return 2.0 * config.provision.periodic_inform_interval
