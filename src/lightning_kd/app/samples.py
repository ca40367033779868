"""Text sampled from a run's language models, written into ``metrics.json`` for ``kd-report``."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

__all__ = ["SAMPLING", "text_samples"]

# The same prompt, seed and settings for every run, so that the samples of the teacher, the
# scratch student and the distilled students can be read side by side.
SAMPLING = {"prompt_tokens": 24, "new_tokens": 40, "temperature": 0.8, "top_k": 50, "seed": 0}


def text_samples(cfg: DictConfig, datamodule: Any, networks: dict[str, nn.Module]) -> dict[str, Any]:
    """Continue the start of the first test block with each network, at the same seed.

    Settings come from :data:`SAMPLING`, overridden by the config's ``samples`` node if it has one.

    Returns:
        ``{"settings", "prompt", <name>: continuation}``, decoded with the data's tokenizer.
    """
    from lightning_kd.text.sampling import sample_continuations

    settings = {**SAMPLING, **(cfg.get("samples") or {})}
    # Within the positions the models know: the data's block size.
    length = int(cfg.dataset.get("block_size") or settings["prompt_tokens"] + settings["new_tokens"])
    settings["prompt_tokens"] = min(settings["prompt_tokens"], length // 2)
    settings["new_tokens"] = min(settings["new_tokens"], length - settings["prompt_tokens"])
    prompt = datamodule.test_set[0]["input_ids"][: settings["prompt_tokens"]].unsqueeze(0)
    samples: dict[str, Any] = {"settings": settings, "prompt": datamodule.decode(prompt[0].tolist())}
    for name, network in networks.items():
        device = next(network.parameters()).device
        generator = torch.Generator(device=device).manual_seed(settings["seed"])
        ids = sample_continuations(
            network,
            prompt.to(device),
            settings["new_tokens"],
            temperature=settings["temperature"],
            top_k=settings["top_k"],
            generator=generator,
        )
        samples[name] = datamodule.decode(ids[0, prompt.shape[1] :].tolist())
    return samples
