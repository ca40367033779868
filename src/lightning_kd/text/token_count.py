"""One token count per optimizer step, shared by the language-model modules."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import lightning as L
import torch
from torch import Tensor, nn

from lightning_kd.base import attached_trainer

__all__ = ["PerTokenGradients"]


class PerTokenGradients:
    """Mixin for a LightningModule whose ``training_step`` returns a loss summed over its tokens.

    Each micro-batch adds its counted tokens with :meth:`count_tokens`. Before the optimizer
    step (and before gradient clipping) the gradients of :meth:`trainable_parameters` are divided
    by the count over all micro-batches of that step and all ranks (one all-reduce per step), so
    the update is the same for any ``accumulate_grad_batches`` and any number of processes.
    Lightning divided each micro-batch's loss by ``accumulate_grad_batches`` and data parallelism
    averages the gradients over the ranks; both are undone here. (A subclass that overrides
    ``on_before_optimizer_step`` calls ``super().on_before_optimizer_step(optimizer)``.)
    """

    _tokens_this_step: Optional[Tensor] = None

    trainable_parameters: Callable[[], Iterable[nn.Parameter]]  # provided by the LightningKDModule

    def count_tokens(self, tokens: Tensor) -> None:
        """Add a micro-batch's counted tokens to this optimizer step's count."""
        tokens = tokens.detach()
        self._tokens_this_step = tokens if self._tokens_this_step is None else self._tokens_this_step + tokens

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the accumulated sums by this step's token count over all micro-batches and ranks."""
        module: L.LightningModule = self  # type: ignore[assignment]
        trainer = attached_trainer(module)
        tokens = self._tokens_this_step
        self._tokens_this_step = None
        if trainer is None or tokens is None:
            return
        total = trainer.strategy.reduce(tokens.long().reshape(1), reduce_op="sum")
        scale = trainer.accumulate_grad_batches * trainer.world_size / total.clamp(min=1)
        for parameter in self.trainable_parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(scale.to(parameter.grad.dtype))
