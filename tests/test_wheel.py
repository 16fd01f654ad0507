"""The wheel works outside a checkout: built, installed into a folder of its own, and run from an empty
directory, it finds its configs and the toy base (package data) and runs the whole demo there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_paths_resolve_from_any_folder(tmp_path, monkeypatch):
    from ls_video.shipped import shipped_args, shipped_path

    monkeypatch.chdir(tmp_path)
    assert shipped_path("toy") == str(ROOT / "configs" / "toy.yaml")
    assert shipped_path("configs/strategy/fsdp.yaml") == str(ROOT / "configs" / "strategy" / "fsdp.yaml")
    assert shipped_path("assets/toy-base") == str(ROOT / "assets" / "toy-base")
    assert shipped_path("configs/none.yaml") == "configs/none.yaml"  # missing: left for the one-line error
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "toy.yaml").write_text("{}")
    assert shipped_path("configs/toy.yaml") == "configs/toy.yaml"  # the user's own file wins
    assert shipped_args(["fit", "-c", "sd15", "--model.pretrained_model_name_or_path=assets/toy-base"]) == [
        "fit", "-c", str(ROOT / "configs" / "sd15.yaml"),
        f"--model.pretrained_model_name_or_path={ROOT / 'assets' / 'toy-base'}"]


def test_one_name_per_module_in_a_clone():
    """The shipped configs' class paths import under ``ls_video.`` from the clone, and nothing the project
    imports comes in under a top-level ``datamodules`` / ``callbacks`` / ``configs`` / ``assets`` name as well
    (one module under two names would have two copies of its state)."""
    code = ("import sys, glob, re, importlib\n"
            "from ls_video.shipped import shipped_path\n"
            "paths = set()\n"
            "for f in glob.glob(shipped_path('configs') + '/**/*.yaml', recursive=True):\n"
            "    paths |= set(re.findall(r'class_path:\\s*(ls_video\\.[\\w.]+)', open(f).read()))\n"
            "for p in sorted(paths):\n"
            "    module, name = p.rsplit('.', 1)\n"
            "    getattr(importlib.import_module(module), name)\n"
            "import ls_video.cli, ls_video.module, ls_video.datamodules.preprocess, ls_video.commands.demo\n"
            "print(len(paths), sorted(m for m in sys.modules if m.split('.')[0] in "
            "('datamodules', 'callbacks', 'configs', 'assets')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    count, stray = r.stdout.split(" ", 1)
    assert int(count) >= 8 and stray.strip() == "[]", r.stdout


def wheel_names(wheel: Path) -> list[str]:
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_from_an_empty_folder(tmp_path):
    """Guards a wheel without configs/ or assets/toy-base (the demo rebuilt the base for 11 minutes into the
    current folder) and commands that call ``train.py`` / ``sample.py`` by a checkout path."""
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(dist), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(dist.glob("ls_video-*.whl"))
    names = wheel_names(wheel)  # one top-level package: no generic `configs` / `callbacks` in site-packages
    assert {n.split("/")[0] for n in names} == {"ls_video", "ls_video-0.1.0.dist-info"}
    clone_packages = {str(p.parent.relative_to(ROOT / "ls_video")) for p in (ROOT / "ls_video").rglob("__init__.py")}
    clone_packages |= {"datamodules", "callbacks", "configs", "assets"}
    assert all(f"ls_video/{p}/__init__.py" in names for p in clone_packages - {"."}), "a package is missing"
    assert "ls_video/assets/toy-base/unet/diffusion_pytorch_model.safetensors" in names
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import ls_video.configs, ls_video.assets; print(ls_video.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # the wheel, not the checkout
    assert all((site / "ls_video" / sub / "__init__.py").is_file() for sub in ("commands", "testing", "toy"))
    r = subprocess.run([str(site / "bin" / "ls-video"), "demo", "--out", "demo", "--max-steps", "10",
                        "--num-videos-per-prompt", "1", "--num-images-per-prompt", "1", "--num-inference-steps", "5",
                        "--extra", "--data.init_args.num_train_clips", "64", "--data.init_args.num_val_clips", "8"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    output = r.stdout + r.stderr  # fit, export, sample, eval: no product tips or deprecation lines
    assert "Tip:" not in output and "deprecated" not in output, output[-3000:]
    assert "== base\n" not in r.stdout  # the packaged toy base was used, not rebuilt
    assert (work / "demo" / "index.html").exists() and (work / "demo" / "model" / "unet").is_dir()
    assert len(list((work / "demo").glob("*.mp4"))) == 32
    assert not (work / "assets").exists() and not (work / "configs").exists()
