"""An installed wheel works away from the source tree: the demo's configs ship inside the package."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel and unpacked into a folder of its own (dependencies from this venv)."""
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools")
    wheels = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("fskd-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_the_wheel_holds_the_demo_configs(installed: Path) -> None:
    configs = installed / "fskd" / "commands" / "demo" / "configs"
    assert {p.name for p in configs.glob("*.yaml")} >= {"recipe.yaml", "full.yaml", "fskd_14.yaml"}


@pytest.mark.slow
def test_demo_runs_from_the_installed_wheel_in_another_folder(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed)}
    where = subprocess.run([sys.executable, "-c", "import fskd; print(fskd.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed)  # not the source tree
    result = subprocess.run([sys.executable, "-m", "fskd", "demo", "--preset", "smoke", "--out", "runs/smoke",
                             "--no-progress-bar"], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = elsewhere / "runs" / "smoke"
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()
    assert "Tip:" not in result.stdout + result.stderr
