"""Per-position divergences between the teacher's and the student's softened distributions.

With ``p = softmax(t / T)`` (teacher) and ``q = softmax(s / T)`` (student), summed over the
classes of each position and multiplied by ``T**2`` (so that ``T`` never silently re-weights the
soft term against the hard one):

============== =============================================================
``forward_kl`` ``sum p (log p - log q)``
``reverse_kl`` ``sum q (log q - log p)``
``jsd``        ``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``
``tvd``        ``1/2 sum |p - q|``
============== =============================================================
"""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.checks import compute_dtype
from lightning_kd.losses.topk import TopKLogits

__all__ = ["divergence_per_position"]


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``sum a (log a - log b)`` per row, with ``0 log 0 = 0``."""
    return F.kl_div(log_b, log_a, reduction="none", log_target=True).sum(dim=-1)


def divergence_per_position(
    student_logits: Tensor,
    teacher_logits: Union[Tensor, TopKLogits],
    temperature: float,
    divergence: str = "forward_kl",
    beta: float = 0.5,
) -> Tensor:
    """``T**2 * D(p, q)`` for each row of ``[n, V]`` logits (or a top-k teacher ``[n, k]``).

    Computed in float32 at least. Arguments are assumed checked (see ``soft_target_loss``).

    Example:
        >>> import torch
        >>> s, t = torch.zeros(1, 3), torch.tensor([[2.0, 0.0, 0.0]])
        >>> [round(divergence_per_position(s, t, 1.0, d).item(), 4) for d in ("forward_kl", "reverse_kl", "tvd")]
        [0.433, 0.4743, 0.4537]
    """
    dtype = compute_dtype(
        student_logits, teacher_logits.values if isinstance(teacher_logits, TopKLogits) else teacher_logits
    )
    log_q = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    if isinstance(teacher_logits, TopKLogits):
        if divergence != "forward_kl":
            raise ValueError(
                f"a top-k teacher supports divergence='forward_kl' only, got {divergence!r}: the teacher's "
                "distribution outside its k classes is unknown, and the other divergences need it"
            )
        log_p = F.log_softmax(teacher_logits.values.to(dtype) / temperature, dim=-1)
        log_q_at_k = log_q.gather(-1, teacher_logits.indices.long())
        per = _kl(log_p, log_q_at_k)
    else:
        log_p = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
        if divergence == "forward_kl":
            per = _kl(log_p, log_q)
        elif divergence == "reverse_kl":
            per = _kl(log_q, log_p)
        elif divergence == "jsd":
            log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
            per = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
        else:  # tvd
            per = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
    return per * temperature**2
