"""Settings come from KVMFLEET_* variables, flags override them."""

from __future__ import annotations

from kvmfleet.settings import Settings


def test_defaults_match_the_api_contract() -> None:
    s = Settings.from_env({})
    assert (s.metrics_port, s.health_port, s.host_probe_interval) == (8080, 8081, 60.0)
    assert s.namespaces == ()


def test_environment_and_overrides() -> None:
    env = {
        "KVMFLEET_NAMESPACES": "lab, hpc",
        "KVMFLEET_METRICS_PORT": "9090",
        "KVMFLEET_HOST_PROBE_INTERVAL": "7.5",
        "KVMFLEET_VERBOSE": "yes",
    }
    s = Settings.from_env(env, metrics_port=9191, health_port=None)
    assert s.namespaces == ("lab", "hpc")
    assert s.metrics_port == 9191 and s.health_port == 8081
    assert s.host_probe_interval == 7.5 and s.verbose is True
