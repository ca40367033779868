"""``CausalLMModule``: next-token training of one language model (a teacher, or the scratch baseline)."""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.base import LightningKDModule, check_module
from lightning_kd.batch import forward_logits
from lightning_kd.contract import StepOutput
from lightning_kd.losses import hard_target_loss
from lightning_kd.metrics import ExpMeanMetric, loggers_write_this_step, stage_metrics
from lightning_kd.optim import OptimizerFactory, SchedulerFactory
from lightning_kd.text.batches import split_lm_batch
from lightning_kd.text.module import last_position_prediction
from lightning_kd.text.token_count import PerTokenGradients

__all__ = ["CausalLMModule"]


class CausalLMModule(PerTokenGradients, LightningKDModule):
    """Train a causal language model with next-token cross-entropy, one token count per step.

    The batches and models are those of :class:`~lightning_kd.text.CausalLMDistillationModule`,
    and so is the normalisation: the loss is summed over the counted tokens and the gradients
    are divided by the tokens of the whole optimizer step (all micro-batches, all ranks).
    Metrics for ``val`` and ``test``: ``loss`` (mean next-token NLL), ``ppl`` and ``token_acc``.
    Checkpoints keep the weights under ``model.``.

    Args:
        model: The language model (logits ``[B, L, V]`` or an output with ``.logits``).
        optimizer: Callable taking the parameters; Adam with ``lr=1e-3`` when ``None``.
        lr_scheduler: Optional callable taking the optimizer.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class TinyLM(nn.Module):
        ...     def __init__(self, vocab=11, width=8):
        ...         super().__init__()
        ...         self.embed, self.head = nn.Embedding(vocab, width), nn.Linear(width, vocab)
        ...     def forward(self, input_ids, attention_mask=None):
        ...         return self.head(self.embed(input_ids).cumsum(1))
        >>> module = CausalLMModule(TinyLM())
        >>> out = module.training_step({"input_ids": torch.randint(0, 11, (2, 6))}, 0)
        >>> out["student_logits"].shape
        torch.Size([2, 5, 11])
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
    ):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.model = check_module("model", model)
        self.metrics = stage_metrics(["loss", "ppl", "token_acc"], kinds={"ppl": ExpMeanMetric})
        self.save_hyperparameters({"model_class": f"{type(model).__module__}.{type(model).__qualname__}"})

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        """The model's logits ``[B, L, V]``."""
        return forward_logits(self.model, inputs)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return self.model.parameters()

    def training_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Return the next-token loss summed over this micro-batch's counted tokens."""
        parts = split_lm_batch(batch)
        logits = self(parts.inputs)[:, :-1]
        loss = hard_target_loss(logits, parts.targets, num_positions=1)
        tokens = parts.mask.sum()
        self.count_tokens(tokens)
        if loggers_write_this_step(self):
            self.log("train/loss", loss.detach() / tokens.clamp(min=1), batch_size=max(int(tokens), 1))
        return StepOutput(loss=loss, student_logits=logits.detach(), targets=parts.targets, mask=parts.mask)

    def _evaluate(self, batch: Any, stage: str) -> StepOutput:
        parts = split_lm_batch(batch)
        logits = self(parts.inputs)[:, :-1]
        mask, tokens = parts.mask, int(parts.mask.sum())
        counted, targets = logits[mask].float(), parts.targets[mask]
        nll = F.cross_entropy(counted, targets, reduction="sum") / max(tokens, 1)
        accuracy = (counted.argmax(-1) == targets).float().mean() if tokens else nll * 0
        values = {"loss": (nll, tokens), "ppl": (nll, tokens), "token_acc": (accuracy, tokens)}
        self.update_and_log(stage, values, max(tokens, 1))
        return StepOutput(student_logits=logits, targets=parts.targets, mask=mask)

    def validation_step(self, batch: Any, batch_idx: int) -> StepOutput:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> StepOutput:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """The next-token distribution after each sequence's last attended token, at ``T = 1``."""
        inputs = split_lm_batch(batch).inputs
        return last_position_prediction(self(inputs), inputs)
