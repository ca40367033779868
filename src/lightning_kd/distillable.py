"""``DistillableModule``: the teacher handling that every distillation module shares.

A module that callbacks can distil is an instance of :class:`DistillableModule`: it has a
``student``, a frozen ``teacher``, a ``loss``, ``teacher_logits(x)``, one
``teacher_fingerprint()`` for every user of the teacher's identity, and an optional
``teacher_outputs`` store that training steps read instead of running the teacher. Its steps
return a :class:`~lightning_kd.contract.StepOutput`. The classifier and the language-model
modules build on it.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterable, Iterator, Optional

import lightning as L
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from lightning_kd.base import LightningKDModule, attached_trainer, check_module
from lightning_kd.batch import Batch, forward_logits
from lightning_kd.checkpoint import TEACHER_PREFIX
from lightning_kd.fingerprint import module_fingerprint

__all__ = ["NON_FINITE_PARTS", "TEACHER_FINGERPRINT_KEY", "DistillableModule", "require_distillable"]

TEACHER_FINGERPRINT_KEY = "teacher_fingerprint"
NON_FINITE_PARTS = ("teacher logits", "student logits", "soft loss", "hard loss")


class DistillableModule(LightningKDModule):
    """A trainable ``student`` and a frozen ``teacher``; subclasses write the steps.

    The teacher is frozen: ``requires_grad`` is off, its forward runs under ``torch.no_grad()``
    (its outputs are ordinary tensors that any loss may use), it stays in eval mode whatever the
    trainer does (``train()`` is overridden), and its parameters never reach the optimizer.
    Checkpoints hold the student only and a fingerprint of the teacher; a resumed run refuses a
    different teacher. At the end of ``fit`` every rank checks that its teacher is unchanged.

    Args:
        student: The network to train.
        teacher: The trained network to imitate.
        loss: The distillation loss (a callable).
        optimizer: Callable taking the student's parameters; Adam with ``lr=1e-3`` when ``None``.
        lr_scheduler: Optional callable taking the optimizer.
        num_classes: Number of classes; inferred from the first batch when ``None``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: Any,
        optimizer: Optional[Any] = None,
        lr_scheduler: Optional[Any] = None,
        num_classes: Optional[int] = None,
    ):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, num_classes=num_classes)
        self.student = check_module("student", student)
        self.teacher = check_module("teacher", teacher)
        if teacher is student:
            raise ValueError("teacher and student must be different modules, got the same object twice")
        if not callable(loss):
            raise TypeError(f"loss must be callable (e.g. a DistillationLoss), got {type(loss).__name__}")
        self.loss = loss
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        # Set by the CacheTeacherOutputs callback: training steps read the teacher's logits from
        # it by sample index instead of running the teacher.
        self.teacher_outputs: Optional[Any] = None
        self._teacher_fingerprint: Optional[str] = None
        self._fit_start_local_fingerprint: Optional[str] = None
        self._eval_mode_filter: Optional[tuple] = None

    #: Whether the outputs are per token (``[B, L, V]``): such teachers are stored as top-k logits.
    token_level = False

    def vocabulary_identity(self) -> Optional[str]:
        """The tokenizer the teacher declares, part of the key of its stored outputs (``None``: no tokenizer)."""
        return None

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return self.student.parameters()

    def forward(self, x: Any) -> Tensor:
        """The student's logits at ``T = 1``."""
        return forward_logits(self.student, x)

    # --- the teacher ------------------------------------------------------------------------

    def train(self, mode: bool = True) -> DistillableModule:
        """Set the student's mode; the teacher stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, x: Any) -> Tensor:
        """The frozen teacher's logits for ``x``: no gradient, no graph, usable by any loss."""
        return forward_logits(self.teacher, x)

    def teacher_logits_for(self, batch: Batch, stored: bool = False) -> Tensor:
        """Precomputed logits from the batch, from ``teacher_outputs`` (``stored``, training), or the teacher's."""
        if batch.teacher_logits is not None:
            return batch.teacher_logits.detach()
        if stored and self.teacher_outputs is not None and batch.index is not None:
            return self.teacher_outputs.lookup(batch.index, device=self.device)
        return self.teacher_logits(batch.x)

    @contextlib.contextmanager
    def full_teacher(self) -> Iterator[nn.Module]:
        """The teacher with its full weights, also when a strategy shards it (FSDP).

        Under FSDP this gathers the parameters on every rank (a collective: every rank must
        enter it) and frees them on exit; elsewhere it is a no-op.
        """
        root = _fsdp_root(self)
        if root is None:
            yield self.teacher
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(root, writeback=False, recurse=True):
            yield self.teacher

    def _local_teacher_fingerprint(self) -> str:
        with self.full_teacher() as teacher:
            return module_fingerprint(teacher)

    def teacher_fingerprint(self) -> str:
        """SHA-256 of the full teacher, the same on every rank (rank 0's), computed once per fit.

        The one identity of the teacher: checkpoints, the teacher-output store and resumed runs
        all use it. Under FSDP the first call is a collective.
        """
        if self._teacher_fingerprint is None:
            self._teacher_fingerprint = self._broadcast(self._local_teacher_fingerprint())
        return self._teacher_fingerprint

    def _broadcast(self, value: Any) -> Any:
        trainer = attached_trainer(self)
        return value if trainer is None else trainer.strategy.broadcast(value, src=0)

    def on_fit_start(self) -> None:
        local = self._local_teacher_fingerprint()
        self._fit_start_local_fingerprint = local
        self._teacher_fingerprint = self._broadcast(local)  # recomputed for this fit's checkpoints
        # Lightning warns about modules in eval mode just before on_train_start; for the frozen
        # teacher that is intended. The filter matches the teacher's exact module count, so a
        # student left in eval mode still warns, and it is removed again at on_train_start.
        count = sum(1 for _ in self.teacher.modules())
        warnings.filterwarnings(
            "ignore",
            message=rf"Found {count} module\(s\) in eval mode at the start of training",
            category=PossibleUserWarning,
        )
        self._eval_mode_filter = warnings.filters[0]

    def _remove_eval_mode_filter(self) -> None:
        if self._eval_mode_filter is not None:
            with contextlib.suppress(ValueError):
                warnings.filters.remove(self._eval_mode_filter)
            self._eval_mode_filter = None

    def on_train_start(self) -> None:
        self._remove_eval_mode_filter()

    def teardown(self, stage: str) -> None:
        self._remove_eval_mode_filter()

    def configure_callbacks(self) -> list[L.Callback]:
        """The module's own callbacks; a subclass that overrides this should add ``super()``'s."""
        return [_EndOfFitScope()]

    def on_fit_end(self) -> None:
        """Check, on every rank, that the fit left the teacher untouched and in eval mode."""
        self._remove_eval_mode_filter()
        if any(m.training for m in self.teacher.modules()):
            raise RuntimeError("the teacher was switched to train mode during fit; it must stay in eval mode")
        if self._local_teacher_fingerprint() != self._fit_start_local_fingerprint:
            raise RuntimeError("the teacher's weights or buffers changed during fit; they must stay frozen")

    # --- non-finite losses ------------------------------------------------------------------

    def check_finite(self, batch_idx: int, total: Tensor, parts: dict[str, Optional[Tensor]]) -> None:
        """Stop every rank at the same step when the loss is not finite on any rank.

        One all-reduced flag per step (cheap beside DDP's gradient all-reduce) makes the ranks
        agree, so none waits in the next collective for a rank that stopped. The report, the same
        on every rank, counts the ranks on which each part went non-finite.
        """
        trainer = attached_trainer(self)
        bad = (~torch.isfinite(total.detach())).reshape(1).float()
        if trainer is not None:
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        if not bad.item():
            return
        flags = torch.tensor(
            [float(v is not None and not torch.isfinite(v.detach()).all()) for v in parts.values()],
            device=bad.device,
        )
        world = 1
        if trainer is not None:
            flags = trainer.strategy.reduce(flags, reduce_op="sum")
            world = trainer.world_size
        found = [
            f"{name} is not finite" + (f" ({int(n)} of {world} ranks)" if world > 1 else "")
            for name, n in zip(parts, flags, strict=True)
            if n
        ]
        where = f" on {int(bad.item())} of {world} ranks" if world > 1 else ""
        raise FloatingPointError(
            f"non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}, "
            f"batch {batch_idx}){where}: {', '.join(found) or 'the total is not finite'}. "
            "Training stopped on every rank; the last checkpoint written before this step is intact "
            "(lower the learning rate, or check the inputs and the teacher)."
        )

    # --- checkpoints ------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the teacher's weights (small checkpoints that do not leak it); keep its fingerprint."""
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith(TEACHER_PREFIX)]:
            del state[key]
        checkpoint[TEACHER_FINGERPRINT_KEY] = self.teacher_fingerprint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the teacher passed in is the one the checkpoint was trained with; fill it in."""
        self._teacher_fingerprint = None  # the teacher may have been loaded since the last fit
        saved = checkpoint.get(TEACHER_FINGERPRINT_KEY)
        if saved is not None and saved != self.teacher_fingerprint():
            raise ValueError(
                f"the checkpoint was trained with a different teacher (fingerprint {saved[:16]}) than the one "
                f"passed in (fingerprint {self.teacher_fingerprint()[:16]}); pass the original teacher to resume"
            )
        state = checkpoint["state_dict"]
        for key, value in self.teacher.state_dict().items():
            state.setdefault(TEACHER_PREFIX + key, value)


class _EndOfFitScope(L.Callback):
    """Removes the module's fit-scoped warning filter when a fit fails: modules get no ``on_exception``."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(pl_module, DistillableModule):
            pl_module._remove_eval_mode_filter()


def _fsdp_root(module: DistillableModule) -> Optional[nn.Module]:
    """The FSDP unit that shards ``module``'s teacher, or ``None`` when nothing is sharded."""
    trainer = attached_trainer(module)
    if trainer is None:
        return None
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = trainer.strategy
    if not isinstance(strategy, FSDPStrategy) or strategy.model is None or strategy.model is module:
        return None
    return strategy.model


def require_distillable(user: str, module: Any) -> DistillableModule:
    """Return ``module`` if callbacks can distil it, else raise a ``TypeError`` naming ``user``.

    Example:
        >>> from lightning_kd import ClassifierModule
        >>> from lightning_kd.models import MLP
        >>> require_distillable("ExportStudent", ClassifierModule(MLP(4, 2)))
        Traceback (most recent call last):
        TypeError: ExportStudent needs a DistillableModule (e.g. DistillationModule), got ClassifierModule
    """
    if not isinstance(module, DistillableModule):
        raise TypeError(f"{user} needs a DistillableModule (e.g. DistillationModule), got {type(module).__name__}")
    return module
