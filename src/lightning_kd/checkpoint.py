"""Reading students back out of the checkpoints that the modules write."""

from __future__ import annotations

import os
from typing import Union

import torch
from torch import nn

__all__ = ["STUDENT_PREFIX", "TEACHER_PREFIX", "load_student", "student_state_dict"]

STUDENT_PREFIX = "student."
TEACHER_PREFIX = "teacher."
_COMPILED_PREFIX = "_orig_mod."  # added by torch.compile to the wrapped module's keys


def student_state_dict(checkpoint: dict) -> dict:
    """Return the student's weights from a loaded Lightning checkpoint, prefixes stripped."""
    if "state_dict" not in checkpoint:
        raise ValueError(f"not a Lightning checkpoint: no 'state_dict' key among {sorted(checkpoint)}")
    state = {
        key[len(STUDENT_PREFIX) :].replace(_COMPILED_PREFIX, ""): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(STUDENT_PREFIX)
    }
    if not state:
        raise ValueError("the checkpoint holds no student weights (no 'student.*' keys in its state_dict)")
    return state


def load_student(student: nn.Module, checkpoint_path: Union[str, os.PathLike], map_location: str = "cpu") -> nn.Module:
    """Load a checkpoint's student weights into ``student`` for inference, without the teacher.

    The checkpoint is read with ``weights_only=True``. The student is returned in eval mode;
    its logits at ``T = 1`` are the predictions (``softmax`` for probabilities).

    Args:
        student: A freshly built student of the same architecture.
        checkpoint_path: A checkpoint written by a ``Trainer`` fitting a ``DistillationModule``.
        map_location: Device to load the tensors onto.

    Returns:
        ``student``, with the weights loaded, in eval mode.

    Example:
        >>> from lightning_kd.models import MLP
        >>> student = load_student(MLP(64, 10, hidden=(30,)), "last.ckpt")  # doctest: +SKIP
        >>> probs = student(x).softmax(-1)  # doctest: +SKIP
    """
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"no checkpoint file at {os.fspath(checkpoint_path)!r}")
    checkpoint = torch.load(checkpoint_path, map_location=map_location, weights_only=True)
    student.load_state_dict(student_state_dict(checkpoint))
    return student.eval()
