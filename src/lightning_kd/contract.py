"""The contract between the modules and the callbacks: what a step returns.

Every module of lightning-kd returns a :class:`StepOutput` from its training, validation and
test steps, for ``[B, C]`` classifiers and ``[B, L, V]`` sequence models alike. Callbacks read
it with :func:`step_output` and :func:`flat_positions`, never by guessing keys or attributes.
"""

from __future__ import annotations

from typing import Any, Optional, TypedDict

from torch import Tensor

__all__ = ["StepOutput", "flat_positions", "step_output"]


class StepOutput(TypedDict, total=False):
    """What a step of a lightning-kd module returns (a dict, as Lightning requires).

    Attributes:
        loss: The training loss (training steps only).
        student_logits: The student's logits, detached, ``[B, C]`` or ``[B, L, V]``.
        teacher_logits: The teacher's logits of the same shape; absent for a module without a teacher.
        targets: Integer labels ``[B]`` or ``[B, L]`` (``-100`` where unlabeled), or ``None``.
        mask: Boolean ``[B]`` or ``[B, L]``: the positions that count, or ``None`` for all.
    """

    loss: Tensor
    student_logits: Tensor
    teacher_logits: Tensor
    targets: Optional[Tensor]
    mask: Optional[Tensor]


def step_output(outputs: Any) -> Optional[StepOutput]:
    """``outputs`` as a :class:`StepOutput` when it holds student logits, else ``None``.

    Example:
        >>> import torch
        >>> step_output({"student_logits": torch.zeros(2, 3)})["student_logits"].shape
        torch.Size([2, 3])
        >>> step_output(torch.tensor(1.0)) is None
        True
    """
    if isinstance(outputs, dict) and isinstance(outputs.get("student_logits"), Tensor):
        return outputs  # type: ignore[return-value]
    return None


def flat_positions(output: StepOutput) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """The counted positions of a step as rows: ``(student [N, C], teacher [N, C] or None, targets [N] or None)``.

    ``[B, C]`` outputs pass through; ``[B, L, V]`` outputs keep the positions of ``mask``.

    Example:
        >>> import torch
        >>> out = {"student_logits": torch.zeros(2, 4, 5), "mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]).bool()}
        >>> flat_positions(out)[0].shape
        torch.Size([3, 5])
    """
    student, teacher = output["student_logits"], output.get("teacher_logits")
    targets, mask = output.get("targets"), output.get("mask")
    classes = student.shape[-1]
    if mask is not None:
        keep = mask.reshape(-1)
        student = student.reshape(-1, classes)[keep]
        teacher = None if teacher is None else teacher.reshape(-1, classes)[keep]
        targets = None if targets is None else targets.reshape(-1)[keep]
    elif student.dim() > 2:
        student = student.reshape(-1, classes)
        teacher = None if teacher is None else teacher.reshape(-1, classes)
        targets = None if targets is None else targets.reshape(-1)
    return student, teacher, targets
