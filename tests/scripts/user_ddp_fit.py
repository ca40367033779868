"""A user's own program: ``DistillationModule`` in a plain 2-process CPU ``Trainer``.

Usage: ``python user_ddp_fit.py STRATEGY OUT_DIR [nan-on-rank-1]``. It fits, then tests in the
same program; with ``nan-on-rank-1`` the teacher of rank 1 returns NaN from training step 2 on,
and every rank writes the error it stopped with to ``OUT_DIR/rank<R>.txt``.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_kd import DistillationModule
from lightning_kd.models import MLP


class NaNOnRank1(MLP):
    calls = 0

    def forward(self, x):
        out = super().forward(x)
        NaNOnRank1.calls += 1
        # Calls 1-2 are the sanity check, 3-4 training steps 0-1: NaN from step 2 on.
        if torch.distributed.get_rank() == 1 and NaNOnRank1.calls > 4:
            out = out * float("nan")
        return out


class RecordError(L.Callback):
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_exception(self, trainer, pl_module, exception):
        (self.out_dir / f"rank{trainer.global_rank}.txt").write_text(str(exception))


if __name__ == "__main__":
    strategy, out_dir = sys.argv[1], Path(sys.argv[2])
    nan = len(sys.argv) > 3
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    data = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    teacher = (NaNOnRank1 if nan else MLP)(8, 2, hidden=(16,))
    module = DistillationModule(MLP(8, 2, hidden=(4,)), teacher)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=1,
        logger=False,
        callbacks=[RecordError(out_dir)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data, data)
    trainer.test(module, data, verbose=False)  # the process group is still usable after fit
    if trainer.is_global_zero:
        print(f"finished: test/acc {float(trainer.callback_metrics['test/acc']):.4f}")
