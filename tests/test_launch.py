"""The launches users run, as shipped: configs/toy.yaml with all its callbacks in two processes,
signals (SIGTERM, SIGUSR1, SLURM's requeue), and a rank-local error ending every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from shipped import ROOT, add_callback, launch, run, shipped_toy, write

from ls_video.checkpoint import EMA_KEY

pytestmark = pytest.mark.slow


def ckpt(tmp_path: Path, name: str = "last.ckpt") -> dict:
    return torch.load(tmp_path / "run" / "checkpoints" / name, weights_only=True)


def wait_for_step(step_file: Path, proc, step: int, timeout: float = 300) -> tuple[int, int]:
    """(step, pid) once the run has finished ``step`` optimizer steps."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"run ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}"
        if step_file.exists():
            done, pid = map(int, step_file.read_text().split())
            if done >= step:
                return done, pid
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout} s")


def group_ends(pgid: int, timeout: float = 60) -> bool:
    """Whether every process of the launch's session ends within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    os.system(f"ps -o pid,etime,args --sid {pgid} >&2")
    return False


def test_shipped_toy_config_in_two_processes_passes_validation_videos_and_the_end(tiny_base, tmp_path):
    """Every callback of configs/toy.yaml, 2 gloo processes, validation at steps 3 and 6: guards the two
    deadlocks of rank-zero-only code calling a collective (``VideoLogger`` reading ``trainer.log_dir`` at
    validation, ``StepSpeed`` at the end of fit), which left rank 0 in a broadcast and rank 1 at a barrier."""
    config = write(shipped_toy(tmp_path, tiny_base, devices=2, strategy="ddp"), tmp_path / "config.yaml")
    r = run("fit", "-c", str(config), timeout=480)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ckpt(tmp_path)["global_step"] == 6
    videos = sorted((tmp_path / "run").glob("tensorboard/version_0/videos/step_*"))
    assert [v.name for v in videos] == ["step_000003", "step_000006"]
    assert len(list(videos[0].glob("*.mp4"))) == 4
    assert "trained 6 steps" in r.stdout and (tmp_path / "run/tensorboard/version_0/speed.json").exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_a_signal_writes_a_checkpoint_exits_non_zero_and_resumes(tiny_base, tmp_path, sig):
    """A signal mid-run: ``last.ckpt`` at the next step boundary (no periodic checkpoint is due), exit status
    128 + signal, and ``--ckpt_path last`` continues from there: at most one step is lost. Guards Lightning's
    default (exit 0 and no checkpoint) and a handler that forgets the EMA or the step."""
    cfg = shipped_toy(tmp_path, tiny_base, max_steps=10_000, val_check_interval=5)
    cfg["checkpoint"]["every_n_train_steps"] = 10_000
    config = write(add_callback(cfg, "step_file.StepFile", path=str(tmp_path / "step")), tmp_path / "config.yaml")
    proc = launch("fit", "-c", str(config))
    step, pid = wait_for_step(tmp_path / "step", proc, 7)  # past a validation with video logging
    os.kill(pid, getattr(signal, sig))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + getattr(signal, sig), err[-3000:]
    saved = ckpt(tmp_path)
    assert step <= saved["global_step"] <= step + 2  # the step under way when the signal came, or the next
    assert saved["callbacks"]["EMA"]["num_updates"] == saved["global_step"] and saved[EMA_KEY]
    r = run("fit", "-c", str(config), "--trainer.max_steps", str(saved["global_step"] + 2), "--ckpt_path", "last")
    assert r.returncode == 0, r.stderr[-3000:]
    assert ckpt(tmp_path)["global_step"] == saved["global_step"] + 2


@pytest.mark.parametrize("launcher", ["lightning", "torchrun"])
def test_sigterm_to_rank_zero_of_two_processes_stops_both_with_one_checkpoint(tiny_base, tmp_path, launcher):
    """Only rank 0 is signalled (as Kubernetes signals PID 1), or torchrun's agent, which passes SIGTERM to
    its workers: the ranks agree at the next step, both write their part of ``last.ckpt`` and leave with a
    non-zero status; no process is left waiting in a collective."""
    cfg = shipped_toy(tmp_path, tiny_base, devices=2, strategy="ddp", max_steps=10_000, val_check_interval=4)
    cfg["checkpoint"]["every_n_train_steps"] = 10_000
    config = write(add_callback(cfg, "step_file.StepFile", path=str(tmp_path / "step")), tmp_path / "config.yaml")
    torchrun = ["--nnodes=1", "--nproc-per-node=2", f"--master-port={free_port()}"] if launcher == "torchrun" else None
    proc = launch("fit", "-c", str(config), torchrun=torchrun)
    step, pid = wait_for_step(tmp_path / "step", proc, 5)
    os.kill(proc.pid if torchrun else pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    expected = 1 if torchrun else 128 + signal.SIGTERM  # torchrun reports a failed worker group with 1
    assert proc.returncode == expected, err[-3000:]
    assert group_ends(proc.pid), "rank 1 or a DataLoader worker is still running"
    assert step <= ckpt(tmp_path)["global_step"] <= step + 2


def test_slurm_usr1_requeues_the_job_after_the_checkpoint(tiny_base, tmp_path):
    """A simulated SLURM job (the ``SLURM_*`` variables Lightning reads, a fake ``scontrol`` on PATH), sent
    ``USR1`` to its whole process group as ``--signal=USR1@90`` does: checkpoint, then
    ``scontrol requeue JOBID``; the requeued command (with ``--ckpt_path last``) resumes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train",
           "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
           "SLURM_NODELIST": "127.0.0.1", "SLURM_NTASKS_PER_NODE": "1", "MASTER_PORT": "29731"}
    cfg = shipped_toy(tmp_path, tiny_base, max_steps=10_000, val_check_interval=1000)
    cfg["checkpoint"]["every_n_train_steps"] = 10_000
    config = write(add_callback(cfg, "step_file.StepFile", path=str(tmp_path / "step")), tmp_path / "config.yaml")
    proc = launch("fit", "-c", str(config), "--ckpt_path", "last", env=env)
    step, _ = wait_for_step(tmp_path / "step", proc, 3)
    os.killpg(proc.pid, signal.SIGUSR1)  # every process of the job step, DataLoader workers included
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGUSR1, err[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    saved = ckpt(tmp_path)["global_step"]
    assert step <= saved <= step + 2
    r = run("fit", "-c", str(config), "--ckpt_path", "last", "--trainer.max_steps", str(saved + 1), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ckpt(tmp_path)["global_step"] == saved + 1


def test_bad_data_on_one_rank_stops_both_ranks_with_one_line_and_a_checkpoint(tiny_base, tmp_path):
    """Rank 1 alone sees corrupt samples (a test callback plants skip counts in its batches); the counts are
    summed over the ranks, so both stop at the same step: exit 2, one ``BadDataError`` line, ``last.ckpt``.
    Guards a rank-local raise that leaves rank 0 waiting in the next all-reduce until the timeout."""
    cfg = shipped_toy(tmp_path, tiny_base, devices=2, strategy="ddp", max_steps=200, val_check_interval=1000)
    cfg["trainer"]["callbacks"].insert(0, {"class_path": "plant_bad.PlantBad", "init_args": {"rank": 1}})
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"] == "ls_video.callbacks.DataHealth":
            cb["init_args"].update(min_samples=8, window=100)
    r = run("fit", "-c", str(write(cfg, tmp_path / "config.yaml")), timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if "BadDataError" in line]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert ckpt(tmp_path)["global_step"] < 200


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("launcher", ["node_rank", "slurm", "torchrun"])
def test_two_nodes_read_disjoint_shards_and_one_rank_writes_checkpoints(tiny_base, tmp_path, launcher):
    """Two node ranks on one machine, one process each, with ``configs/strategy/ddp_multinode.yaml`` and
    ``--trainer.num_nodes 2 --trainer.devices 1``, launched as ``NODE_RANK=0/1 MASTER_ADDR=127.0.0.1``, as
    a simulated 2-task SLURM job (``SLURM_PROCID`` / ``SLURM_NODEID``) or by ``torchrun --nnodes 2``. One
    non-resampled pass over 4 shards: each rank trains on 2 whole shards, the two sets are disjoint and
    together every sample; checkpoints appear only in node 0's folder (each node has its own, as on
    separate disks)."""
    from ls_video.datamodules import ToyDataModule
    from ls_video.toy.world import ToyWorld

    cfg = shipped_toy(tmp_path, tiny_base, max_steps=-1, max_epochs=1, limit_val_batches=0)
    cfg["data"]["init_args"].update(resampled=False, shuffle_buffer=0, shard_size=4, num_workers=1)
    add_callback(cfg, "record_keys.RecordKeys", out=str(tmp_path / "keys"))
    config = write(cfg, tmp_path / "config.yaml")
    init = cfg["data"]["init_args"]  # the shards, built once here (the two "nodes" share this disk)
    data = ToyDataModule(tiny_base, cache_dir=init["cache_dir"], num_train_clips=16, num_val_clips=4,
                         world=ToyWorld(**init["world"]), shard_size=4, images=True)
    data.prepare_data()
    port = str(free_port())
    procs = []
    for node in range(2):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        if launcher == "node_rank":
            env.update(NODE_RANK=str(node))
        else:
            env.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_JOB_NAME="train", SLURM_JOB_ID="77",
                       SLURM_PROCID=str(node), SLURM_NODEID=str(node), SLURM_LOCALID="0",
                       SLURM_NODELIST="127.0.0.1")
        args = ["fit", "-c", str(config), "-c", "configs/strategy/ddp_multinode.yaml", "--trainer.num_nodes", "2",
                "--trainer.devices", "1", "--trainer.default_root_dir", str(tmp_path / f"node{node}")]
        torchrun = None
        if launcher == "torchrun":
            env, torchrun = {}, ["--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}", "--master-addr=127.0.0.1",
                                 f"--master-port={port}"]
        procs.append(launch(*args, env=env, torchrun=torchrun))
    for proc in procs:
        _, err = proc.communicate(timeout=480)
        assert proc.returncode == 0, err[-3000:]
    keys = [set(json.loads((tmp_path / "keys" / f"rank{r}.json").read_text())) for r in range(2)]
    assert len(keys[0]) == len(keys[1]) == 8 and not keys[0] & keys[1]
    assert len(keys[0] | keys[1]) == 16
    assert (tmp_path / "node0" / "checkpoints" / "last.ckpt").exists()
    assert not list((tmp_path / "node1").rglob("*.ckpt"))


def test_sharded_fit_resume_export_gives_the_ddp_runs_ema(tiny_base, tmp_path):
    """The issue's command, ``-c configs/toy.yaml -c configs/strategy/fsdp.yaml --trainer.accelerator cpu
    --trainer.devices 2``, with every callback: 2 steps, resume to 4, export. The same under DDP: the weights
    and the EMA agree to fp32 tolerance, so the EMA is whole, not one rank's shard (guards an EMA of
    ``named_parameters()`` shards, a resume that leaves it unsharded, a sharded VAE or text encoder, gradient
    norms clipped per shard instead of over the whole U-Net)."""
    runs = {}
    for name, overlay in [("ddp", []), ("fsdp", ["-c", "configs/strategy/fsdp.yaml"])]:
        cfg = shipped_toy(tmp_path / name, tiny_base, devices=2, num_nodes=1, max_steps=2, val_check_interval=2,
                          gradient_clip_val=0.01)  # sd15.yaml clips too; this low, every step is clipped
        config = write(cfg, tmp_path / name / "config.yaml")
        strategy = ["--trainer.strategy", "ddp"] if name == "ddp" else []
        first = run("fit", "-c", str(config), *overlay, *strategy, timeout=480)
        assert first.returncode == 0, first.stderr[-3000:]
        r = run("fit", "-c", str(config), *overlay, *strategy, "--trainer.max_steps", "4", "--ckpt_path", "last",
                timeout=480)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "EMA: resumed after 2 updates" in r.stdout + r.stderr
        runs[name] = torch.load(tmp_path / name / "run/checkpoints/last.ckpt", weights_only=True)
        if name == "fsdp":
            assert "FSDPUNet2DConditionModel" in first.stdout and "FSDPAutoencoderKL" not in first.stdout
            assert "FSDPCLIPTextModel" not in first.stdout
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    assert fsdp["global_step"] == ddp["global_step"] == 4
    assert ddp[EMA_KEY].keys() == fsdp[EMA_KEY].keys()
    for key, value in ddp[EMA_KEY].items():
        assert fsdp[EMA_KEY][key].shape == value.shape, key
        torch.testing.assert_close(fsdp[EMA_KEY][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for key, value in ddp["state_dict"].items():
        torch.testing.assert_close(fsdp["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    out = tmp_path / "exported"
    last = str(tmp_path / "fsdp/run/checkpoints/last.ckpt")
    r = subprocess.run([sys.executable, "-m", "ls_video.commands.export", last, str(out)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(out / "unet").state_dict()
    assert all(torch.equal(unet[k], v) for k, v in fsdp[EMA_KEY].items())
