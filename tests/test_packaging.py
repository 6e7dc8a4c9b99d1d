"""A non-editable install finds its configs: the wheel carries conf/ as the package diffuse.conf."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_wheel_ships_the_configs_and_runs_from_another_directory(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("diffuse-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for conf in ("diffuse/conf/train.yaml", "diffuse/conf/sample.yaml", "diffuse/conf/model/unet_tiny.yaml",
                 "diffuse/conf/experiment/mnist_cpu.yaml", "diffuse/cli.py"):
        assert conf in names, conf
    assert not any(n.startswith("tests/") for n in names)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import diffuse; print(diffuse.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))
    out = subprocess.run([sys.executable, "-m", "diffuse", "train", "--help"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "model: unet_cifar, unet_mnist, unet_tiny" in out and "experiment: cifar10_ddpm, cifar10_edm, cifar10_flow, mnist_cpu" in out


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "diffuse"
    out = subprocess.run([str(script), "sample", "--help"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "sampler: ddim, ddpm, dpmpp_2m" in out.stdout
