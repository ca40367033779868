"""``CausalLMDistillationModule``: token-level distillation of a causal language model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.batch import forward_logits
from lightning_kd.contract import StepOutput
from lightning_kd.distillable import NON_FINITE_PARTS, DistillableModule
from lightning_kd.losses import (
    IGNORE_INDEX,
    DistillationLoss,
    TopKLogits,
    linear_hard_target_loss,
    linear_soft_target_loss,
    soft_target_loss,
)
from lightning_kd.losses.soft_target import aligned_classes
from lightning_kd.metrics import ExpMeanMetric, loggers_write_this_step, stage_metrics
from lightning_kd.optim import OptimizerFactory, SchedulerFactory
from lightning_kd.text.batches import LanguageModelBatch, split_lm_batch
from lightning_kd.text.on_policy import OnPolicySampling
from lightning_kd.text.sampling import sample_continuations
from lightning_kd.text.token_count import PerTokenGradients

__all__ = ["LOSS_ON", "CausalLMDistillationModule", "last_position_prediction", "tokenizer_identity"]

LOSS_ON = ("logits", "hidden")
EVAL_METRICS = ("loss", "ppl", "teacher_ppl", "token_acc", "teacher_agreement", "kl")


def tokenizer_identity(model: nn.Module) -> Optional[str]:
    """The tokenizer a model declares (``model.tokenizer_identity`` or ``model.config.tokenizer_identity``)."""
    found = getattr(model, "tokenizer_identity", None)
    return found if found is not None else getattr(getattr(model, "config", None), "tokenizer_identity", None)


class CausalLMDistillationModule(PerTokenGradients, DistillableModule):
    """Token-level distillation of a frozen causal language model into a trainable one.

    Batches are dicts with ``input_ids`` ``[B, L]``, optional ``attention_mask`` and ``labels``
    (``-100`` = not counted; by default ``input_ids`` with the padding masked). The networks are
    called with keyword arguments and may return logits ``[B, L, V]`` or an object with
    ``.logits`` (Hugging Face outputs): any ``nn.Module`` works. Position ``t``'s logits are scored
    against token ``t + 1``; the soft and the hard term count the same tokens.

    **One token count per optimizer step** (:class:`~lightning_kd.text.token_count.PerTokenGradients`):
    each micro-batch adds its loss summed over its counted tokens, and the student's gradients
    are divided by the count over all micro-batches of the step and all ranks before the
    optimizer step. The logged ``train/`` values are per token.

    The teacher is frozen as in :class:`~lightning_kd.DistillationModule` (the shared
    :class:`~lightning_kd.distillable.DistillableModule`). Metrics for ``val`` and ``test``, exact
    over the whole set across ranks: ``loss`` (the student's mean next-token NLL), ``ppl``
    (``exp`` of it), ``teacher_ppl``, ``token_acc``, ``teacher_agreement`` (same top-1 per token)
    and ``kl`` (per-token forward KL at ``T = 1``).

    **On-policy distillation** (``on_policy``, Agarwal et al. 2024, GKD; GKD's ``lmbda`` is
    :attr:`OnPolicySampling.fraction <lightning_kd.text.OnPolicySampling>`): on the optimizer steps
    it picks (the same on every rank), the first ``prompt_length`` tokens of each sequence are a
    prompt, the student samples ``max_new_tokens`` tokens after it (no gradient through the
    sampling), and the live teacher scores prompt + sample. Only the soft term counts there, on
    the continuation's positions: the student's own tokens are no target for the hard term. The
    divergence is the loss's: ``forward_kl`` (supervised KD on student samples), ``reverse_kl``,
    ``jsd`` with ``beta`` (GKD's generalised JSD) or ``tvd``. Stored teacher outputs and teacher
    logits in the batch are of other text and are not used on those steps. The counted tokens
    (``B * max_new_tokens`` per micro-batch) join the step's token count as on ordinary steps;
    ``train/on_policy`` logs ``1.0`` on sampling steps and ``0.0`` on the others.

    Args:
        student: The language model to train.
        teacher: The trained language model to imitate (same tokenizer).
        loss: A :class:`~lightning_kd.losses.DistillationLoss` (``T = 1``, ``alpha = 0.5`` when
            ``None``), or a callable ``(student_logits, teacher_logits, targets, mask, num_positions)``
            returning ``total``, ``soft``, ``hard``, that returns sums when ``num_positions=1``.
        optimizer: Callable taking the student's parameters; Adam with ``lr=1e-3`` when ``None``.
        lr_scheduler: Optional callable taking the optimizer.
        loss_on: ``"logits"``, or ``"hidden"``: the student's final hidden states and output head
            go to :func:`~lightning_kd.losses.linear_soft_target_loss`, so its full logits are never
            built in training (a Hugging Face causal LM: ``base_model`` and ``get_output_embeddings()``).
        mass_tolerance: With ``vocab_alignment="truncate"``, the largest teacher probability mass
            allowed on the entries beyond the student's vocabulary (checked on the first batch).
        on_policy: An :class:`~lightning_kd.text.OnPolicySampling` (or a dict of its fields) to
            train on the student's own samples on a share of the steps; needs a ``DistillationLoss``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class TinyLM(nn.Module):
        ...     def __init__(self, vocab=11, width=8):
        ...         super().__init__()
        ...         self.embed, self.head = nn.Embedding(vocab, width), nn.Linear(width, vocab)
        ...     def forward(self, input_ids, attention_mask=None):
        ...         return self.head(self.embed(input_ids).cumsum(1))  # causal: position t sees tokens <= t
        >>> module = CausalLMDistillationModule(TinyLM(), TinyLM(width=16))
        >>> out = module.training_step({"input_ids": torch.randint(0, 11, (2, 6))}, 0)
        >>> out["student_logits"].shape, out["mask"].shape
        (torch.Size([2, 5, 11]), torch.Size([2, 5]))
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: Optional[Any] = None,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        *,
        loss_on: str = "logits",
        mass_tolerance: float = 1e-3,
        on_policy: Optional[Union[OnPolicySampling, Mapping[str, Any]]] = None,
    ):
        loss = DistillationLoss(temperature=1.0, alpha=0.5) if loss is None else loss
        super().__init__(student, teacher, loss, optimizer=optimizer, lr_scheduler=lr_scheduler)
        if loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
        if loss_on == "hidden":
            if not isinstance(loss, DistillationLoss) or loss.objective != "kl":
                raise ValueError("loss_on='hidden' needs a DistillationLoss with objective='kl'")
            _hidden_and_head(student)  # fails now, naming what is missing
        student_tokenizer, teacher_tokenizer = tokenizer_identity(student), tokenizer_identity(teacher)
        if student_tokenizer is not None and teacher_tokenizer is not None and student_tokenizer != teacher_tokenizer:
            raise ValueError(
                f"student and teacher use different tokenizers ({student_tokenizer!r} vs {teacher_tokenizer!r}); "
                "token-level distillation needs one tokenizer"
            )
        self.loss_on = loss_on
        self.mass_tolerance = float(mass_tolerance)
        self.on_policy = _check_on_policy(on_policy, self.loss, student, teacher)
        self.metrics = stage_metrics(EVAL_METRICS, kinds={"ppl": ExpMeanMetric, "teacher_ppl": ExpMeanMetric})
        self._vocabulary_checked = False
        hparams: dict[str, Any] = {
            "student_class": f"{type(student).__module__}.{type(student).__qualname__}",
            "teacher_class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
            "loss_on": loss_on,
            "on_policy": None if self.on_policy is None else self.on_policy.hparams(),  # a dict: loads back
        }
        if isinstance(self.loss, DistillationLoss):
            hparams.update(self.loss.hparams())
        self.save_hyperparameters(hparams)

    token_level = True

    def vocabulary_identity(self) -> Optional[str]:
        """The teacher's declared tokenizer and vocabulary size, part of the key of its stored outputs."""
        size = getattr(getattr(self.teacher, "config", None), "vocab_size", None)
        return f"{tokenizer_identity(self.teacher)}|{size}"

    # --- logits -----------------------------------------------------------------------------

    def _teacher_logits(self, parts: LanguageModelBatch) -> Union[Tensor, TopKLogits]:
        if self.teacher_outputs is not None and parts.index is not None:  # stored top-k logits per token
            top = self.teacher_outputs.lookup_top_k(parts.index, device=self.device)
            return TopKLogits(top.values[:, :-1], top.indices[:, :-1])
        if parts.teacher_logits is not None:
            given = parts.teacher_logits
            return TopKLogits(given.values.detach(), given.indices) if isinstance(given, TopKLogits) else given.detach()
        return self.teacher_logits(parts.inputs)[:, :-1]

    def _check_vocabulary(self, student_classes: int, teacher: Union[Tensor, TopKLogits], mask: Tensor) -> None:
        """Once: sizes that differ need ``vocab_alignment='truncate'``, and then a teacher that puts
        (almost) no mass on the entries the student lacks."""
        if self._vocabulary_checked:
            return
        alignment = getattr(self.loss, "vocab_alignment", "error")
        aligned_classes(student_classes, teacher, alignment)  # raises for a mismatch without truncate
        if isinstance(teacher, Tensor) and teacher.shape[-1] > student_classes and bool(mask.any()):
            dropped = teacher.float().softmax(-1)[..., student_classes:].sum(-1)[mask].max()
            if dropped > self.mass_tolerance:
                extra = teacher.shape[-1] - student_classes
                raise ValueError(
                    f"the teacher puts up to {float(dropped):.3g} of its probability on the {extra} entries beyond "
                    f"the student's {student_classes}-token vocabulary (tolerance {self.mass_tolerance:g}): they are "
                    "real tokens, not padding, so truncating would change the teacher"
                )
        self._vocabulary_checked = True

    # --- training ---------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Return the loss summed over this micro-batch's counted tokens, and detached outputs for callbacks.

        On an on-policy step the batch is replaced by prompt + the student's sample first.
        """
        sampling = self.on_policy is not None and self.on_policy.samples_this_step(self.global_step)
        if sampling:
            batch = self._on_policy_batch(batch, batch_idx)
        parts = split_lm_batch(batch)
        # Stored or batch-given teacher logits are of the dataset's text, not of the student's samples.
        teacher_logits = self.teacher_logits(parts.inputs)[:, :-1] if sampling else self._teacher_logits(parts)
        if self.loss_on == "hidden":
            student_logits = None
            out = self._hidden_loss(parts, teacher_logits, hard=not sampling)
        else:
            student_logits = forward_logits(self.student, parts.inputs)[:, :-1]
            self._check_vocabulary(student_logits.shape[-1], teacher_logits, parts.mask)
            if sampling:  # the student's own tokens are no target: the soft term alone
                soft = self.loss.soft(student_logits, teacher_logits, parts.mask, num_positions=1)
                out = self.loss.combine(soft, None)
            else:
                out = self.loss(student_logits, teacher_logits, parts.targets, parts.mask, num_positions=1)
        tokens = parts.mask.sum()
        self.count_tokens(tokens)
        teacher_values = teacher_logits.values if isinstance(teacher_logits, TopKLogits) else teacher_logits
        self.check_finite(
            batch_idx,
            out.total,
            dict(zip(NON_FINITE_PARTS, (teacher_values, student_logits, out.soft, out.hard), strict=True)),
        )
        if loggers_write_this_step(self):
            self._log_training_step(out, tokens, sampling)
        output = StepOutput(loss=out.total, targets=parts.targets, mask=parts.mask)
        if student_logits is not None:
            output["student_logits"] = student_logits.detach()
            if isinstance(teacher_logits, Tensor):  # callbacks compare dense logits only
                output["teacher_logits"] = teacher_logits
        return output

    def _on_policy_batch(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """``{"input_ids": prompt + student sample, "labels": -100 on the prompt}`` for this micro-batch."""
        settings: OnPolicySampling = self.on_policy
        input_ids = split_lm_batch(batch).inputs["input_ids"]
        length = settings.prompt_length
        if input_ids.shape[1] < length + 1:
            raise ValueError(
                f"on-policy sampling takes the first prompt_length={length} tokens of each sequence as its prompt: "
                f"the sequences need at least {length + 1} tokens, got input_ids of shape {tuple(input_ids.shape)}"
            )
        attention = batch.get("attention_mask")
        if attention is not None and not bool((attention[:, :length] != 0).all()):
            rows = (attention[:, :length] == 0).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(
                f"on-policy sampling needs prompts without padding, but the first {length} tokens of rows {rows} "
                "have attention_mask 0: pad on the right, or use a shorter prompt_length"
            )
        prompt = input_ids[:, :length]
        generator = settings.generator(self.global_step, self.global_rank, batch_idx, device=prompt.device)
        ids = sample_continuations(
            self.student,
            prompt,
            settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=settings.top_k,
            generator=generator,
        )
        labels = ids.clone()
        labels[:, :length] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels}

    def _hidden_loss(
        self, parts: LanguageModelBatch, teacher_logits: Union[Tensor, TopKLogits], hard: bool = True
    ) -> Any:
        hidden, head = _hidden_and_head(self.student)
        states = hidden(**parts.inputs)[:, :-1]
        self._check_vocabulary(head.weight.shape[0], teacher_logits, parts.mask)
        loss: DistillationLoss = self.loss
        chunk_size = loss.chunk_size or 1024
        soft = linear_soft_target_loss(
            states,
            head.weight,
            teacher_logits,
            loss.temperature,
            parts.mask,
            head_bias=head.bias,
            divergence=loss.divergence,
            beta=loss.beta,
            num_positions=1,
            chunk_size=chunk_size,
            vocab_alignment=loss.vocab_alignment,
        )
        hard_loss = None
        if hard and loss.alpha < 1:
            hard_loss = linear_hard_target_loss(
                states,
                head.weight,
                parts.targets,
                loss.ignore_index,
                head_bias=head.bias,
                num_positions=1,
                chunk_size=chunk_size,
            )
        return loss.combine(soft, hard_loss)

    def _log_training_step(self, out: Any, tokens: Tensor, sampling: bool) -> None:
        count = tokens.clamp(min=1).to(out.total.dtype)
        logs: dict[str, Any] = {"train/loss": out.total.detach() / count, "train/soft_loss": out.soft.detach() / count}
        if out.hard is not None:
            logs["train/hard_loss"] = out.hard.detach() / count
        if self.on_policy is not None:
            logs["train/on_policy"] = float(sampling)
        batch_size = int(tokens)
        self.log_dict(logs, batch_size=max(batch_size, 1), prog_bar=False)
        for name in ("temperature", "alpha"):
            value = getattr(self.loss, name, None)
            if value is not None:
                self.log(f"train/{name}", float(value), batch_size=max(batch_size, 1))

    # --- evaluation -------------------------------------------------------------------------

    def _evaluate(self, batch: Any, stage: str) -> StepOutput:
        parts = split_lm_batch(batch)
        student_logits = forward_logits(self.student, parts.inputs)[:, :-1]
        teacher_logits = self.teacher_logits(parts.inputs)[:, :-1]
        self._check_vocabulary(student_logits.shape[-1], teacher_logits, parts.mask)
        classes = aligned_classes(
            student_logits.shape[-1], teacher_logits, getattr(self.loss, "vocab_alignment", "error")
        )
        mask, targets = parts.mask, parts.targets.clamp(min=0)
        tokens = int(mask.sum())
        student, teacher = student_logits[mask], teacher_logits[mask][:, :classes]
        nll = F.cross_entropy(student.float(), targets[mask], reduction="sum") / max(tokens, 1)
        teacher_nll = F.cross_entropy(teacher.float(), targets[mask], reduction="sum") / max(tokens, 1)
        values = {
            "loss": nll,
            "ppl": nll,
            "teacher_ppl": teacher_nll,
            "token_acc": (student.argmax(-1) == targets[mask]).float().mean() if tokens else nll * 0,
            "teacher_agreement": (student[:, :classes].argmax(-1) == teacher.argmax(-1)).float().mean()
            if tokens
            else nll * 0,
            "kl": soft_target_loss(student[:, :classes], teacher, 1.0),
        }
        metrics = self.metrics[stage]
        for name, value in values.items():
            metrics[name].update(value, weight=tokens)
            self.log(f"{stage}/{name}", metrics[name], on_step=False, on_epoch=True, batch_size=max(tokens, 1))
        return StepOutput(
            student_logits=student_logits, teacher_logits=teacher_logits, targets=parts.targets, mask=mask
        )

    def validation_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Update the ``val`` metrics (at ``T = 1``); return the logits, targets and mask for callbacks."""
        return self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Update the ``test`` metrics (at ``T = 1``); return the logits, targets and mask for callbacks."""
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """The next-token distribution after each sequence's last attended token, at ``T = 1``:
        ``{"probs": [B, V], "preds": [B]}``."""
        parts = split_lm_batch(batch)
        return last_position_prediction(forward_logits(self.student, parts.inputs), parts.inputs)


def last_position_prediction(logits: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """``{"probs", "preds"}`` of the logits ``[B, L, V]`` after each sequence's last attended token."""
    attention = inputs.get("attention_mask")
    last = (
        (attention.sum(1) - 1).clamp(min=0)
        if attention is not None
        else torch.full_like(logits[:, 0, 0], logits.shape[1] - 1, dtype=torch.long)
    )
    final = logits[torch.arange(logits.shape[0], device=logits.device), last.long()]
    return {"probs": F.softmax(final.float(), dim=-1), "preds": final.argmax(dim=-1)}


def _check_on_policy(
    on_policy: Optional[Union[OnPolicySampling, Mapping[str, Any]]], loss: Any, *models: nn.Module
) -> Optional[OnPolicySampling]:
    """``on_policy`` as an :class:`OnPolicySampling` (a dict, as saved in the hyperparameters, converts)."""
    if on_policy is None:
        return None
    if isinstance(on_policy, Mapping):
        on_policy = OnPolicySampling(**on_policy)
    if not isinstance(on_policy, OnPolicySampling):
        raise TypeError(f"on_policy must be an OnPolicySampling, a dict of its fields or None, got {on_policy!r}")
    if not isinstance(loss, DistillationLoss):
        raise ValueError(
            f"on_policy needs a DistillationLoss (its soft term alone trains on the student's samples), got "
            f"{type(loss).__name__}"
        )
    length = on_policy.prompt_length + on_policy.max_new_tokens
    for model in models:
        config = getattr(model, "config", None)
        limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and length > limit:
            raise ValueError(
                f"prompt_length + max_new_tokens = {length} exceeds the {limit} positions of {type(model).__name__}"
            )
    return on_policy


def _hidden_and_head(model: nn.Module) -> tuple[Any, nn.Linear]:
    """A function giving a causal LM's final hidden states, and its output head (Hugging Face layout)."""
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or base is model or not isinstance(head, nn.Linear):
        raise TypeError(
            f"loss_on='hidden' needs a model with `base_model` (returning last_hidden_state) and "
            f"`get_output_embeddings()` (an nn.Linear head), as Hugging Face causal LMs have; {type(model).__name__} "
            "has not: use loss_on='logits'"
        )

    def hidden(**inputs: Tensor) -> Tensor:
        return base(**inputs).last_hidden_state

    return hidden, head
