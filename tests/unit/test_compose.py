"""docker-compose.yml validates offline (no Docker engine here), and refuses to run without secrets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


def test_compose_file_is_valid() -> None:
    done = compose({"CITYOPS_DB_PASSWORD": "a-real-secret", "CITYOPS_ADMIN_TOKEN": "t" * 32})
    assert done.returncode == 0, done.stderr


def test_compose_refuses_to_start_without_secrets() -> None:
    done = compose({})
    assert done.returncode != 0
    assert "CITYOPS_DB_PASSWORD" in done.stderr
