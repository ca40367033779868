"""``sample_continuations``: an autoregressive loop for any causal language model, no ``generate`` needed."""

from __future__ import annotations

import inspect
import math
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_kd.batch import forward_logits

__all__ = ["check_sampling", "model_device", "sample_continuations"]


def check_sampling(max_new_tokens: int, temperature: float, top_k: Optional[int]) -> None:
    """Raise a ``ValueError`` naming the bad value unless ``max_new_tokens >= 1``, ``temperature > 0``
    (finite) and ``top_k`` is ``None`` or ``>= 1``.

    Example:
        >>> check_sampling(4, 0.0, None)
        Traceback (most recent call last):
        ValueError: temperature must be finite and > 0 (use greedy=True for argmax decoding), got 0.0
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a real number > 0, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be finite and > 0 (use greedy=True for argmax decoding), got {temperature!r}"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None (the whole vocabulary), got {top_k!r}")


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (CPU for a model without either)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def sample_continuations(
    model: nn.Module,
    prompt_ids: Tensor,
    max_new_tokens: int,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Extend each prompt by ``max_new_tokens`` tokens drawn from ``model``, one position at a time.

    ``model`` is called as ``model(input_ids=ids)`` and may return logits ``[B, L, V]`` or an
    object with ``.logits`` (Hugging Face outputs), so any causal language model works. The loop
    runs without gradients and with the model in eval mode (no dropout); every submodule's
    previous mode is restored afterwards. A model whose ``forward`` takes ``use_cache`` and
    ``past_key_values`` (Hugging Face causal LMs) runs each new token against its key-value cache;
    any other model runs over the whole sequence so far at each step. There is no stop at an
    end-of-sequence token: every row gets exactly ``max_new_tokens`` new tokens.

    Args:
        model: The language model that samples.
        prompt_ids: Integer tensor ``[B, P]``, on the model's device; no padding (every row is
            ``P`` real tokens).
        max_new_tokens: Tokens appended to each row, ``>= 1``.
        greedy: Take the most likely token (``temperature``, ``top_k`` and ``generator`` are unused).
        temperature: Draw from ``softmax(logits / temperature)``, ``> 0``.
        top_k: Draw among the ``top_k`` most likely tokens only (renormalised); ``None``: all.
        generator: A ``torch.Generator`` on the model's device, for reproducible draws; the
            global random state is used (and advanced) when ``None``.

    Returns:
        ``[B, P + max_new_tokens]``: the prompts followed by their continuations.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Counter(nn.Module):  # always predicts the last token + 1
        ...     def forward(self, input_ids):
        ...         return nn.functional.one_hot((input_ids + 1) % 10, 10).float() * 9
        >>> sample_continuations(Counter(), torch.tensor([[3], [7]]), 3, greedy=True).tolist()
        [[3, 4, 5, 6], [7, 8, 9, 0]]
    """
    check_sampling(max_new_tokens, temperature, top_k)
    if not isinstance(prompt_ids, Tensor) or prompt_ids.dim() != 2 or prompt_ids.is_floating_point():
        shape = getattr(prompt_ids, "shape", prompt_ids)
        raise ValueError(f"prompt_ids must be an integer tensor [B, P], got {shape!r}")
    if prompt_ids.shape[1] < 1:
        raise ValueError(f"prompt_ids need at least one token per row, got shape {tuple(prompt_ids.shape)}")
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        cache = _cache_argument(model)
        if cache is not None:
            return _sample_with_cache(model, cache, prompt_ids, max_new_tokens, greedy, temperature, top_k, generator)
        ids = prompt_ids
        for _ in range(max_new_tokens):
            logits = forward_logits(model, {"input_ids": ids})[:, -1]
            ids = torch.cat([ids, _next_token(logits, greedy, temperature, top_k, generator)], dim=1)
        return ids
    finally:
        for module, training in modes.items():  # per module: a partly frozen model keeps its mix
            module.training = training


# The cache argument's name: transformers 5 calls it ``cache``, earlier versions ``past_key_values``.
CACHE_ARGUMENTS = ("cache", "past_key_values")


def _cache_argument(model: nn.Module) -> Optional[str]:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if "use_cache" not in parameters:
        return None
    return next((name for name in CACHE_ARGUMENTS if name in parameters), None)


def _sample_with_cache(
    model: nn.Module,
    cache: str,
    prompt_ids: Tensor,
    max_new_tokens: int,
    greedy: bool,
    temperature: float,
    top_k: Optional[int],
    generator: Optional[torch.Generator],
) -> Tensor:
    """The same loop, feeding only the newest token and the model's key-value cache at each step."""
    output = model(input_ids=prompt_ids, use_cache=True)
    ids = prompt_ids
    for step in range(max_new_tokens):
        token = _next_token(output.logits[:, -1], greedy, temperature, top_k, generator)
        ids = torch.cat([ids, token], dim=1)
        if step + 1 < max_new_tokens:
            output = model(input_ids=token, use_cache=True, **{cache: output[cache]})
    return ids


def _next_token(
    logits: Tensor, greedy: bool, temperature: float, top_k: Optional[int], generator: Optional[torch.Generator]
) -> Tensor:
    """``[B, 1]``: the chosen token of each row of ``logits`` ``[B, V]``."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    scaled = logits.float() / temperature  # bf16/fp16 logits: softmax in float32
    if top_k is not None and top_k < scaled.shape[-1]:
        values, indices = scaled.topk(top_k, dim=-1)
        choice = torch.multinomial(values.softmax(dim=-1), 1, generator=generator)
        return indices.gather(-1, choice)
    return torch.multinomial(scaled.softmax(dim=-1), 1, generator=generator)
