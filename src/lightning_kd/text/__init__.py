"""Language models: ``CausalLMDistillationModule``, and ``CausalLMModule`` for plain next-token training.

On-policy distillation (:class:`OnPolicySampling`, GKD) lets the student train on its own
samples; sequence-level distillation (:func:`teacher_continuations`, and the
:class:`~lightning_kd.callbacks.TeacherSequences` callback) on the teacher's text.

The module works with any ``nn.Module`` language model that takes ``input_ids`` (and
``attention_mask``) as keyword arguments and returns logits ``[B, L, V]`` or an object with
``.logits``; Hugging Face models work unchanged. Nothing here needs ``transformers``; the
``[text]`` extra installs it for the text data and models.
"""

from lightning_kd.text.batches import LanguageModelBatch, split_lm_batch
from lightning_kd.text.language_model import CausalLMModule
from lightning_kd.text.module import CausalLMDistillationModule
from lightning_kd.text.on_policy import OnPolicySampling
from lightning_kd.text.sampling import sample_continuations
from lightning_kd.text.sequence_level import teacher_continuations

__all__ = [
    "CausalLMDistillationModule",
    "CausalLMModule",
    "LanguageModelBatch",
    "OnPolicySampling",
    "sample_continuations",
    "split_lm_batch",
    "teacher_continuations",
]
