"""Hub ids wherever a model path is taken, offline from a real Hugging Face cache (``HF_HOME`` + ``HF_HUB_OFFLINE=1``,
laid out by :mod:`ls_video.testing.hf_cache` exactly as ``huggingface_hub`` downloads a repo).

Guards against ``components.looks_local`` calling every ``ORG/NAME`` a local path (``os.path.sep in path``): the
shipped SD configs, ``ls-video sample --model ORG/NAME`` and preprocessing's VAE refused every Hub id, and
``LatentShiftPipeline.from_pretrained("ORG/NAME")`` read ``latent_shift.json`` from the literal ``ORG/NAME/unet``
(so a model pulled from the Hub reloaded with the default 1/8 shift)."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from shipped import ROOT, run, write
from test_sd_configs import sd2_base, shards, shipped_sd  # noqa: F401 - shards: the fixture

from ls_video.testing.hf_cache import add_to_cache

SD15_ID = yaml.safe_load((ROOT / "configs" / "sd15.yaml").read_text())["model"]["pretrained_model_name_or_path"]
SD21_ID = yaml.safe_load((ROOT / "configs" / "sd21-base.yaml").read_text())["model"]["pretrained_model_name_or_path"]


@pytest.fixture(scope="module")
def hf_home(tiny_base, tmp_path_factory) -> Path:
    """A Hugging Face cache holding the tiny base as ``ORG/NAME`` and under the shipped configs' own ids
    (the SD-2.x one v-prediction, as SD 2.1-base is not), and its VAE alone as the one-model repo ``ORG/VAE``."""
    home = tmp_path_factory.mktemp("hf_home")
    for repo in ("ORG/NAME", SD15_ID):
        add_to_cache(tiny_base, home, repo)
    add_to_cache(sd2_base(tmp_path_factory.mktemp("sd2") / "sd2", tiny_base), home, SD21_ID)
    add_to_cache(Path(tiny_base) / "vae", home, "ORG/VAE")
    return home


@pytest.fixture()
def offline_cache(hf_home, monkeypatch) -> Path:
    """This process reads ``hf_home`` as a fresh one would with ``HF_HOME=hf_home HF_HUB_OFFLINE=1``
    (huggingface_hub reads both once, at import)."""
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hf_home


def test_local_or_hub_id_rule(tmp_path, monkeypatch):
    """``org/name`` is a Hub id although it contains the path separator; a path that exists, or starts with
    ``/``, ``./``, ``../`` or ``~``, is local."""
    from ls_video.hub import is_local

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_local("stable-diffusion-v1-5/stable-diffusion-v1-5") and not is_local("ORG/NAME")
    assert all(is_local(p) for p in ("/abs/base", "./base", "../base", "~/base", "org/name", "."))


def test_plain_diffusers_loads_the_cache(offline_cache):
    """Sanity: the cache is one diffusers itself loads offline (else the tests below would prove nothing)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained("ORG/NAME", safety_checker=None)
    assert pipe.unet.config.sample_size == 8
    assert str(offline_cache) in pipe.unet.config._name_or_path  # (from the cache, not some other copy)


def test_export_in_the_cache_reloads_with_its_shift(offline_cache, components, tmp_path, capsys):
    """A folder exported with a 1/4 shift, put into the cache as ``ORG/OTHER``: ``from_pretrained`` and
    ``ls-video sample --model ORG/OTHER`` use the shift it was saved with, read from the resolved snapshot."""
    from ls_video.commands import sample
    from ls_video.components import build_pipeline
    from ls_video.pipeline import LatentShiftPipeline
    from ls_video.unet import TemporalConfig, get_temporal_config
    from ls_video.video_unet import load_video_unet

    load_video_unet(components["unet"], TemporalConfig(shift_fraction=0.25))
    build_pipeline(components).save_pretrained(tmp_path / "export")
    add_to_cache(tmp_path / "export", offline_cache, "ORG/OTHER")
    pipe = LatentShiftPipeline.from_pretrained("ORG/OTHER")
    assert get_temporal_config(pipe.unet) == TemporalConfig(shift_fraction=0.25)
    saved = components["unet"].state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in pipe.unet.state_dict().items())
    code = sample.main(["--model", "ORG/OTHER", "--prompt", "a red square", "--num-frames", "2",
                        "--num-inference-steps", "1", "--out", str(tmp_path / "s")])
    assert code == 0, capsys.readouterr().err
    assert len(list((tmp_path / "s").glob("*.mp4"))) == 1


def test_vae_by_hub_id(offline_cache, tiny_base):
    """Preprocessing's VAE by Hub id: a pipeline repo's ``vae/`` and a one-model VAE repo."""
    from ls_video.components import load_vae

    ref = dict(load_vae(tiny_base).state_dict())
    for repo in ("ORG/NAME", "ORG/VAE"):
        got = load_vae(repo).state_dict()
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref), repo


@pytest.mark.parametrize("model, says", [
    ("ORG/ABSENT", "'ORG/ABSENT' is not in the Hugging Face cache"),
    ("./nope", "model folder not found: ./nope (a local path"),
])
def test_unresolvable_model_is_one_line(offline_cache, tmp_path, capsys, model, says):
    """A Hub id missing from the cache offline and a missing local folder: each its own one-line message."""
    from ls_video.commands import sample

    code = sample.main(["--model", model, "--prompt", "x", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["sd15", "sd21-base"])
def test_shipped_config_trains_from_its_hub_id(hf_home, shards, tmp_path, layout):  # noqa: F811
    """``train.py fit -c configs/sd15.yaml`` (and ``+ sd21-base.yaml``) with the Hub id it ships, offline from the
    cache: 2 steps, with only the CPU switches (and fp32) changed; the checkpoint records the id."""
    overlays = () if layout == "sd15" else ("sd21-base.yaml",)
    repo = SD15_ID if layout == "sd15" else SD21_ID
    cfg = shipped_sd(tmp_path, repo, shards, *overlays)  # (its base: the config's own id)
    cfg["trainer"]["precision"] = "32"
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    r = run("fit", "-c", str(write(cfg, tmp_path / "config.yaml")), env=env, timeout=480)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["pretrained_model_name_or_path"] == repo
