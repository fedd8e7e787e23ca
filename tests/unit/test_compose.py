"""docker-compose.yml validates offline (no Docker engine here), and refuses to run without secrets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.servers import binary

ROOT = Path(__file__).resolve().parents[2]


def compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    return subprocess.run(
        [binary("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        check=False,
        timeout=60,
    )


SECRETS = {
    "CITYOPS_DB_PASSWORD": "a-real-secret",
    "CITYOPS_ADMIN_TOKEN": "t" * 32,
    "CITYOPS_MQTT_GATEWAY_PASSWORD": "gw-secret-0123456789",
    "CITYOPS_MQTT_HEALTHCHECK_PASSWORD": "hc-secret-0123456789",
}


def test_compose_file_is_valid() -> None:
    done = compose(SECRETS)
    assert done.returncode == 0, done.stderr


def test_every_service_has_a_health_check_and_the_broker_is_locked_down() -> None:
    resolved = subprocess.run(
        [binary("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}, **SECRETS},
        check=True,
        timeout=60,
    )
    services = yaml.safe_load(resolved.stdout)["services"]
    # The one-shot migrate job exits when done; what it has is a success others wait for.
    assert {name for name, spec in services.items() if "healthcheck" not in spec} == {"migrate"}
    assert services["migrate"]["command"] == ["cityops", "migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in ("gateway-1", "gateway-2", "rules-1", "api"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        # Split over Redis: every process has the bus.
        assert services[name]["environment"]["CITYOPS_REDIS_URL"] == "redis://redis:6379/0"
    for name in ("gateway-1", "gateway-2", "api"):
        assert services[name]["healthcheck"]["test"][:3] == ["CMD", "cityops", "health"]
        assert services[name]["environment"]["CITYOPS_MQTT_URL"].startswith("mqtt://cityops-gateway:gw-secret")
    assert [p["target"] for p in services["mosquitto"]["ports"]] == [8883]
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf
    assert "message_size_limit 65536" in conf


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_each_missing_secret(missing: str) -> None:
    done = compose({k: v for k, v in SECRETS.items() if k != missing})
    assert done.returncode != 0
    assert missing in done.stderr
