"""The U-Net's optimiser and learning-rate schedules (ls_video.optim)."""

import importlib.util
import io

import pytest
import torch

from ls_video.optim import OptimConfig, build_optimizer


def lrs(cfg: OptimConfig, total: int, start: int = 0, state: dict | None = None) -> list[float]:
    optimizer, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg, total)
    if state is not None:  # as Lightning resumes: the optimizer's state, then the scheduler's
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    out = []
    for _ in range(start, total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_stable_decay():
    """Warmup, then the peak, then linear to min_lr_fraction x peak over the last decay_steps steps."""
    cfg = OptimConfig(learning_rate=1e-3, warmup_steps=10, decay_steps=20, min_lr_fraction=0.1)
    lr = lrs(cfg, 100)
    assert lr[0] == 0.0 and lr[5] == pytest.approx(5e-4) and lr[10] == pytest.approx(1e-3)
    assert lr[79] == pytest.approx(1e-3) and lr[80] == pytest.approx(1e-3 * (1 - 0.9 / 20))
    assert lr[89] == pytest.approx(1e-3 * (1 - 0.9 * 10 / 20))
    assert lr[99] == pytest.approx(1e-4)  # the last step trains at the minimum
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))  # never rises after warmup
    assert lrs(OptimConfig(learning_rate=1e-3, warmup_steps=10), 100)[-1] == pytest.approx(1e-3)  # no decay


def test_a_resumed_schedule_continues_and_its_state_loads_without_pickle():
    """The scheduler's state goes through torch.save / weights_only=True and resumes at the same rate."""
    cfg = OptimConfig(learning_rate=1e-3, warmup_steps=10, decay_steps=20, min_lr_fraction=0.0)
    optimizer, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg, 100)
    for _ in range(85):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert lrs(cfg, 100, start=85, state=state) == pytest.approx(lrs(cfg, 100)[85:])


@pytest.mark.parametrize("bad, match", [(dict(decay_steps=-1), "decay_steps"),
                                        (dict(decay_steps=10, min_lr_fraction=1.5), "min_lr_fraction"),
                                        (dict(decay_steps=10, lr_schedule="cosine"), "lr_schedule: constant"),
                                        (dict(lr_schedule="linear"), "lr_schedule must be")])
def test_bad_schedules_are_one_line_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        OptimConfig(**bad)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_adamw_without_bitsandbytes_is_a_one_line_error():
    """``--model.optim.optimizer adamw8bit`` without bitsandbytes: refused when the config is built, before any
    data or model is loaded, in one line naming the package."""
    import subprocess
    import sys
    from pathlib import Path

    from ls_video.errors import UsageError

    with pytest.raises(UsageError, match="pip install bitsandbytes"):
        OptimConfig(optimizer="adamw8bit")
    r = subprocess.run([sys.executable, "train.py", "fit", "-c", "configs/toy.yaml", "--model.optim.optimizer",
                        "adamw8bit"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert r.returncode == 2 and "bitsandbytes" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert [line for line in r.stderr.splitlines() if "error" in line] == [r.stderr.strip().splitlines()[-1]]
