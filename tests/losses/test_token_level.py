"""Divergences, normalisation, chunking, the fused output head, top-k teachers and vocabulary
alignment, against float64 references written independently of the library's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.losses import (
    DIVERGENCES,
    DistillationLoss,
    TopKLogits,
    hard_target_loss,
    linear_soft_target_loss,
    soft_target_loss,
)

T = 2.5


def reference(student, teacher, temperature, divergence, beta=0.5, mask=None):
    """Per-position divergence times T**2, in float64, from explicit probabilities; then the mean."""
    s, t = student.double() / temperature, teacher.double() / temperature
    q = torch.exp(s - s.max(-1, keepdim=True).values)
    q = q / q.sum(-1, keepdim=True)
    p = torch.exp(t - t.max(-1, keepdim=True).values)
    p = p / p.sum(-1, keepdim=True)
    if divergence == "forward_kl":
        per = (p * (p.log() - q.log())).sum(-1)
    elif divergence == "reverse_kl":
        per = (q * (q.log() - p.log())).sum(-1)
    elif divergence == "jsd":
        m = beta * p + (1 - beta) * q
        per = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    else:
        per = 0.5 * (p - q).abs().sum(-1)
    per = per * temperature**2
    if mask is None:
        return per.mean()
    return per[mask].sum() / max(int(mask.sum()), 1)


def odd_batch(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(3, 37, 301, generator=g) * 3).to(dtype)
    teacher = (torch.randn(3, 37, 301, generator=g) * 3).to(dtype)
    mask = torch.rand(3, 37, generator=g) > 0.3
    return student, teacher, mask


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("masked", [False, True])
def test_every_divergence_matches_the_float64_reference(divergence, masked):
    student, teacher, mask = odd_batch(dtype=torch.float64)
    mask = mask if masked else None
    got = soft_target_loss(student, teacher, T, mask, divergence=divergence, beta=0.3)
    expected = reference(student, teacher, T, divergence, beta=0.3, mask=mask)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_float32_inputs_stay_close_to_the_reference(divergence):
    student, teacher, mask = odd_batch()
    got = soft_target_loss(student, teacher, T, mask, divergence=divergence)
    torch.testing.assert_close(
        got.double(), reference(student, teacher, T, divergence, mask=mask), rtol=1e-5, atol=1e-6
    )


def value_and_grad(loss_fn, *inputs):
    inputs = [x.detach().clone().requires_grad_(True) if x is not None else None for x in inputs]
    value = loss_fn(*inputs)
    value.backward()
    return value.detach(), [x.grad for x in inputs if x is not None]


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_equals_unchunked_in_value_and_gradient(divergence, masked):
    student, teacher, mask = odd_batch(seed=1)
    mask = mask if masked else None

    def loss(chunk_size):
        return value_and_grad(
            lambda s: soft_target_loss(s, teacher, T, mask, divergence=divergence, chunk_size=chunk_size), student
        )

    (full, (full_grad,)), (chunked, (chunked_grad,)) = loss(None), loss(7)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(chunked_grad, full_grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("bias", [False, True])
def test_the_fused_head_equals_head_then_loss(divergence, bias):
    g = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(3, 37, 16, generator=g), torch.randn(301, 16, generator=g) * 0.5
    head_bias = torch.randn(301, generator=g) if bias else None
    teacher, mask = torch.randn(3, 37, 301, generator=g) * 2, torch.rand(3, 37, generator=g) > 0.25

    def head_then_loss(h, w, b):
        logits = torch.nn.functional.linear(h, w, b)
        return soft_target_loss(logits, teacher, T, mask, divergence=divergence)

    def fused(h, w, b):
        return linear_soft_target_loss(h, w, teacher, T, mask, head_bias=b, divergence=divergence, chunk_size=10)

    (expected, expected_grads), (got, got_grads) = (
        value_and_grad(f, hidden, weight, head_bias) for f in (head_then_loss, fused)
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert len(got_grads) == len(expected_grads) == (3 if bias else 2)
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_top_k_with_k_equal_to_v_is_the_dense_loss_and_otherwise_renormalises_the_teacher():
    student, teacher, mask = odd_batch(seed=3, dtype=torch.float64)
    full = TopKLogits.from_dense(teacher, k=301)
    torch.testing.assert_close(soft_target_loss(student, full, T, mask), soft_target_loss(student, teacher, T, mask))

    top = TopKLogits.from_dense(teacher, k=8)
    p = torch.softmax(top.values / T, -1)  # the teacher renormalised over its 8 classes
    log_q = torch.log_softmax(student / T, -1).gather(-1, top.indices)  # the student's full log-softmax, read there
    per = T**2 * (p * (p.log() - log_q)).sum(-1)
    torch.testing.assert_close(soft_target_loss(student, top, T, mask), per[mask].mean())
    chunked = soft_target_loss(student, top, T, mask, chunk_size=5)
    torch.testing.assert_close(chunked, per[mask].mean())


def test_top_k_teachers_work_with_the_fused_head():
    g = torch.Generator().manual_seed(4)
    hidden, weight, teacher = (
        torch.randn(2, 9, 8, generator=g),
        torch.randn(50, 8, generator=g),
        torch.randn(2, 9, 50, generator=g),
    )
    top = TopKLogits.from_dense(teacher, k=5)
    fused = linear_soft_target_loss(hidden, weight, top, T, chunk_size=4)
    torch.testing.assert_close(fused, soft_target_loss(hidden @ weight.T, top, T), rtol=1e-5, atol=1e-7)


def test_a_top_k_teacher_refuses_divergences_that_need_the_whole_distribution():
    student, teacher, _ = odd_batch()
    with pytest.raises(ValueError, match="top-k teacher supports divergence='forward_kl' only"):
        soft_target_loss(student, TopKLogits.from_dense(teacher, 4), T, divergence="reverse_kl")


def test_num_positions_gives_one_normalisation_over_micro_batches():
    """Micro-batches that add their sums over the whole count give the whole batch's loss."""
    student, teacher, mask = odd_batch(seed=5)
    mask[0] = False  # a micro-batch with no counted token at all
    whole = soft_target_loss(student, teacher, T, mask)
    count = int(mask.sum())
    parts = [
        soft_target_loss(student[i : i + 1], teacher[i : i + 1], T, mask[i : i + 1], num_positions=count)
        for i in range(3)
    ]
    torch.testing.assert_close(sum(parts), whole)
    hard_parts = [
        hard_target_loss(student[i : i + 1], torch.where(mask[i : i + 1], 0, -100), num_positions=count)
        for i in range(3)
    ]
    torch.testing.assert_close(sum(hard_parts), hard_target_loss(student, torch.where(mask, 0, -100)))


@pytest.mark.parametrize("path", ["dense", "chunked", "fused", "hard chunked"])
def test_an_all_masked_batch_gives_zero_with_a_zero_gradient(path):
    student, teacher, _ = odd_batch()
    mask = torch.zeros(3, 37, dtype=torch.bool)
    weight = torch.randn(301, 16, requires_grad=True)
    hidden = torch.randn(3, 37, 16, requires_grad=True)
    student.requires_grad_(True)
    loss = {
        "dense": lambda: soft_target_loss(student, teacher, T, mask),
        "chunked": lambda: soft_target_loss(student, teacher, T, mask, chunk_size=4),
        "fused": lambda: linear_soft_target_loss(hidden, weight, teacher, T, mask),
        "hard chunked": lambda: hard_target_loss(student, torch.full((3, 37), -100), chunk_size=4),
    }[path]()
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    for tensor in (student, hidden, weight):
        assert tensor.grad is None or (torch.isfinite(tensor.grad).all() and not tensor.grad.any())


def test_chunked_hard_loss_equals_the_plain_one():
    student, _, mask = odd_batch(seed=6)
    targets = torch.randint(0, 301, (3, 37)).masked_fill(~mask, -100)
    (plain, (plain_grad,)), (chunked, (chunked_grad,)) = (
        value_and_grad(lambda s, c=c: hard_target_loss(s, targets, chunk_size=c), student) for c in (None, 11)
    )
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(chunked_grad, plain_grad, rtol=1e-4, atol=1e-9)


def test_different_vocabularies_fail_unless_truncated():
    student, teacher = torch.randn(2, 4, 10), torch.randn(2, 4, 12)
    with pytest.raises(ValueError, match=r"student 10 classes, teacher 12.*vocab_alignment='truncate'"):
        soft_target_loss(student, teacher, T)
    truncated = soft_target_loss(student, teacher, T, vocab_alignment="truncate")
    torch.testing.assert_close(truncated, soft_target_loss(student, teacher[..., :10], T))
    (plain, (plain_grad,)), (chunked, (chunked_grad,)) = (
        value_and_grad(
            lambda s, c=c: soft_target_loss(s, teacher, T, vocab_alignment="truncate", chunk_size=c), student
        )
        for c in (None, 3)
    )
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(chunked_grad, plain_grad)
    hidden, weight = torch.randn(2, 4, 6), torch.randn(14, 6)  # a student head larger than the teacher's 12
    (head_first, grads), (fused, fused_grads) = (
        value_and_grad(f, hidden, weight)
        for f in (
            lambda h, w: soft_target_loss(h @ w.T, teacher, T, vocab_alignment="truncate"),
            lambda h, w: linear_soft_target_loss(h, w, teacher, T, vocab_alignment="truncate", chunk_size=3),
        )
    )
    torch.testing.assert_close(fused, head_first)
    for got, expected in zip(fused_grads, grads, strict=True):
        torch.testing.assert_close(got, expected)
    top = TopKLogits(torch.randn(2, 4, 3), torch.tensor([0, 5, 11]).expand(2, 4, 3))
    with pytest.raises(ValueError, match=r"indexes class 11, beyond the student's 10 classes"):
        soft_target_loss(student, top, T)
    kept = TopKLogits(top.values[..., :2], top.indices[..., :2])  # truncating drops the entry at class 11
    expected = soft_target_loss(student, kept, T)
    for chunk_size in (None, 3):
        torch.testing.assert_close(
            soft_target_loss(student, top, T, vocab_alignment="truncate", chunk_size=chunk_size), expected
        )


@pytest.mark.parametrize("beta", [0.0, 1.0, float("nan"), -0.5, 2.0])
def test_jsd_needs_a_beta_strictly_between_zero_and_one(beta):
    student, teacher, _ = odd_batch()
    with pytest.raises(ValueError, match=r"beta must be strictly between 0 and 1.*forward_kl.*reverse_kl"):
        soft_target_loss(student, teacher, T, divergence="jsd", beta=beta)
    with pytest.raises(ValueError, match="beta"):
        DistillationLoss(divergence="jsd", beta=beta)


def test_bad_keywords_are_named():
    student, teacher, _ = odd_batch()
    with pytest.raises(ValueError, match=r"divergence must be one of forward_kl, reverse_kl, jsd, tvd, got 'kl'"):
        soft_target_loss(student, teacher, T, divergence="kl")
    with pytest.raises(ValueError, match=r"chunk_size must be a positive integer or None, got 0"):
        soft_target_loss(student, teacher, T, chunk_size=0)
    with pytest.raises(ValueError, match=r"num_positions must be a number > 0"):
        soft_target_loss(student, teacher, T, num_positions=0)


def test_low_precision_inputs_are_computed_in_float32_chunked_or_not():
    student, teacher, mask = odd_batch(seed=7)
    reference_value = soft_target_loss(student.bfloat16().float(), teacher.bfloat16().float(), T, mask)
    for chunk_size in (None, 16):
        got = soft_target_loss(student.bfloat16(), teacher.bfloat16(), T, mask, chunk_size=chunk_size)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, reference_value, rtol=1e-5, atol=1e-6)


def test_the_loss_module_passes_the_token_level_keywords_through():
    student, teacher, mask = odd_batch(seed=8)
    targets = torch.randint(0, 301, (3, 37))
    loss = DistillationLoss(temperature=T, alpha=0.5, divergence="tvd", chunk_size=9)
    out = loss(student, teacher, targets, mask, num_positions=1)  # num_positions=1: the sums
    count = int(mask.sum())
    torch.testing.assert_close(out.soft / count, soft_target_loss(student, teacher, T, mask, divergence="tvd"))
    torch.testing.assert_close(out.hard / count, hard_target_loss(student, targets.masked_fill(~mask, -100)))
    assert loss.hparams()["divergence"] == "tvd" and math.isclose(loss.hparams()["beta"], 0.5)
