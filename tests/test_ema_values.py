"""EMA values against a hand-computed average, and the export of its checkpoint equal to it."""

import lightning as L
import torch

from ls_video.callbacks import EMA
from ls_video.commands.export import export
from ls_video.components import load_unet
from ls_video.module import LatentShiftModule
from ls_video.optim import OptimConfig

DECAY = 0.2  # asymmetric (0.2 vs 0.8), and the warm-up (1 + n) / (10 + n) is below it for n = 0, 1 only
STEPS = 3


class RecordWeights(L.Callback):
    """The trainable U-Net weights at the start and after every optimizer step."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def _record(self, pl_module: L.LightningModule) -> None:
        self.weights.append({n: p.detach().clone() for n, p in pl_module.unet.named_parameters() if p.requires_grad})

    def on_fit_start(self, trainer, pl_module) -> None:
        self._record(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._record(pl_module)


def by_hand(weights: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """``s <- d_n s + (1 - d_n) w_{n+1}`` from ``s = w_0``, with ``d_n = min(decay, (1 + n) / (10 + n))``."""
    shadow = {k: v.double() for k, v in weights[0].items()}
    for n, current in enumerate(weights[1:]):
        d = min(decay, (1 + n) / (10 + n))
        shadow = {k: d * shadow[k] + (1 - d) * current[k].double() for k in shadow}
    return shadow


def test_ema_matches_the_hand_computed_average_and_the_export_holds_it(tiny_base, tmp_path):
    """Fails if the EMA swaps ``decay`` and ``1 - decay``, gets the warm-up formula wrong (``max`` for ``min``,
    ``n + 1`` for ``n``, no warm-up), skips or repeats an update, or if export writes the raw weights or
    anything else than the EMA it was given."""
    torch.manual_seed(0)
    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0, learning_rate=1e-2))
    batches = [{"latents": torch.randn(2, 2, 4, 8, 8), "captions": ["a red square", "a blue circle"]}
               for _ in range(STEPS)]
    record, ema = RecordWeights(), EMA(decay=DECAY, warmup=True)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, callbacks=[record, ema])
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    assert ema.num_updates == STEPS and len(record.weights) == STEPS + 1
    expected = by_hand(record.weights, DECAY)
    for name, value in expected.items():
        torch.testing.assert_close(ema.shadow[name].double(), value, rtol=0, atol=1e-6, msg=name)
    # the average is not trivially one of the weights it averages (the test could not tell them apart)
    name = "conv_in.weight"
    assert all((expected[name] - w[name].double()).abs().max() > 1e-5 for w in record.weights)

    trainer.save_checkpoint(tmp_path / "last.ckpt")
    assert export(str(tmp_path / "last.ckpt"), str(tmp_path / "model")) is True
    exported = dict(load_unet(str(tmp_path / "model")).named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(exported[name].double(), value, rtol=0, atol=1e-6, msg=name)
