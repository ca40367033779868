"""``OnPolicySampling``: when and how the student samples its own training sequences (GKD's ``lmbda``)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Optional, Union

import torch

from lightning_kd.text.sampling import check_sampling

__all__ = ["OnPolicySampling", "derived_seed"]


def derived_seed(*parts: Union[int, str]) -> int:
    """A 63-bit seed from ``parts``: nearby inputs give unrelated seeds, the same inputs the same seed.

    Example:
        >>> derived_seed(0, "decide", 7) == derived_seed(0, "decide", 7) != derived_seed(0, "decide", 8)
        True
    """
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclasses.dataclass(frozen=True)
class OnPolicySampling:
    """On-policy distillation settings (Agarwal et al. 2024, GKD): on a ``fraction`` of the
    optimizer steps the student continues the batch's prompts itself and learns the teacher's
    distribution on its own samples.

    Whether a step samples depends on ``(seed, global_step)`` only, through a generator of its
    own: every rank and every micro-batch of a step agree, and the global random state (dropout,
    shuffling) is not touched. The draws of a micro-batch come from a generator seeded by
    ``(seed, global_step, global_rank, batch_idx)``: ranks and micro-batches draw differently,
    and a rerun draws the same.

    Args:
        fraction: The share of optimizer steps that sample, in ``[0, 1]`` (GKD's ``lmbda``).
        prompt_length: The first ``prompt_length`` tokens of each sequence are the prompt, ``>= 1``.
        max_new_tokens: Tokens the student appends to each prompt, ``>= 1``.
        temperature: Sampling temperature (not the loss's), ``> 0``.
        top_k: Sample among the ``top_k`` most likely tokens; ``None``: the whole vocabulary.
        seed: Seed of the step decisions and of the draws.

    Example:
        >>> sampling = OnPolicySampling(fraction=0.5, prompt_length=8, max_new_tokens=16)
        >>> [sampling.samples_this_step(step) for step in range(3)] == [sampling.samples_this_step(s) for s in range(3)]
        True
        >>> OnPolicySampling(fraction=1.0, prompt_length=8, max_new_tokens=16).samples_this_step(123)
        True
    """

    fraction: float
    prompt_length: int
    max_new_tokens: int
    temperature: float = 1.0
    top_k: Optional[int] = None
    seed: int = 0

    def __post_init__(self) -> None:
        fraction = self.fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be a number in [0, 1] (the share of steps that sample), got {fraction!r}")
        prompt = self.prompt_length
        if isinstance(prompt, bool) or not isinstance(prompt, int) or prompt < 1:
            raise ValueError(f"prompt_length must be an integer >= 1, got {prompt!r}")
        check_sampling(self.max_new_tokens, self.temperature, self.top_k)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "fraction", float(fraction))  # frozen: the checked values, normalised
        object.__setattr__(self, "temperature", float(self.temperature))

    def samples_this_step(self, global_step: int) -> bool:
        """Whether optimizer step ``global_step`` trains on the student's samples: the same on every rank."""
        if self.fraction <= 0.0:
            return False
        if self.fraction >= 1.0:
            return True
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "decide", int(global_step)))
        return bool(torch.rand((), generator=generator) < self.fraction)

    def generator(
        self, global_step: int, global_rank: int, batch_idx: int, device: Union[str, torch.device] = "cpu"
    ) -> torch.Generator:
        """The generator of one micro-batch's draws, on ``device``."""
        seed = derived_seed(self.seed, "sample", int(global_step), int(global_rank), int(batch_idx))
        return torch.Generator(device=device).manual_seed(seed)

    def hparams(self) -> dict[str, Any]:
        """The settings as a plain dict, fit for a checkpoint's hyperparameters."""
        return dataclasses.asdict(self)
