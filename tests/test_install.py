"""The package as users install it: a wheel built from the repository, installed in a fresh virtualenv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import sys
from pathlib import Path
import sd_styles
from sd_styles.catalog import FIVE_STYLES_PATH, default_styles
from sd_styles.experiment import load_experiment
assert Path(sys.prefix) in Path(sd_styles.__file__).resolve().parents, sd_styles.__file__
styles = default_styles()
exp = load_experiment(FIVE_STYLES_PATH)
assert [s.concept for s in styles] == [s.concept for s in exp.styles], (styles, exp.styles)
print(len(styles), FIVE_STYLES_PATH.relative_to(Path(sd_styles.__file__).parent))
"""


@pytest.mark.slow
def test_a_built_wheel_ships_the_catalog_and_the_classic_experiment(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, env=env, cwd=tmp_path, capture_output=True)
    [wheel] = wheels.glob("sd_styles-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, env=env, cwd=tmp_path, capture_output=True)
    out = subprocess.run([str(python), "-c", CHECK], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["5", "data/five_styles.toml"]


# what the code needs, and why (each was a real failure with the old floors)
NEEDED = {"torch": "2.6", "diffusers": "0.32", "transformers": "4.46.1", "huggingface_hub": "0.25",
          "safetensors": "0.4.1"}


def _floors(lines) -> dict[str, str]:
    import re

    out = {}
    for line in lines:
        m = re.match(r"\s*\"?([A-Za-z0-9_.-]+)\s*(>=|==)\s*([0-9][0-9.]*)", line)
        if m:
            out[m.group(1).lower().replace("-", "_")] = m.group(3)
    return out


def test_declared_floors_are_what_the_code_needs_and_ci_pins_them():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from packaging.version import Version

    declared = _floors(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    required = _floors((ROOT / "requirements.txt").read_text().splitlines())
    pinned = _floors((ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines())
    for name, need in NEEDED.items():
        assert Version(declared[name]) >= Version(need), (name, declared[name], need)
        assert Version(required[name]) == Version(declared[name]), f"requirements.txt and pyproject.toml disagree on {name}"
        if name != "torch":            # torch: CI has only the 2.13.0 CPU build on disk (see the pins file)
            assert Version(pinned[name]) == Version(declared[name]), f".ci/minimum-versions.txt must pin {name} at its floor"
    assert "minimum-versions.txt" in (ROOT / ".ci" / "run").read_text()
