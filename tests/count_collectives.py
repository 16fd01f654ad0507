"""Test helper callback (importable by train.py subprocesses with PYTHONPATH=tests): counts the Python-level
collectives (``torch.distributed.all_reduce`` & co., which Lightning's ``strategy.reduce`` calls) issued while
training, and writes ``{out}/rank{R}.json`` = ``{"collectives": n, "global_step": s}``. DDP's gradient
all-reduces run inside its C++ reducer and are not counted."""

import json
import os
import traceback
from collections import Counter

import lightning as L
import torch

NAMES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list", "reduce")


class CountCollectives(L.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.count, self.counting = out, 0, False
        self.where: Counter = Counter()  # the project's call site of each counted collective
        self._saved: dict = {}

    def setup(self, trainer, pl_module, stage):
        for name in NAMES:
            original = self._saved.setdefault(name, getattr(torch.distributed, name))

            def counted(*args, _original=original, **kwargs):
                if self.counting:
                    self.count += 1
                    sites = [f"{os.path.basename(f.filename)}:{f.name}" for f in traceback.extract_stack()[:-1]
                             if "site-packages" not in f.filename and "count_collectives" not in f.filename]
                    self.where[sites[-1] if sites else "?"] += 1
                return _original(*args, **kwargs)

            setattr(torch.distributed, name, counted)

    def on_train_start(self, trainer, pl_module):
        self.count, self.counting = 0, True
        self.where.clear()

    def on_exception(self, trainer, pl_module, exception):
        self.on_train_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.counting = False
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"collectives": self.count, "global_step": trainer.global_step, "where": self.where}, f)

    def teardown(self, trainer, pl_module, stage):
        for name, original in self._saved.items():
            setattr(torch.distributed, name, original)
