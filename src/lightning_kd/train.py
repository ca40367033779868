"""``kd-train``: the Hydra command line of lightning-kd.

Run ``kd-train --help`` for the config groups, or ``python -m lightning_kd.train``. Examples::

    kd-train stage=teacher
    kd-train stage=distill distill.loss.temperature=8 distill.loss.alpha=0.7 student=mlp_small
    kd-train -m distill.loss.temperature=1,2,4,8,16 distill.loss.alpha=0.5,0.9 seed=0,1,2
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Run one job; return the monitored metric so that sweepers can optimise it."""
    # Imported here: --help, --cfg and config errors answer without importing Lightning.
    from lightning_kd.app.console import quiet_console
    from lightning_kd.app.job import run
    from lightning_kd.distributed import destroy_process_group

    quiet_console()
    try:
        return run(cfg)
    finally:
        # Each job of a sweep ends its own group; the next job's Trainer starts a fresh one.
        destroy_process_group()


if __name__ == "__main__":
    main()
