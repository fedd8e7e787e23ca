"""Settings: options over environment over config file over defaults; production refuses defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kernel.errors import ConfigError
from kernel.settings import load_settings


def test_defaults_are_the_embedded_default() -> None:
    settings = load_settings(None)
    assert settings.embedded_broker
    assert (settings.http_port, settings.mqtt_port, settings.data_dir) == (8000, 1883, Path("data"))
    assert settings.redis_url is None
    assert settings.influx_url is None
    assert settings.database_url is None


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "city.yaml"
    config.write_text("settings:\n  http_port: 9001\n  mqtt_port: 2883\n  redis_url: redis://file\n")
    monkeypatch.setenv("CITYOPS_MQTT_PORT", "3883")
    monkeypatch.setenv("CITYOPS_REDIS_URL", "redis://env")
    settings = load_settings(config, redis_url="redis://cli")
    assert settings.http_port == 9001  # only the file says
    assert settings.mqtt_port == 3883  # environment over file
    assert settings.redis_url == "redis://cli"  # option over environment
    assert settings.config_file == config


def test_mqtt_url_means_no_embedded_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOPS_MQTT_URL", "mqtt://127.0.0.1:1999")
    assert not load_settings(None).embedded_broker


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "CITYOPS_DATABASE_URL"),
        ({"database_url": "postgresql://cityops:change-me@db/cityops"}, "default password"),
        (
            {"database_url": "postgresql://c:Str0ng-enough@db/c", "redis_url": "redis://:password@r"},
            "default password",
        ),
        ({"database_url": "postgresql://c:Str0ng-enough@db/c", "admin_token": "short"}, "admin_token"),
    ],
)
def test_production_refuses_default_secrets(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, environment="production", **values)


def test_production_with_real_secrets_is_fine() -> None:
    settings = load_settings(
        None, environment="production", database_url="postgresql://c:Str0ng-enough@db/c", admin_token="x" * 32
    )
    assert settings.environment == "production"


@pytest.mark.parametrize(
    "content",
    [
        "settings: [1, 2]\n",
        "- just a list\n",
        "settings:\n  http_port: many\n",
        "settings:\n  no_such_setting: 1\n",
        "{bad yaml",
    ],
)
def test_a_wrong_config_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    config = tmp_path / "city.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError):
        load_settings(config)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tiles.local/{z}/{x}/{y}.png", "http"),
        ("file:///srv/tiles/{z}/{x}/{y}.png", "http"),
        ("http://tiles.local/{z}/{x}.png", "{y}"),
        ("http://tiles.local/tile.png", "{z}, {x}, {y}"),
    ],
)
def test_a_wall_tile_url_must_be_an_xyz_template(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(None, wall_tile_url=url)


def test_a_wall_tile_url_template_is_taken() -> None:
    url = "https://tiles.city.local/osm/{z}/{x}/{y}.png"
    assert load_settings(None, wall_tile_url=url).wall_tile_url == url
