"""Sequence-level distillation (Kim & Rush 2016): the student learns from text the teacher wrote."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from lightning_kd.checks import check_positive_int
from lightning_kd.data.token_blocks import TokenBlocks
from lightning_kd.losses import IGNORE_INDEX
from lightning_kd.text.sampling import check_sampling, model_device, sample_continuations

__all__ = ["teacher_continuations"]


def teacher_continuations(
    teacher: nn.Module,
    input_ids: Tensor,
    prompt_length: int,
    max_new_tokens: int,
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    seed: int = 0,
    batch_size: int = 64,
) -> TokenBlocks:
    """The teacher's continuation of the first ``prompt_length`` tokens of each row of ``input_ids``.

    Kim & Rush's sequence-level distillation trains the student with ordinary cross-entropy on
    the teacher's own output (its approximate mode: greedy decoding here, beam search in the
    paper) instead of the reference text. Each row's prompt is kept and the rest replaced by
    ``max_new_tokens`` tokens of the teacher (see :func:`~lightning_kd.text.sample_continuations`);
    the labels are ``-100`` on the prompt, so only the teacher's tokens are targets. Rows are
    processed ``batch_size`` at a time on the teacher's device, the draws (``greedy=False``) from
    one generator seeded by ``seed``: the same inputs and settings give the same sequences.

    Args:
        teacher: The language model that writes (any model that :func:`sample_continuations` takes).
        input_ids: Integer tensor ``[N, L]`` with ``L >= prompt_length``; the prompts must not be padded.
        prompt_length: Tokens of each row kept as the prompt, ``>= 1``.
        max_new_tokens: Tokens the teacher appends, ``>= 1``.
        greedy: The teacher's most likely token at each step (the default); ``False`` samples.
        temperature: Sampling temperature when ``greedy=False``.
        top_k: Sample among the ``top_k`` most likely tokens when ``greedy=False``.
        seed: Seed of the draws when ``greedy=False``.
        batch_size: Rows generated at a time.

    Returns:
        A :class:`~lightning_kd.data.TokenBlocks` of ``N`` rows of ``prompt_length + max_new_tokens``
        tokens, on the CPU.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Counter(nn.Module):  # always predicts the last token + 1
        ...     def forward(self, input_ids):
        ...         return nn.functional.one_hot((input_ids + 1) % 10, 10).float()
        >>> blocks = teacher_continuations(Counter(), torch.tensor([[2, 9, 9, 9]]), prompt_length=2, max_new_tokens=3)
        >>> blocks.input_ids.tolist(), blocks.labels.tolist()
        ([[2, 9, 0, 1, 2]], [[-100, -100, 0, 1, 2]])
    """
    check_positive_int("prompt_length", prompt_length)
    check_positive_int("batch_size", batch_size)
    check_sampling(max_new_tokens, temperature, top_k)
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be an integer tensor [N, L], got {getattr(input_ids, 'shape', input_ids)!r}")
    if input_ids.shape[1] < prompt_length:
        raise ValueError(
            f"prompt_length={prompt_length} is longer than the sequences: input_ids have shape {tuple(input_ids.shape)}"
        )
    device = model_device(teacher)
    generator = None if greedy else torch.Generator(device=device).manual_seed(seed)
    prompts = input_ids[:, :prompt_length]
    written = [
        sample_continuations(
            teacher,
            prompts[start : start + batch_size].to(device),
            max_new_tokens,
            greedy=greedy,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
        ).cpu()
        for start in range(0, len(prompts), batch_size)
    ]
    sequences = torch.cat(written) if written else prompts.new_empty((0, prompt_length + max_new_tokens))
    labels = sequences.clone()
    labels[:, :prompt_length] = IGNORE_INDEX
    return TokenBlocks(sequences, labels)
