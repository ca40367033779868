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

__all__ = ["cross_entropy_value_and_grad", "divergence_per_position", "divergence_value_and_grad", "kl_terms"]


def kl_terms(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``a (log a - log b)`` elementwise, 0 where ``a`` is 0 (``log a = -inf``), with finite gradients."""
    return log_a.exp() * torch.where(log_a > float("-inf"), log_a - log_b, 0.0)


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``sum a (log a - log b)`` per row."""
    return kl_terms(log_a, log_b).sum(dim=-1)


def _refuse_top_k(divergence: str) -> None:
    if divergence != "forward_kl":
        raise ValueError(
            f"a top-k teacher supports divergence='forward_kl' only, got {divergence!r}: the teacher's "
            "distribution outside its k classes is unknown, and the other divergences need it"
        )


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
        _refuse_top_k(divergence)
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


def _log_softmax_(z: Tensor, temperature: float) -> Tensor:
    """``log_softmax(z / T)`` computed in place in ``z``."""
    z.div_(temperature)
    return z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))


def _through_softmax_(q: Tensor, g: Tensor) -> Tensor:
    """``q * (g - sum(q g))`` in place in ``g``: a gradient with respect to ``q`` taken through the softmax."""
    return g.sub_((q * g).sum(dim=-1, keepdim=True)).mul_(q)


def divergence_value_and_grad(
    logits: Tensor,
    teacher_logits: Union[Tensor, TopKLogits],
    temperature: float,
    divergence: str = "forward_kl",
    beta: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """The sum over rows of ``T**2 * D(p, q)`` and its gradient with respect to ``logits``, in closed form.

    Used by the chunked losses: a chunk's few ``[n, V]`` temporaries are all that exist, fewer
    than autograd keeps. ``logits`` must be a float32 (or float64) tensor this function may
    overwrite; the gradient is returned in its storage. With ``z = s / T``, each formula is
    ``T * dD/dz``: forward KL ``q - p``; reverse KL ``q (log q - log p - KL)``; JSD and TVD
    ``q (g - sum q g)`` with ``g = (1 - beta)(log q - log m)`` and ``g = sign(q - p) / 2``.

    Example:
        >>> import torch
        >>> s, t = torch.randn(4, 7), torch.randn(4, 7)
        >>> value, grad = divergence_value_and_grad(s.clone(), t, 2.0, "jsd")
        >>> _ = s.requires_grad_(True)
        >>> reference = divergence_per_position(s, t, 2.0, "jsd").sum()
        >>> reference.backward()
        >>> torch.allclose(value, reference), torch.allclose(grad, s.grad, atol=1e-6)
        (True, True)
    """
    t2 = temperature**2
    log_q = _log_softmax_(logits, temperature)
    if isinstance(teacher_logits, TopKLogits):
        _refuse_top_k(divergence)
        log_p = F.log_softmax(teacher_logits.values.to(log_q.dtype) / temperature, dim=-1)
        p = log_p.exp()
        indices = teacher_logits.indices.long()
        value = kl_terms(log_p, log_q.gather(-1, indices)).sum()
        grad = log_q.exp_().scatter_add_(-1, indices, -p)  # q - p~ (p~ placed at the teacher's classes)
        return value * t2, grad.mul_(temperature)
    log_p = _log_softmax_(teacher_logits.to(log_q.dtype, copy=True), temperature)
    if divergence == "forward_kl":
        p = log_p.exp()
        value = log_p.sub_(log_q).mul_(p).sum()  # sum p (log p - log q); log_p is no longer needed
        grad = log_q.exp_().sub_(p)
    elif divergence == "reverse_kl":
        q = log_q.exp()
        difference = log_q.sub_(log_p)  # log q - log p, in log_q's storage
        rows = (q * difference).sum(dim=-1, keepdim=True)
        value = rows.sum()
        grad = difference.sub_(rows).mul_(q)
    elif divergence == "jsd":
        p, q = log_p.exp(), log_q.exp()
        log_m = torch.log(beta * p + (1 - beta) * q)
        value = beta * (p * (log_p - log_m)).sum() + (1 - beta) * (q * (log_q - log_m)).sum()
        grad = _through_softmax_(q, log_q.sub_(log_m).mul_(1 - beta))
    else:  # tvd
        p, q = log_p.exp_(), log_q.exp()
        value = 0.5 * (p - q).abs().sum()
        grad = _through_softmax_(q, log_q.copy_(q).sub_(p).sign_().mul_(0.5))
    return value * t2, grad.mul_(temperature)


def cross_entropy_value_and_grad(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The summed cross-entropy of ``logits`` against ``targets`` (all counted) and its gradient,
    in place in ``logits`` (float32 or float64): ``softmax - one_hot``."""
    log_q = _log_softmax_(logits, 1.0)
    value = -log_q.gather(-1, targets.unsqueeze(-1)).sum()
    grad = log_q.exp_()
    grad.scatter_add_(-1, targets.unsqueeze(-1), torch.full_like(targets, -1, dtype=grad.dtype).unsqueeze(-1))
    return value, grad
