"""The distillation losses against the rules of the method (Hinton et al., 2015), computed independently."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_kd.losses import (
    DistillationLoss,
    DistillationLossOutput,
    hard_target_loss,
    logit_matching_loss,
    soft_target_loss,
)


def logits(*shape: int, seed: int = 0, scale: float = 2.0, dtype=torch.float32) -> torch.Tensor:
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


def reference_soft_loss(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * sum_c p (log p - log q) / B, written out by hand in float64."""
    s, t = s.double() / temperature, t.double() / temperature
    log_q = s - torch.logsumexp(s, dim=-1, keepdim=True)
    log_p = t - torch.logsumexp(t, dim=-1, keepdim=True)
    return temperature**2 * (log_p.exp() * (log_p - log_q)).sum() / s.shape[0]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 20.0])
def test_soft_loss_matches_reference(temperature):
    s, t = logits(32, 10, seed=1), logits(32, 10, seed=2)
    got = soft_target_loss(s, t, temperature)
    torch.testing.assert_close(got.double(), reference_soft_loss(s, t, temperature), rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss:UserWarning")
def test_soft_loss_is_batchmean_not_mean():
    s, t = logits(8, 10, seed=1), logits(8, 10, seed=2)
    elementwise_mean = torch.nn.functional.kl_div(
        torch.log_softmax(s, -1), torch.log_softmax(t, -1), reduction="mean", log_target=True
    )
    assert soft_target_loss(s, t, 1.0) == pytest.approx(10 * elementwise_mean.item(), rel=1e-5)


def test_soft_loss_is_zero_for_identical_logits_and_positive_otherwise():
    t = logits(4, 5)
    assert soft_target_loss(t.clone(), t, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_loss(logits(4, 5, seed=9), t, 3.0).item() > 0


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_soft_loss_gradient_is_t_times_q_minus_p_over_b(temperature):
    batch = 16
    s = logits(batch, 7, seed=3, dtype=torch.float64).requires_grad_()
    t = logits(batch, 7, seed=4, dtype=torch.float64)
    soft_target_loss(s, t, temperature).backward()
    q, p = torch.softmax(s.detach() / temperature, -1), torch.softmax(t / temperature, -1)
    torch.testing.assert_close(s.grad, temperature * (q - p) / batch)


def soft_gradient_norm(temperature: float, with_t_squared: bool) -> float:
    s = logits(64, 10, seed=5).requires_grad_()
    loss = soft_target_loss(s, logits(64, 10, seed=6), temperature)
    (loss if with_t_squared else loss / temperature**2).backward()
    return s.grad.norm().item()


def test_t_squared_keeps_gradient_size_independent_of_t():
    low, high = soft_gradient_norm(4.0, True), soft_gradient_norm(100.0, True)
    assert 1 / 1.5 <= high / low <= 1.5


def test_without_t_squared_gradient_falls_by_about_t_squared():
    low, high = soft_gradient_norm(4.0, False), soft_gradient_norm(100.0, False)
    with_t2 = soft_gradient_norm(100.0, True) / soft_gradient_norm(4.0, True)
    # Removing T^2 divides each gradient by exactly T^2, so the fall is (100/4)^2 times the
    # (near-1) ratio measured with T^2.
    assert low / high == pytest.approx((100 / 4) ** 2 / with_t2, rel=1e-4)
    assert low / high > 0.5 * (100 / 4) ** 2


@pytest.mark.parametrize(("dtype", "temperature", "rel"), [(torch.float64, 1000.0, 1e-3), (torch.float32, 100.0, 1e-2)])
def test_soft_loss_tends_to_logit_matching(dtype, temperature, rel):
    # Standard-normal logits: the gap to the limit shrinks like |logits| / T.
    t = logits(32, 10, seed=8, scale=1.0, dtype=dtype)
    s_soft = logits(32, 10, seed=7, scale=1.0, dtype=dtype).requires_grad_()
    s_mse = s_soft.detach().clone().requires_grad_()
    soft, mse = soft_target_loss(s_soft, t, temperature), logit_matching_loss(s_mse, t)
    soft.backward()
    mse.backward()
    assert soft.item() == pytest.approx(mse.item(), rel=rel)
    assert (s_soft.grad - s_mse.grad).norm() <= rel * s_mse.grad.norm()


def test_logit_matching_reference_and_shift_invariance():
    s, t = logits(6, 4, seed=1), logits(6, 4, seed=2)
    z, v = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    expected = ((z - v) ** 2).sum(-1).div(2 * 4).mean()
    torch.testing.assert_close(logit_matching_loss(s, t), expected)
    # Softmax ignores a per-sample constant, and so must its T -> inf limit.
    torch.testing.assert_close(logit_matching_loss(s + 5.0, t - 3.0), expected)


@pytest.mark.parametrize("loss_fn", [lambda s, t, m: soft_target_loss(s, t, 2.0, m), logit_matching_loss])
def test_masked_positions_do_not_count(loss_fn):
    s, t = logits(3, 5, 6, seed=1), logits(3, 5, 6, seed=2)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(3)) > 0.4
    loss = loss_fn(s, t, mask)
    garbage_s, garbage_t = s.clone(), t.clone()
    garbage_s[~mask], garbage_t[~mask] = 1e4, -1e4
    assert loss_fn(garbage_s, garbage_t, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    # Equal to the loss over the unmasked rows only.
    assert loss.item() == pytest.approx(loss_fn(s[mask], t[mask], None).item(), rel=1e-6)


def test_unmasked_sequence_loss_averages_over_all_positions():
    s, t = logits(2, 3, 4, seed=1), logits(2, 3, 4, seed=2)
    expected = soft_target_loss(s.reshape(6, 4), t.reshape(6, 4), 2.0)
    torch.testing.assert_close(soft_target_loss(s, t, 2.0), expected)


def test_bf16_inputs_match_float32_and_return_float32():
    s, t = logits(64, 10, seed=1), logits(64, 10, seed=2)
    full = soft_target_loss(s, t, 2.0)
    half = soft_target_loss(s.bfloat16(), t.bfloat16(), 2.0)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=1e-2)
    assert logit_matching_loss(s.half(), t.half()).dtype == torch.float32
    assert hard_target_loss(s.bfloat16(), torch.zeros(64, dtype=torch.long)).dtype == torch.float32


def test_float64_stays_float64():
    s, t = logits(4, 3, dtype=torch.float64), logits(4, 3, seed=1, dtype=torch.float64)
    assert soft_target_loss(s, t, 2.0).dtype == torch.float64
    assert logit_matching_loss(s, t).dtype == torch.float64


def test_hard_loss_is_cross_entropy_and_honours_ignore_index():
    s, y = logits(8, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1, -100])
    expected = torch.nn.functional.cross_entropy(s[:7], y[:7])
    torch.testing.assert_close(hard_target_loss(s, y), expected)


def test_hard_loss_of_an_all_unlabeled_batch_is_zero_not_nan():
    s = logits(4, 5).requires_grad_()
    loss = hard_target_loss(s, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(s.grad == 0)


class TestDistillationLoss:
    def test_weighting_alpha_on_soft(self):
        s, t, y = logits(8, 5), logits(8, 5, seed=1), torch.arange(8) % 5
        out = DistillationLoss(temperature=3.0, alpha=0.7)(s, t, y)
        assert isinstance(out, DistillationLossOutput)
        torch.testing.assert_close(out.soft, soft_target_loss(s, t, 3.0))
        torch.testing.assert_close(out.hard, hard_target_loss(s, y))
        torch.testing.assert_close(out.total, 0.7 * out.soft + 0.3 * out.hard)

    def test_soft_only_accepts_no_targets(self):
        s, t = logits(8, 5), logits(8, 5, seed=1)
        out = DistillationLoss(temperature=2.0, alpha=1.0)(s, t)
        assert out.hard is None
        torch.testing.assert_close(out.total, soft_target_loss(s, t, 2.0))

    def test_hard_only(self):
        s, t, y = logits(8, 5), logits(8, 5, seed=1), torch.arange(8) % 5
        out = DistillationLoss(alpha=0.0)(s, t, y)
        torch.testing.assert_close(out.total, hard_target_loss(s, y))

    def test_mse_objective_uses_logit_matching(self):
        s, t, y = logits(8, 5), logits(8, 5, seed=1), torch.arange(8) % 5
        out = DistillationLoss(alpha=0.5, objective="mse")(s, t, y)
        torch.testing.assert_close(out.soft, logit_matching_loss(s, t))

    def test_temperature_is_settable_and_used(self):
        s, t = logits(8, 5), logits(8, 5, seed=1)
        loss = DistillationLoss(temperature=2.0, alpha=1.0)
        loss.temperature = 8.0
        torch.testing.assert_close(loss(s, t).total, soft_target_loss(s, t, 8.0))

    def test_mask_applies_to_both_terms(self):
        s, t = logits(2, 4, 5), logits(2, 4, 5, seed=1)
        y = torch.arange(8).reshape(2, 4) % 5
        mask = torch.tensor([[True, True, False, False], [True, False, True, False]])
        out = DistillationLoss(temperature=2.0, alpha=0.5)(s, t, y, mask=mask)
        torch.testing.assert_close(out.hard, hard_target_loss(s[mask], y[mask]))
        torch.testing.assert_close(out.soft, soft_target_loss(s[mask], t[mask], 2.0))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_bad_temperature_is_rejected(bad):
    with pytest.raises(ValueError, match=r"temperature must be finite and > 0, got"):
        soft_target_loss(logits(2, 3), logits(2, 3), bad)
    with pytest.raises(ValueError, match=r"temperature"):
        DistillationLoss(temperature=bad)
    loss = DistillationLoss()
    with pytest.raises(ValueError, match=r"temperature"):
        loss.temperature = bad


def test_non_numeric_temperature_is_a_type_error():
    with pytest.raises(TypeError, match=r"temperature must be a real number, got '4'"):
        DistillationLoss(temperature="4")


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_bad_alpha_is_rejected(bad):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\].*got"):
        DistillationLoss(alpha=bad)


def test_unknown_objective_is_rejected():
    with pytest.raises(ValueError, match=r"objective must be one of \('kl', 'mse'\), got 'l2'"):
        DistillationLoss(objective="l2")


def test_shape_mismatch_names_both_shapes():
    message = r"vocabularies differ: student 10 classes, teacher 100.*vocab_alignment='truncate'"
    with pytest.raises(ValueError, match=message):
        soft_target_loss(logits(4, 10), logits(4, 100), 2.0)
    with pytest.raises(ValueError, match=message):
        DistillationLoss()(logits(4, 10), logits(4, 100), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"same positions, got student \(4, 10\) and teacher \(5, 10\)"):
        soft_target_loss(logits(4, 10), logits(5, 10), 2.0)


def test_missing_targets_with_alpha_below_one():
    with pytest.raises(ValueError, match=r"targets are required when alpha < 1 \(alpha=0.9"):
        DistillationLoss(alpha=0.9)(logits(4, 3), logits(4, 3))


def test_bad_mask_is_rejected():
    with pytest.raises(ValueError, match=r"mask must have the logits' shape"):
        soft_target_loss(logits(2, 3, 4), logits(2, 3, 4), 1.0, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"mask must be a boolean tensor"):
        soft_target_loss(logits(2, 3, 4), logits(2, 3, 4), 1.0, mask=torch.ones(2, 3))


def test_losses_do_not_import_lightning():
    """The loss layer is pure torch (losses <- module <- callbacks <- app)."""
    import subprocess
    import sys

    code = "import sys, lightning_kd.losses; sys.exit('lightning' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
