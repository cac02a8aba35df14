"""The built wheel carries the Hydra configs and works from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contains_configs_and_runs_from_elsewhere(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("enkf_repro-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for cfg in ("enkf_repro/configs/config.yaml", "enkf_repro/configs/figure/fig8.yaml",
                "enkf_repro/configs/optimizer/enkf.yaml", "enkf_repro/style/enkf_repro.mplstyle"):
        assert cfg in names, cfg
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    probe = subprocess.run([sys.executable, "-c", "import enkf_repro.config.compose as c; print(c.config_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert probe.stdout.strip().startswith(str(site)), probe.stdout + probe.stderr
    proc = subprocess.run([sys.executable, "-m", "enkf_repro", "run", "figure=8", "scale=smoke", "--cfg", "job"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "id: '8'" in proc.stdout and "name: smoke" in proc.stdout
