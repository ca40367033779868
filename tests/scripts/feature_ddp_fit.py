"""FitNets hints through a 1x1-convolution adapter in a plain 2-process CPU ``Trainer`` (gloo).

Usage: ``python feature_ddp_fit.py STRATEGY OUT_DIR``. Every rank writes ``OUT_DIR/rank<R>.pt``:
its adapters as built at setup (before DDP wraps the module) and after fit, its student's
parameters after fit (BatchNorm statistics are each rank's own), and the number of forward hooks
left on the networks.
"""

import os
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_kd import DistillationModule
from lightning_kd.models import CNN

PAIRS = [
    {"student": "features.6", "teacher": "features.6", "loss": "mse", "adapter": "conv1x1", "weight": 10.0},
    {"student": "features.2", "teacher": "features.2", "loss": "attention", "weight": 100.0},
]


class RecordingModule(DistillationModule):
    def setup(self, stage):
        super().setup(stage)
        self.built = {key: value.clone() for key, value in self.adapters.state_dict().items()}


if __name__ == "__main__":
    strategy, out_dir = sys.argv[1], Path(sys.argv[2])
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    data = DataLoader(TensorDataset(x, (x.mean(dim=(1, 2, 3)) > 0).long()), batch_size=8)
    module = RecordingModule(
        CNN(1, 2, channels=(4, 8), hidden=8), CNN(1, 2, channels=(8, 16), hidden=16), feature_pairs=PAIRS
    )
    # Each process leaves with another global random state: the adapters must not depend on it.
    torch.manual_seed(100 + int(os.environ.get("LOCAL_RANK", 0)))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    hooks = sum(len(m._forward_hooks) for net in (module.student, module.teacher) for m in net.modules())
    torch.save(
        {
            "built": module.built,
            "adapters": module.adapters.state_dict(),
            "student": {name: p.detach() for name, p in module.student.named_parameters()},
            "hooks": hooks,
            "steps": trainer.global_step,
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )
    if trainer.is_global_zero:
        print(f"finished: {trainer.global_step} steps")
