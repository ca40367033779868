"""Distillation losses: pure tensor functions and the :class:`DistillationLoss` module.

Nothing here imports Lightning. The conventions (see Hinton et al., 2015):

* the soft loss is ``T**2 * D(softmax(t / T), softmax(s / T))`` with ``D`` the forward KL
  divergence by default (or reverse KL, JSD, TVD), summed over classes and averaged over
  samples ("batchmean"), or over counted positions for ``[B, L, C]`` inputs, or divided by the
  count of a larger whole (``num_positions``: all micro-batches and ranks of an optimizer step);
* the hard loss is the cross-entropy of the student at ``T = 1``;
* ``total = alpha * soft + (1 - alpha) * hard``: ``alpha`` weights the SOFT term;
* losses are computed in at least float32, whatever the precision of the logits;
* ``chunk_size`` and :func:`linear_soft_target_loss` keep whole-batch ``[positions, V]``
  float32 intermediates from existing, for large vocabularies.

One file per concept: ``divergences`` (the per-position formulas), ``soft_target`` (the soft
loss, chunked or fused with the output head), ``hard_target`` (cross-entropy, logit matching),
``topk`` (top-k teachers), ``chunking`` (the chunked autograd Functions), ``dkd`` (decoupled KD),
``standardize`` (logit standardisation), ``distillation_loss``, ``features`` (FitNets hints and
attention transfer between intermediate features).
"""

from lightning_kd.losses.checks import (
    DIVERGENCES,
    IGNORE_INDEX,
    VOCAB_ALIGNMENTS,
    check_alpha,
    check_beta,
    check_divergence,
    check_temperature,
)
from lightning_kd.losses.distillation_loss import OBJECTIVES, DistillationLoss, DistillationLossOutput
from lightning_kd.losses.dkd import DKDLoss, DKDTerms, dkd_loss, dkd_terms
from lightning_kd.losses.features import HINT_KINDS, attention_map, attention_transfer_loss, hint_loss
from lightning_kd.losses.hard_target import hard_target_loss, linear_hard_target_loss, logit_matching_loss
from lightning_kd.losses.soft_target import linear_soft_target_loss, soft_target_loss
from lightning_kd.losses.standardize import standardize_logits
from lightning_kd.losses.topk import TopKLogits

__all__ = [
    "DIVERGENCES",
    "HINT_KINDS",
    "IGNORE_INDEX",
    "OBJECTIVES",
    "VOCAB_ALIGNMENTS",
    "DistillationLoss",
    "DKDLoss",
    "DKDTerms",
    "DistillationLossOutput",
    "TopKLogits",
    "attention_map",
    "attention_transfer_loss",
    "check_alpha",
    "check_beta",
    "check_divergence",
    "check_temperature",
    "dkd_loss",
    "dkd_terms",
    "hard_target_loss",
    "hint_loss",
    "linear_hard_target_loss",
    "linear_soft_target_loss",
    "logit_matching_loss",
    "soft_target_loss",
    "standardize_logits",
]
