"""``DistillationModule``: trains a classifier student to imitate a frozen teacher."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

import lightning as L
import torch
from torch import Tensor, nn

from lightning_kd.base import attached_trainer, infer_num_classes
from lightning_kd.batch import split_batch
from lightning_kd.contract import StepOutput
from lightning_kd.distillable import NON_FINITE_PARTS, DistillableModule
from lightning_kd.features import FeatureDistillation, FeaturePair, parse_feature_pairs
from lightning_kd.losses import DistillationLoss, DKDLoss, soft_target_loss
from lightning_kd.metrics import loggers_write_this_step, stage_metrics
from lightning_kd.optim import OptimizerFactory, SchedulerFactory

__all__ = ["DistillationModule"]


class DistillationModule(DistillableModule):
    """Knowledge distillation of a frozen ``teacher`` into a trainable ``student``.

    Training minimises ``loss(student_logits, teacher_logits, y)``; by default a
    :class:`~lightning_kd.losses.DistillationLoss` (``alpha * T**2 * KL_T + (1 - alpha) * CE``).
    Any callable returning an object with ``total``, ``soft`` and ``hard`` works: the teacher's
    logits are ordinary tensors without a graph, so a custom loss may use them freely.
    Validation, test and prediction use the student at ``T = 1``: the temperature of the loss
    never changes a metric or a prediction. The teacher is frozen (see
    :class:`~lightning_kd.distillable.DistillableModule`).

    Batches are ``(x, y)``, ``(x,)`` (unlabeled, needs ``alpha = 1``), or a dict with ``"x"`` and
    optionally ``"y"``, ``"teacher_logits"`` (precomputed teacher outputs skip the teacher) and
    ``"index"`` (the key of the teacher-output store).

    Intermediate features (FitNets hints, attention transfer): ``feature_pairs`` name layers of
    the student and the teacher (see :class:`~lightning_kd.features.FeaturePair`) whose outputs,
    recorded with forward hooks during training steps, add ``sum(weight * feature_loss)`` to the
    training loss. Adapters that map a student feature to the teacher's shape live in
    ``self.adapters`` (an ``nn.ModuleDict``): they are trained with the student, saved in
    checkpoints (a resumed run continues them) and never exported (``ExportStudent``,
    ``load_student`` and ``student.pt`` hold the student only). They are built at
    ``setup("fit")``, before the optimizer and any DDP wrapping, from one dry forward of both
    networks (eval mode, no gradients) on the first two samples of a training batch, or at once
    from ``example_input``; their initial weights depend only on the pairs and the seed of
    ``lightning.seed_everything`` (0 without), so every process builds the same ones. The
    hooks exist from ``setup("fit")`` to the end of training (also when fit fails), and record
    only inside training steps; the teacher's run under its ``no_grad`` forward, which a training
    step then always runs (its features cannot be stored, so ``CacheTeacherOutputs`` refuses such
    a module; logits in the batch still replace its logits). Evaluation is unchanged.

    Logged metrics: ``train/loss`` (the whole training loss), ``train/soft_loss``, ``train/hard_loss``,
    ``train/feature_loss/<pair log name>`` (each unweighted; see :attr:`FeaturePair.log_name`),
    ``train/temperature``, ``train/alpha``, on the steps the loggers write
    (``Trainer(log_every_n_steps=...)``); and for ``val`` and ``test``: ``loss`` (student cross-entropy), ``acc``,
    ``teacher_acc`` (the teacher's accuracy, for reference), ``teacher_agreement`` (same argmax as
    the teacher) and ``kl`` (``KL(teacher || student)`` at ``T = 1``).

    Args:
        student: The network to train; returns logits ``[B, C]``.
        teacher: The trained network to imitate; returns logits of the same shape.
        loss: Callable ``(student_logits, teacher_logits, targets)`` returning an object with
            ``total``, ``soft`` and ``hard``; ``DistillationLoss()`` when ``None``.
        optimizer: Callable taking parameters, e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``;
            Adam with ``lr=1e-3`` when ``None``. Receives the student's parameters only.
        lr_scheduler: Optional callable taking the optimizer.
        num_classes: Number of classes; inferred from the first batch when ``None``.
        feature_pairs: Intermediate-feature terms: :class:`~lightning_kd.features.FeaturePair` objects or
            dicts with the keys ``student``, ``teacher``, ``loss``, ``adapter``, ``weight`` (a Hydra list works).
        example_input: An input batch of the networks (e.g. ``x[:2]``) to build the adapters from at
            once, rather than from a training batch at ``setup("fit")``.

    Example:
        >>> import lightning as L, torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_kd import DistillationLoss, DistillationModule
        >>> from lightning_kd.models import MLP
        >>> module = DistillationModule(MLP(8, 3, hidden=(4,)), MLP(8, 3, hidden=(32,)),
        ...                             loss=DistillationLoss(temperature=2.0, alpha=0.5))
        >>> data = DataLoader(TensorDataset(torch.randn(16, 8), torch.randint(0, 3, (16,))), batch_size=8)
        >>> trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module, data, data)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
        ['val/acc', 'val/kl', 'val/loss', 'val/teacher_acc', 'val/teacher_agreement']

        FitNets hints through a 1x1 convolution, and attention transfer, between two CNNs:

        >>> from lightning_kd.models import CNN
        >>> pairs = [
        ...     {"student": "features.6", "teacher": "features.6", "loss": "mse", "adapter": "conv1x1", "weight": 100},
        ...     {"student": "features.2", "teacher": "features.2", "loss": "attention", "weight": 1000},
        ... ]
        >>> module = DistillationModule(CNN(1, 3, channels=(4, 8)), CNN(1, 3, channels=(8, 16)), feature_pairs=pairs,
        ...                             example_input=torch.zeros(2, 1, 8, 8))
        >>> module.adapters
        ModuleDict(
          (features_6_to_features_6): Conv2d(8, 16, kernel_size=(1, 1), stride=(1, 1))
        )
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: Optional[nn.Module] = None,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        num_classes: Optional[int] = None,
        feature_pairs: Optional[Iterable[Union[FeaturePair, Mapping[str, Any]]]] = None,
        example_input: Any = None,
    ):
        super().__init__(
            student,
            teacher,
            DistillationLoss() if loss is None else loss,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            num_classes=num_classes,
        )
        self.metrics = stage_metrics(["loss", "acc", "teacher_acc", "teacher_agreement", "kl"])
        # Primitives only: checkpoints must load with torch.load(weights_only=True).
        hparams: dict[str, Any] = {
            "num_classes": num_classes,
            "student_class": f"{type(student).__module__}.{type(student).__qualname__}",
            "teacher_class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
        }
        if isinstance(self.loss, (DistillationLoss, DKDLoss)):
            hparams.update(self.loss.hparams())
        self.feature_pairs = parse_feature_pairs(feature_pairs)
        self.adapters = nn.ModuleDict()
        self.feature_distillation: Optional[FeatureDistillation] = None
        if self.feature_pairs:
            self.feature_distillation = FeatureDistillation(self.feature_pairs, self.adapters)
            hparams["feature_pairs"] = [pair.to_dict() for pair in self.feature_pairs]
        if example_input is not None:
            if self.feature_distillation is None:
                raise ValueError("example_input builds the adapters of feature_pairs; pass feature_pairs too")
            self.feature_distillation.build(self.student, self.teacher, example_input, seed=_adapter_seed())
        self.save_hyperparameters(hparams)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The student's parameters and the adapters'."""
        return itertools.chain(self.student.parameters(), self.adapters.parameters())

    # --- intermediate features ----------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """For ``fit`` with ``feature_pairs``: build the missing adapters and attach the hooks."""
        super().setup(stage)
        features = self.feature_distillation
        if stage != "fit" or features is None:
            return
        if not features.built:
            features.build(self.student, self.teacher, self._training_example(), seed=_adapter_seed())
        features.attach(self.student, self.teacher)

    def _training_example(self) -> Any:
        """The inputs of the first two samples of the first training batch, for the adapters' dry forward."""
        trainer = attached_trainer(self)
        source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)  # Lightning's record of the loader
        batch, reason = None, "the trainer has no training dataloader yet"
        with torch.random.fork_rng(devices=[]):  # the peek must not shift the run's random stream (shuffling)
            try:
                loader = source.dataloader() if source is not None and source.is_defined() else None
                if loader is not None:
                    batch = next(iter(loader))
            except StopIteration:
                reason = "the training dataloader is empty"
            except Exception as error:  # a private Lightning API or a user's loader: explain, then fail
                reason = f"reading it failed ({type(error).__name__}: {error})"
        try:
            x = split_batch(batch).x if batch is not None else None
        except TypeError as error:
            x, reason = None, str(error)
        if x is None:
            raise RuntimeError(
                f"feature_pairs build their adapters from one training batch at setup('fit'), but {reason}: "
                "pass example_input (a batch of inputs, e.g. x[:2]) to DistillationModule"
            )
        return _first_samples(x, 2)

    def _remove_feature_hooks(self) -> None:
        if self.feature_distillation is not None:
            self.feature_distillation.remove()

    def on_train_end(self) -> None:
        # Before the callbacks' on_fit_end (ExportStudent copies and traces the student there).
        self._remove_feature_hooks()

    def on_fit_end(self) -> None:
        self._remove_feature_hooks()
        super().on_fit_end()

    def teardown(self, stage: str) -> None:
        self._remove_feature_hooks()
        super().teardown(stage)

    def configure_callbacks(self) -> list[L.Callback]:
        callbacks = super().configure_callbacks()
        if self.feature_distillation is not None:
            callbacks.append(_RemoveFeatureHooksOnException())
        return callbacks

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a state; adapters not built yet are first created in the shape of the saved ones."""
        if self.feature_distillation is not None:
            parameter = next(self.student.parameters(), None)
            device = None if parameter is None else parameter.device
            self.feature_distillation.adapters_from_state(state_dict, prefix="adapters.", device=device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def feature_grad_norms(self, output: Mapping[str, Any]) -> dict[str, float]:
        """Norms of the gradients that the weighted feature terms send to the student's features, by pair log name.

        Read by :class:`~lightning_kd.callbacks.DistillationMonitor` from a training step's output;
        empty without feature pairs, and under FSDP (outside a forward pass the adapters are sharded).
        """
        features = output.get("features") if isinstance(output, Mapping) else None
        if self.feature_distillation is None or not features:
            return {}
        from lightning.pytorch.strategies import FSDPStrategy

        trainer = attached_trainer(self)
        if trainer is not None and isinstance(trainer.strategy, FSDPStrategy):
            return {}
        return self.feature_distillation.grad_norms(features)

    def training_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Return the loss, and the detached logits and targets for callbacks.

        With feature pairs the output also holds ``"features"``: ``{pair name: (student feature,
        teacher feature)}``, detached, for :meth:`feature_grad_norms`.
        """
        parts = split_batch(batch)
        features = self.feature_distillation
        feature_losses: dict[str, Tensor] = {}
        if features is None:
            student_logits = self(parts.x)
            infer_num_classes(self, student_logits)
            teacher_logits = self.teacher_logits_for(parts, stored=True)
        else:
            with features.capturing():
                student_logits = self(parts.x)
                live_logits = self.teacher_logits(parts.x)  # the teacher runs for its features
            student_features, teacher_features = features.take()
            infer_num_classes(self, student_logits)
            teacher_logits = live_logits if parts.teacher_logits is None else parts.teacher_logits.detach()
            feature_losses = features.losses(student_features, teacher_features)
        out = self.loss(student_logits, teacher_logits, parts.y)
        if not all(hasattr(out, part) for part in ("total", "soft", "hard")):
            raise TypeError(
                f"loss {type(self.loss).__name__} returned a {type(out).__name__}; a DistillationModule loss must "
                "return an object with total, soft and hard, such as DistillationLossOutput(total, soft, hard=None)"
            )
        total = out.total if features is None else out.total + features.weighted_sum(feature_losses)
        parts_to_check = dict(zip(NON_FINITE_PARTS, (teacher_logits, student_logits, out.soft, out.hard), strict=True))
        parts_to_check.update({f"feature loss {name}": value for name, value in feature_losses.items()})
        self.check_finite(batch_idx, total, parts_to_check)
        if loggers_write_this_step(self):
            self._log_training_step(out, batch_size=student_logits.shape[0], total=total, feature_losses=feature_losses)
        output = StepOutput(
            loss=total, student_logits=student_logits.detach(), teacher_logits=teacher_logits, targets=parts.y
        )
        if features is not None:
            output["features"] = {  # type: ignore[typeddict-unknown-key]
                pair.name: (student_features[pair.student].detach(), teacher_features[pair.teacher])
                for pair in features.pairs
            }
        return output

    def _log_training_step(
        self,
        out: Any,
        batch_size: int,
        total: Optional[Tensor] = None,
        feature_losses: Optional[Mapping[str, Tensor]] = None,
    ) -> None:
        logs = {"train/loss": out.total if total is None else total, "train/soft_loss": out.soft}
        if out.hard is not None:
            logs["train/hard_loss"] = out.hard
        for name, value in (getattr(out, "terms", None) or {}).items():  # e.g. DKD's tckd and nckd
            logs[f"train/{name}"] = value
        for pair in self.feature_pairs:
            if feature_losses and pair.name in feature_losses:
                logs[f"train/feature_loss/{pair.log_name}"] = feature_losses[pair.name]
        self.log_dict(logs, batch_size=batch_size, prog_bar=False)
        for name in ("temperature", "alpha", "warmup"):  # the values in use, after any schedule set them
            value = getattr(self.loss, name, None)
            if value is not None:
                self.log(f"train/{name}", float(value), batch_size=batch_size)

    def _evaluate(self, batch: Any, stage: str) -> StepOutput:
        parts = split_batch(batch)
        student_logits = self(parts.x)
        infer_num_classes(self, student_logits)
        teacher_logits = self.teacher_logits_for(parts)
        batch_size = student_logits.shape[0]
        teacher_preds = teacher_logits.argmax(dim=-1)
        values = {
            "teacher_agreement": ((student_logits.argmax(dim=-1) == teacher_preds).float(), None),
            "kl": (soft_target_loss(student_logits, teacher_logits, temperature=1.0), batch_size),
        }
        if parts.y is not None:
            values.update(self.supervised_values(student_logits, parts.y))
            values["teacher_acc"] = ((teacher_preds == parts.y).float(), None)
        self.update_and_log(stage, values, batch_size)
        return StepOutput(student_logits=student_logits, teacher_logits=teacher_logits, targets=parts.y)

    def validation_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Update the ``val`` metrics; return the logits (``T = 1``) and targets for callbacks."""
        return self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> StepOutput:
        """Update the ``test`` metrics; return the logits (``T = 1``) and targets for callbacks."""
        return self._evaluate(batch, "test")


class _RemoveFeatureHooksOnException(L.Callback):
    """Removes the feature hooks when a fit fails: modules get no ``on_exception``."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(pl_module, DistillationModule):
            pl_module._remove_feature_hooks()


def _adapter_seed() -> int:
    """The seed of the adapters' initial weights: ``lightning.seed_everything``'s (the same in every process), or 0."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))
    except ValueError:
        return 0


def _first_samples(x: Any, count: int) -> Any:
    """The first ``count`` samples of a batch of inputs: a tensor, or a mapping of tensors (keyword inputs)."""
    if isinstance(x, Tensor):
        return x[:count]
    if isinstance(x, Mapping):
        return {key: value[:count] if isinstance(value, Tensor) else value for key, value in x.items()}
    return x
