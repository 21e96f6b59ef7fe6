"""The package as users get it: a unique import name with a typed public API, a wheel that ships
the bridge and nothing of the harness, and `python -m celery_kafka_bridge`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import celery_kafka_bridge
from harness.support import ROOT, run_cli


def test_the_public_api_is_exported_from_the_package() -> None:
    assert celery_kafka_bridge.__all__
    for name in celery_kafka_bridge.__all__:
        assert getattr(celery_kafka_bridge, name) is not None, name


def test_python_dash_m_runs_the_command_line() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout and "tail" in result.stdout


@pytest.mark.slow
def test_the_wheel_ships_the_typed_package_and_none_of_the_harness(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("celery_kafka_bridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "celery_kafka_bridge/py.typed" in names
    assert {"celery_kafka_bridge/amqp/source.py", "celery_kafka_bridge/kafka/sink.py"} <= set(names)
    top_level = {name.split("/")[0] for name in names}
    assert top_level <= {"celery_kafka_bridge", *(n for n in top_level if n.endswith(".dist-info"))}
    assert not any(name.startswith(("harness/", "tests/", "bench/", "chaos/")) for name in names)
