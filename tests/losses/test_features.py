"""FitNets hints and attention transfer, against float64 references written from the papers' formulas."""

from __future__ import annotations

import pytest
import torch

from lightning_kd.losses import attention_map, attention_transfer_loss, hint_loss


def features(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype), torch.randn(*shape, generator=g).to(dtype)


def reference_mse(s, t):
    """FitNets' hint as mdistiller computes it: each sample's mean squared error, averaged over samples."""
    return torch.stack([((s[i] - t[i]) ** 2).sum() / s[i].numel() for i in range(len(s))]).mean()


def reference_cosine(s, t):
    rows = []
    for a, b in zip(s.reshape(len(s), -1), t.reshape(len(t), -1), strict=True):
        rows.append(1 - (a * b).sum() / (a.pow(2).sum().sqrt() * b.pow(2).sum().sqrt()))
    return torch.stack(rows).mean()


def reference_attention(s, t, p):
    """Zagoruyko & Komodakis: Q = sum_c |A_c|^p, vectorised, Q / ||Q||_2; the code's mean of (Q_s - Q_t)^2."""
    losses = []
    for a, b in zip(s, t, strict=True):
        qa = a.abs().pow(p).sum(0).reshape(-1)
        qb = b.abs().pow(p).sum(0).reshape(-1)
        difference = qa / qa.pow(2).sum().sqrt() - qb / qb.pow(2).sum().sqrt()
        losses.append(difference.pow(2).sum() / difference.numel())  # ||.||^2 / (H W)
    return torch.stack(losses).mean()


class TestHintLoss:
    @pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 5), (3, 7, 4)])
    def test_mse_is_each_samples_mean_squared_error_averaged(self, shape):
        s, t = features(*shape)
        torch.testing.assert_close(hint_loss(s, t), reference_mse(s, t), rtol=1e-12, atol=0)
        torch.testing.assert_close(hint_loss(s, t), torch.nn.functional.mse_loss(s, t), rtol=1e-12, atol=0)

    @pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 5)])
    def test_cosine_is_one_minus_the_cosine_of_the_flattened_samples(self, shape):
        s, t = features(*shape, seed=1)
        torch.testing.assert_close(hint_loss(s, t, kind="cosine"), reference_cosine(s, t), rtol=1e-12, atol=1e-15)
        scaled = hint_loss(3.0 * s, 0.5 * t, kind="cosine")  # scale-free
        torch.testing.assert_close(scaled, reference_cosine(s, t), rtol=1e-12, atol=1e-15)
        assert hint_loss(s, 2 * s, kind="cosine").abs().item() < 1e-12

    def test_a_mask_counts_only_its_positions(self):
        s, t = features(3, 5, 4, seed=2)
        mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 0]]).bool()
        rows_s, rows_t = s[mask], t[mask]  # [8, 4]
        expected_mse = ((rows_s - rows_t) ** 2).sum() / (8 * 4)
        expected_cosine = torch.stack(
            [1 - (a @ b) / (a.norm() * b.norm()) for a, b in zip(rows_s, rows_t, strict=True)]
        ).mean()
        torch.testing.assert_close(hint_loss(s, t, mask=mask), expected_mse, rtol=1e-12, atol=0)
        torch.testing.assert_close(hint_loss(s, t, "cosine", mask=mask), expected_cosine, rtol=1e-12, atol=0)
        changed = t.clone()
        changed[~mask] += 10.0  # uncounted positions do not matter
        torch.testing.assert_close(hint_loss(s, changed, mask=mask), expected_mse)
        nothing = torch.zeros(3, 5, dtype=torch.bool)
        assert hint_loss(s, t, mask=nothing).item() == 0.0 == hint_loss(s, t, "cosine", mask=nothing).item()

    @pytest.mark.parametrize("kind", ["mse", "cosine"])
    def test_gradients(self, kind):
        s, t = features(3, 2, 3, 3, seed=3)
        s.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x: hint_loss(x, t, kind=kind), (s,))
        mask = torch.tensor([[True, False], [True, True], [False, True]]).unsqueeze(-1).expand(3, 2, 3)
        assert torch.autograd.gradcheck(lambda x: hint_loss(x, t, kind=kind, mask=mask), (s,))

    def test_low_precision_features_give_a_float32_loss(self):
        s, t = features(4, 8, seed=4, dtype=torch.bfloat16)
        s.requires_grad_(True)
        loss = hint_loss(s, t)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(s.grad.float()).all()

    @pytest.mark.parametrize(
        ("call", "error", "match"),
        [
            (lambda: hint_loss(torch.zeros(2, 3), torch.zeros(2, 4)), ValueError, r"one shape, got student \(2, 3\) "),
            (lambda: hint_loss(torch.zeros(2, 3), torch.zeros(2, 3), kind="l1"), ValueError, "mse, cosine"),
            (lambda: hint_loss(torch.zeros(3), torch.zeros(3)), ValueError, r"student_feature of shape \(3,\)"),
            (lambda: hint_loss(torch.zeros(2, 3).long(), torch.zeros(2, 3)), TypeError, "torch.int64"),
            (
                lambda: hint_loss(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(2, 3).bool()),
                ValueError,
                r"mask must have the features' shape without the last dimension, \(2,\), got \(2, 3\)",
            ),
            (lambda: hint_loss(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(2)), TypeError, "boolean"),
        ],
    )
    def test_errors_name_the_shapes(self, call, error, match):
        with pytest.raises(error, match=match):
            call()


class TestAttentionTransfer:
    @pytest.mark.parametrize("p", [2, 3, 1.5])
    def test_matches_the_papers_attention_maps(self, p):
        s, _ = features(4, 3, 5, 6, seed=5)
        t, _ = features(4, 7, 5, 6, seed=6)  # other channel count: each map averages its own channels
        torch.testing.assert_close(attention_transfer_loss(s, t, p=p), reference_attention(s, t, p), rtol=1e-12, atol=0)

    def test_maps_are_unit_vectors_and_ignore_scale_and_channel_count(self):
        s, _ = features(2, 3, 4, 4, seed=7)
        maps = attention_map(s)
        torch.testing.assert_close(maps.norm(dim=1), torch.ones(2, dtype=torch.float64))
        assert attention_transfer_loss(s, 5.0 * s.repeat(1, 3, 1, 1)).item() < 1e-15
        assert attention_transfer_loss(s, -s).item() < 1e-15  # |A|^p: the sign does not count

    def test_gradients(self):
        s, _ = features(2, 3, 3, 4, seed=8)
        t, _ = features(2, 5, 3, 4, seed=9)
        s.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda x: attention_transfer_loss(x, t), (s,))
        assert torch.autograd.gradcheck(lambda x: attention_transfer_loss(x, t, p=3), (s,))

    def test_low_precision_features_give_a_float32_loss(self):
        s, t = features(2, 4, 3, 3, seed=10, dtype=torch.float16)
        assert attention_transfer_loss(s, t).dtype == torch.float32

    @pytest.mark.parametrize(
        ("student", "teacher", "kwargs", "match"),
        [
            ((2, 3, 4, 4), (2, 3, 8, 8), {}, r"equal batch and spatial sizes, got student \(2, 3, 4, 4\) and teacher"),
            ((2, 3, 4, 4), (3, 3, 4, 4), {}, r"student \(2, 3, 4, 4\) and teacher \(3, 3, 4, 4\)"),
            ((2, 12), (2, 12), {}, r"at least 3 dimensions, got student_feature of shape \(2, 12\)"),
            ((2, 3, 4, 4), (2, 3, 4, 4), {"p": 0}, "p must be a finite number > 0"),
        ],
    )
    def test_errors_name_the_shapes(self, student, teacher, kwargs, match):
        with pytest.raises(ValueError, match=match):
            attention_transfer_loss(torch.zeros(student), torch.zeros(teacher), **kwargs)
