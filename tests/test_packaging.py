"""The distribution as users get it: the wheel and the sdist build, pass ``twine check``,
ship ``py.typed`` in both packages, and the wheel installs into a fresh venv (no system
site-packages, the repository not on the path) where both packages import.

The fresh venv installs the wheel's dependencies from the package index (PyPI is reachable
here and in CI); the whole test is bounded in time and marked ``slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway_redis", "middleware")
STEP_TIMEOUT = 300  # seconds, for one build or one pip install


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=STEP_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def clean_env() -> dict[str, str]:
    """The environment without anything that would put the repository on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_and_sdist_build_check_and_install_into_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=tmp_path)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1, sorted(dist.iterdir())
    assert len(sdists) == 1, sorted(dist.iterdir())
    assert "PASSED" in run(sys.executable, "-m", "twine", "check", *wheels, *sdists, cwd=tmp_path)

    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
    for package in PACKAGES:
        assert f"{package}/py.typed" in names
        assert f"{package}/__init__.py" in names
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/", "docs/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    env = clean_env()
    run(python, "-m", "pip", "install", "--quiet", wheels[0], cwd=tmp_path, env=env)

    elsewhere = tmp_path / "elsewhere"  # not the repository: its packages must not shadow
    elsewhere.mkdir()
    probe = (
        "import sys, gateway_redis, middleware\n"
        "from gateway_redis import RedisClient, RedisConfig\n"
        "from middleware import Gateway, JWTSettings\n"
        "print(gateway_redis.__file__); print(middleware.__file__)\n"
        "print(any(p.startswith(sys.argv[1]) for p in sys.path))\n"
    )
    out = run(python, "-I", "-c", probe, ROOT, cwd=elsewhere, env=env).splitlines()
    site = str(env_dir.resolve())
    assert out[0].startswith(site), out
    assert out[1].startswith(site), out
    assert out[2] == "False", "the repository is on the fresh venv's path"
