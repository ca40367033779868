"""Language models: ``CausalLMDistillationModule``, and ``CausalLMModule`` for plain next-token training.

The module works with any ``nn.Module`` language model that takes ``input_ids`` (and
``attention_mask``) as keyword arguments and returns logits ``[B, L, V]`` or an object with
``.logits``; Hugging Face models work unchanged. Nothing here needs ``transformers``; the
``[text]`` extra installs it for the text data and models.
"""

from lightning_kd.text.batches import LanguageModelBatch, split_lm_batch
from lightning_kd.text.language_model import CausalLMModule
from lightning_kd.text.module import CausalLMDistillationModule

__all__ = ["CausalLMDistillationModule", "CausalLMModule", "LanguageModelBatch", "split_lm_batch"]
