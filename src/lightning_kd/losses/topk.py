"""``TopKLogits``: a teacher known only at its k largest classes per position."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["TopKLogits"]


class TopKLogits(NamedTuple):
    """The teacher's logits at its ``k`` largest classes per position.

    Accepted wherever teacher logits are. The soft loss renormalises the teacher over its ``k``
    classes (``softmax(values / T)``) and reads the student's full log-softmax at ``indices``
    (never renormalised); no dense ``[positions, V]`` tensor is built from it. With ``k = V``
    the loss equals the dense one.

    Attributes:
        values: Logits ``[..., k]``.
        indices: Class indices ``[..., k]`` (integer), the same shape.

    Example:
        >>> top = TopKLogits.from_dense(torch.tensor([[0.0, 3.0, 1.0, 2.0]]), k=2)
        >>> top.indices.tolist(), top.values.tolist()
        ([[1, 3]], [[3.0, 2.0]])
    """

    values: Tensor
    indices: Tensor

    @classmethod
    def from_dense(cls, logits: Tensor, k: int) -> TopKLogits:
        """The ``k`` largest of dense ``logits`` along the last dimension."""
        top = logits.topk(min(k, logits.shape[-1]), dim=-1)
        return cls(top.values, top.indices)

    @property
    def shape(self) -> torch.Size:
        """The shape of ``values``: ``[..., k]``."""
        return self.values.shape

    def check(self) -> None:
        """Raise a ``ValueError`` unless ``values`` and ``indices`` have one shape and integer indices."""
        if not isinstance(self.values, Tensor) or not isinstance(self.indices, Tensor):
            raise TypeError("TopKLogits needs tensors for values and indices")
        if self.values.shape != self.indices.shape:
            raise ValueError(
                f"TopKLogits values and indices must have one shape, got {tuple(self.values.shape)} "
                f"and {tuple(self.indices.shape)}"
            )
        if self.indices.is_floating_point():
            raise ValueError(f"TopKLogits indices must be integers, got dtype {self.indices.dtype}")

    def to(self, *args, **kwargs) -> TopKLogits:
        """Move the values (and the indices, keeping their integer dtype) like ``Tensor.to``."""
        values = self.values.to(*args, **kwargs)
        return TopKLogits(values, self.indices.to(values.device))
