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
