"""Decoupled KD and logit standardisation, against float64 references written from the papers' formulas."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.losses import DistillationLoss, TopKLogits, dkd_loss, dkd_terms, soft_target_loss, standardize_logits

T = 3.0


def batch(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        (torch.randn(16, 11, generator=g) * 3).to(dtype),
        (torch.randn(16, 11, generator=g) * 3).to(dtype),
        torch.randint(0, 11, (16,), generator=g),
    )


def reference_dkd(student, teacher, targets, temperature):
    """TCKD and NCKD from explicit probabilities (Zhao et al., 2022, eq. 1-3)."""
    q = torch.softmax(student.double() / temperature, -1)
    p = torch.softmax(teacher.double() / temperature, -1)
    rows = torch.arange(len(targets))
    p_t, q_t = p[rows, targets], q[rows, targets]
    tckd = p_t * (p_t / q_t).log() + (1 - p_t) * ((1 - p_t) / (1 - q_t)).log()
    others = torch.ones_like(p, dtype=torch.bool)
    others[rows, targets] = False
    p_hat = p[others].view(len(targets), -1) / (1 - p_t).unsqueeze(-1)
    q_hat = q[others].view(len(targets), -1) / (1 - q_t).unsqueeze(-1)
    nckd = (p_hat * (p_hat / q_hat).log()).sum(-1)
    return tckd.mean() * temperature**2, nckd.mean() * temperature**2


def test_dkd_terms_match_the_paper():
    student, teacher, targets = batch()
    terms = dkd_terms(student, teacher, targets, T)
    tckd, nckd = reference_dkd(student, teacher, targets, T)
    torch.testing.assert_close(terms.tckd, tckd, rtol=1e-10, atol=0)
    torch.testing.assert_close(terms.nckd, nckd, rtol=1e-10, atol=0)
    torch.testing.assert_close(dkd_loss(student, teacher, targets, T, 2.0, 5.0), 2.0 * tckd + 5.0 * nckd)


def test_hintons_kd_is_tckd_plus_the_teachers_non_target_mass_times_nckd():
    """The paper's eq. (1): KD = TCKD + (1 - p_t) NCKD, per sample."""
    student, teacher, targets = batch(seed=1)
    p_t = torch.softmax(teacher / T, -1)[torch.arange(16), targets]
    per_sample = [dkd_terms(student[i : i + 1], teacher[i : i + 1], targets[i : i + 1], T) for i in range(16)]
    recombined = torch.stack([terms.tckd + (1 - p_t[i]) * terms.nckd for i, terms in enumerate(per_sample)]).mean()
    torch.testing.assert_close(recombined, soft_target_loss(student, teacher, T), rtol=1e-10, atol=0)


def test_dkd_masks_the_target_class_and_ignores_unlabeled_samples():
    student, teacher, targets = batch(seed=2)
    # Changing only the target class's logit of the teacher leaves the non-target distribution alone.
    shifted = teacher.clone()
    shifted[torch.arange(16), targets] += 5.0
    torch.testing.assert_close(
        dkd_terms(student, shifted, targets, T).nckd, dkd_terms(student, teacher, targets, T).nckd
    )
    assert not torch.allclose(
        dkd_terms(student, shifted, targets, T).tckd, dkd_terms(student, teacher, targets, T).tckd
    )
    unlabeled = targets.clone()
    unlabeled[8:] = -100
    torch.testing.assert_close(
        dkd_loss(student, teacher, unlabeled, T), dkd_loss(student[:8], teacher[:8], targets[:8], T)
    )
    assert dkd_loss(student, student, targets, T).item() == 0.0


def test_dkd_has_gradients_and_stays_float32_for_low_precision_inputs():
    student, teacher, targets = batch(seed=3, dtype=torch.bfloat16)
    student.requires_grad_(True)
    loss = dkd_loss(student, teacher, targets, T)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(student.grad.float()).all() and student.grad.abs().sum() > 0


def test_standardized_logits_have_zero_mean_and_unit_unbiased_std():
    z = standardize_logits(batch()[0] * 7 + 3)
    torch.testing.assert_close(z.mean(-1), torch.zeros(16, dtype=z.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.std(-1), torch.ones(16, dtype=z.dtype), atol=1e-6, rtol=0)


def test_standardize_makes_the_soft_loss_blind_to_each_rows_scale_and_shift():
    student, teacher, targets = batch(seed=4)
    reference = soft_target_loss(student, teacher, T, standardize=True)
    scaled = soft_target_loss(student * 5 + 2, teacher * 0.3 - 1, T, standardize=True)
    torch.testing.assert_close(scaled, reference, rtol=1e-6, atol=1e-9)
    by_hand = soft_target_loss(
        (student - student.mean(-1, keepdim=True)) / (student.std(-1, keepdim=True) + 1e-7),
        (teacher - teacher.mean(-1, keepdim=True)) / (teacher.std(-1, keepdim=True) + 1e-7),
        T,
    )
    torch.testing.assert_close(reference, by_hand, rtol=1e-12, atol=0)
    torch.testing.assert_close(soft_target_loss(student, teacher, T, standardize=True, chunk_size=5), reference)
    torch.testing.assert_close(
        dkd_loss(student * 5, teacher, targets, T, standardize=True),
        dkd_loss(student, teacher, targets, T, standardize=True),
        rtol=1e-6,
        atol=1e-9,
    )
    out = DistillationLoss(temperature=T, alpha=1.0, standardize=True)(student * 5 + 2, teacher, targets)
    torch.testing.assert_close(out.soft, reference, rtol=1e-6, atol=1e-9)


def test_standardize_refuses_what_it_cannot_do():
    student, teacher, _ = batch()
    with pytest.raises(ValueError, match="not top-k"):
        soft_target_loss(student, TopKLogits.from_dense(teacher, 3), T, standardize=True)
    with pytest.raises(ValueError, match="standardize=True applies to objective='kl'"):
        DistillationLoss(objective="mse", standardize=True)


def test_the_dkd_loss_module_weights_cross_entropy_and_the_warmed_up_dkd_term():
    from lightning_kd.losses import DKDLoss, hard_target_loss

    student, teacher, targets = batch(seed=5)
    loss = DKDLoss(temperature=T, alpha_tckd=0.5, beta_nckd=4.0, ce_weight=2.0, warmup=0.25)
    out = loss(student, teacher, targets)
    terms = dkd_terms(student, teacher, targets, T)
    torch.testing.assert_close(out.soft, 0.5 * terms.tckd + 4.0 * terms.nckd)
    torch.testing.assert_close(out.hard, hard_target_loss(student, targets))
    torch.testing.assert_close(out.total, 2.0 * out.hard + 0.25 * out.soft)
    assert set(out.terms) == {"tckd", "nckd"}
    loss.warmup = 0.0
    torch.testing.assert_close(loss(student, teacher, targets).total, 2.0 * out.hard)
    with pytest.raises(ValueError, match=r"warmup must be a number in \[0, 1\], got 1.5"):
        loss.warmup = 1.5
    with pytest.raises(ValueError, match="DKDLoss needs labels"):
        loss(student, teacher, None)
    with pytest.raises(ValueError, match=r"beta_nckd must be a number >= 0, got -1"):
        DKDLoss(beta_nckd=-1)
