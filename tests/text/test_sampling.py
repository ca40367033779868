"""sample_continuations: greedy is step-by-step argmax, seeded draws repeat, the model's modes come back."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from kd_testing import TinyLM, tiny_gpt2
from lightning_kd.text import sample_continuations


def prompts(vocab: int, rows: int = 3, length: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


# A model without `generate` that returns a tensor, and a Hugging Face GPT-2 that returns `.logits`.
MODELS = [
    pytest.param(lambda: (TinyLM(seed=3), 23), id="TinyLM"),
    pytest.param(lambda: (tiny_gpt2(seed=3), 53), id="gpt2"),
]


@pytest.mark.parametrize("make", MODELS)
def test_greedy_is_the_argmax_of_each_step(make):
    model, vocab = make()
    start = prompts(vocab)
    out = sample_continuations(model, start, 5, greedy=True)
    expected = start
    with torch.no_grad():
        for _ in range(5):
            logits = model(input_ids=expected)
            logits = getattr(logits, "logits", logits)
            expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.shape == (3, 9) and torch.equal(out, expected)
    assert torch.equal(out[:, :4], start)


@pytest.mark.parametrize("make", MODELS)
def test_the_same_seed_draws_the_same_and_another_seed_draws_otherwise(make):
    model, vocab = make()
    start = prompts(vocab)

    def draw(seed, **kwargs):
        return sample_continuations(model, start, 6, generator=torch.Generator().manual_seed(seed), **kwargs)

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    assert torch.equal(draw(1, temperature=0.5, top_k=4), draw(1, temperature=0.5, top_k=4))


def test_the_global_random_state_is_untouched_with_a_generator():
    model = TinyLM()  # seeds the global state itself
    state = torch.get_rng_state()
    sample_continuations(model, prompts(23), 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("make", MODELS)
def test_top_k_one_is_greedy(make):
    model, vocab = make()
    start = prompts(vocab)
    sampled = sample_continuations(model, start, 5, top_k=1, temperature=3.0, generator=torch.Generator())
    assert torch.equal(sampled, sample_continuations(model, start, 5, greedy=True))


def test_top_k_draws_only_among_the_k_most_likely_tokens():
    class Fixed(nn.Module):  # the same distribution everywhere: token 9 > 8 > ... > 0
        def forward(self, input_ids):
            return torch.arange(10.0).expand(*input_ids.shape, 10)

    out = sample_continuations(Fixed(), torch.zeros(50, 1, dtype=torch.long), 4, top_k=3, temperature=100.0)
    assert set(out[:, 1:].unique().tolist()) == {7, 8, 9}


def test_low_temperature_approaches_greedy_and_high_temperature_spreads():
    model, start = TinyLM(seed=4), prompts(23, rows=64)
    greedy = sample_continuations(model, start, 3, greedy=True)
    cold = sample_continuations(model, start, 3, temperature=1e-3, generator=torch.Generator().manual_seed(0))
    hot = sample_continuations(model, start, 3, temperature=100.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)
    assert (hot[:, 4:] != greedy[:, 4:]).float().mean() > 0.5


def test_every_submodules_mode_is_restored():
    model = tiny_gpt2(seed=1)
    model.train()
    model.transformer.h[0].eval()  # a partly frozen model keeps its mix
    before = {name: module.training for name, module in model.named_modules()}
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    sample_continuations(model, prompts(53), 2, generator=torch.Generator())
    assert seen == [False, False]  # sampled in eval mode
    assert {name: module.training for name, module in model.named_modules()} == before
    assert all(p.grad is None for p in model.parameters())


def test_the_mode_is_restored_when_the_model_fails():
    class Fails(nn.Module):
        def forward(self, input_ids):
            raise RuntimeError("boom")

    model = Fails().train()
    with pytest.raises(RuntimeError, match="boom"):
        sample_continuations(model, prompts(5), 2)
    assert model.training


def test_no_graph_is_built():
    model = TinyLM()
    out = sample_continuations(model, prompts(23), 2, generator=torch.Generator())
    assert not out.requires_grad and out.dtype == torch.long


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, r"max_new_tokens must be an integer >= 1, got 0"),
        ({"temperature": 0.0}, r"temperature must be finite and > 0 \(use greedy=True"),
        ({"temperature": float("nan")}, r"temperature must be finite and > 0"),
        ({"top_k": 0}, r"top_k must be an integer >= 1 or None"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample_continuations(TinyLM(), prompts(23), **arguments)


def test_bad_prompts_are_named():
    with pytest.raises(ValueError, match=r"prompt_ids must be an integer tensor \[B, P\], got torch.Size\(\[4\]\)"):
        sample_continuations(TinyLM(), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"at least one token per row, got shape \(2, 0\)"):
        sample_continuations(TinyLM(), torch.zeros(2, 0, dtype=torch.long), 2)


def test_a_hugging_face_model_samples_with_its_key_value_cache_as_it_would_without(monkeypatch):
    model = tiny_gpt2(seed=5, layers=2)
    prompts = torch.randint(0, 53, (3, 4), generator=torch.Generator().manual_seed(0))
    calls = []
    original = type(model).forward

    @functools.wraps(original)  # keeps the signature that tells of the cache
    def counting(self, *args, **kwargs):
        calls.append(kwargs["input_ids"].shape[1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", counting)
    cached = sample_continuations(model, prompts, 6, top_k=5, generator=torch.Generator().manual_seed(1))
    assert calls == [4, 1, 1, 1, 1, 1]  # the prompt once, then one new token per step

    class Uncached(torch.nn.Module):  # the same weights behind a forward without a cache
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return original(self.inner, input_ids=input_ids).logits

    full = sample_continuations(Uncached(model), prompts, 6, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cached, full)
