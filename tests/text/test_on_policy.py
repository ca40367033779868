"""On-policy distillation (GKD): the student's own samples, scored by the live teacher, one token count per step."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from kd_testing import TinyLM, quiet_trainer, tiny_gpt2
from lightning_kd import DistillationLoss
from lightning_kd.losses import TopKLogits
from lightning_kd.text import CausalLMDistillationModule, OnPolicySampling, sample_continuations

TESTS = Path(__file__).parents[1]
PROMPT, NEW = 3, 5


def sgd(parameters):
    return torch.optim.SGD(parameters, lr=0.5)


def token_batch(rows: int = 4, length: int = 8, vocab: int = 23, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids}


def sampling(fraction: float = 1.0, **kwargs) -> OnPolicySampling:
    return OnPolicySampling(fraction=fraction, prompt_length=PROMPT, max_new_tokens=NEW, **kwargs)


def on_policy_module(student=None, teacher=None, loss=None, **kwargs) -> CausalLMDistillationModule:
    student = TinyLM(seed=1) if student is None else student
    teacher = TinyLM(width=16, seed=2) if teacher is None else teacher
    kwargs.setdefault("on_policy", sampling(seed=7))
    return CausalLMDistillationModule(student, teacher, loss=loss, optimizer=sgd, **kwargs)


def assert_same_parameters(a, b, atol=1e-6):
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=name)


def divergence_by_hand(student: torch.Tensor, teacher: torch.Tensor, temperature: float, divergence: str):
    """T**2 * D(p_teacher, q_student) summed over positions, in float64."""
    log_q = (student.double() / temperature).log_softmax(-1)
    log_p = (teacher.double() / temperature).log_softmax(-1)
    if divergence == "forward_kl":
        per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
    else:  # reverse_kl
        per_position = (log_q.exp() * (log_q - log_p)).sum(-1)
    return temperature**2 * per_position.sum()


# --- the settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": -0.1}, r"fraction must be a number in \[0, 1\].*got -0.1"),
        ({"fraction": 1.5}, r"fraction must be a number in \[0, 1\].*got 1.5"),
        ({"fraction": float("nan")}, r"fraction must be a number in \[0, 1\]"),
        ({"prompt_length": 0}, r"prompt_length must be an integer >= 1, got 0"),
        ({"max_new_tokens": 0}, r"max_new_tokens must be an integer >= 1, got 0"),
        ({"temperature": 0}, r"temperature must be finite and > 0"),
        ({"top_k": 0}, r"top_k must be an integer >= 1 or None"),
        ({"seed": 1.5}, r"seed must be an integer, got 1.5"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    settings = {"fraction": 0.5, "prompt_length": 4, "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        OnPolicySampling(**settings)


def test_the_share_of_sampling_steps_follows_the_fraction_the_same_for_every_instance():
    steps = range(200)
    assert not any(sampling(0.0).samples_this_step(s) for s in steps)
    assert all(sampling(1.0).samples_this_step(s) for s in steps)
    state = torch.get_rng_state()
    half = [sampling(0.5, seed=3).samples_this_step(s) for s in steps]
    assert torch.equal(torch.get_rng_state(), state)  # decided by a generator of its own
    assert 80 <= sum(half) <= 120
    assert half == [sampling(0.5, seed=3).samples_this_step(s) for s in steps]  # another instance (another rank)
    assert half != [sampling(0.5, seed=4).samples_this_step(s) for s in steps]


def test_the_module_checks_the_settings_and_records_them():
    with pytest.raises(ValueError, match=r"on_policy needs a DistillationLoss.*got function"):
        on_policy_module(loss=lambda *args, **kwargs: None)
    with pytest.raises(TypeError, match=r"on_policy must be an OnPolicySampling, a dict of its fields or None, got 3"):
        on_policy_module(on_policy=3)
    with pytest.raises(ValueError, match=r"prompt_length \+ max_new_tokens = 40 exceeds the 32 positions of GPT2"):
        on_policy_module(tiny_gpt2(), tiny_gpt2(), on_policy=OnPolicySampling(1.0, 8, 32))
    module = on_policy_module(on_policy={"fraction": 0.25, "prompt_length": 2, "max_new_tokens": 3})
    assert module.on_policy == OnPolicySampling(0.25, 2, 3)
    assert module.hparams["on_policy"] == {
        "fraction": 0.25,
        "prompt_length": 2,
        "max_new_tokens": 3,
        "temperature": 1.0,
        "top_k": None,
        "seed": 0,
    }
    assert CausalLMDistillationModule(TinyLM(), TinyLM()).hparams["on_policy"] is None


def test_the_settings_come_back_from_a_checkpoint(tmp_path):
    teacher = TinyLM(width=16, seed=2)
    module = on_policy_module(teacher=teacher, on_policy=sampling(0.5, temperature=0.7, top_k=5, seed=9))
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, DataLoader([token_batch()], batch_size=None))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = CausalLMDistillationModule.load_from_checkpoint(tmp_path / "last.ckpt", student=TinyLM(), teacher=teacher)
    assert loaded.on_policy == module.on_policy


# --- one step by hand -------------------------------------------------------------------------


@pytest.mark.parametrize(("divergence", "alpha"), [("forward_kl", 0.3), ("reverse_kl", 0.0)])
def test_an_on_policy_step_is_the_soft_term_on_the_students_sample(divergence, alpha):
    """Whatever alpha: the student's own tokens are no target, so only the divergence counts."""
    loss = DistillationLoss(temperature=2.0, alpha=alpha, divergence=divergence)
    module = on_policy_module(loss=loss)
    batch = token_batch()
    module.train()
    out = module.training_step(batch, 3)
    assert module.student.training  # sampled in eval mode, then back
    prompt = batch["input_ids"][:, :PROMPT]
    generator = module.on_policy.generator(global_step=0, global_rank=0, batch_idx=3)
    expected = sample_continuations(module.student, prompt, NEW, generator=generator)
    assert torch.equal(out["targets"][:, : PROMPT - 1], torch.full((4, PROMPT - 1), -100))
    assert torch.equal(torch.cat([prompt, out["targets"][:, PROMPT - 1 :]], dim=1), expected)
    assert int(out["mask"].sum()) == 4 * NEW and int(module._tokens_this_step) == 4 * NEW
    with torch.no_grad():
        student, teacher = module.student(expected)[:, :-1], module.teacher(expected)[:, :-1]
    reference = divergence_by_hand(student[:, PROMPT - 1 :], teacher[:, PROMPT - 1 :], 2.0, divergence)
    torch.testing.assert_close(out["loss"].double(), reference, rtol=1e-5, atol=1e-6)
    assert out["loss"].requires_grad


def test_stored_and_batch_teacher_logits_are_not_used_on_sampling_steps():
    batch = token_batch()
    live = on_policy_module().training_step(batch, 0)["loss"]

    class RefusingStore:
        def lookup_top_k(self, *args, **kwargs):
            raise AssertionError("stored teacher outputs must not be read on a sampling step")

    module = on_policy_module()
    module.teacher_outputs = RefusingStore()
    given = {**batch, "teacher_logits": torch.zeros(4, 7, 23), "index": torch.arange(4)}
    torch.testing.assert_close(module.training_step(given, 0)["loss"], live)
    module.teacher_outputs = None
    top = {**batch, "teacher_logits": TopKLogits.from_dense(torch.randn(4, 7, 23), k=3)}
    torch.testing.assert_close(on_policy_module().training_step(top, 0)["loss"], live)
    # The same batch-given logits do replace the teacher on the other steps.
    never = on_policy_module(on_policy=sampling(0.0))
    assert not torch.allclose(never.training_step(given, 0)["loss"], never.training_step(batch, 0)["loss"])


def test_loss_on_hidden_gives_the_loss_and_gradients_of_loss_on_logits():
    student, teacher = tiny_gpt2(seed=7), tiny_gpt2(width=32, seed=8)
    loss = DistillationLoss(temperature=2.0, alpha=0.5, chunk_size=5)
    batch = token_batch(vocab=53)
    results = []
    for loss_on in ("logits", "hidden"):
        module = on_policy_module(copy.deepcopy(student), teacher, loss=loss, loss_on=loss_on)
        out = module.training_step(batch, 0)
        out["loss"].backward()
        results.append((out, module.student))
    (logits_out, logits_student), (hidden_out, hidden_student) = results
    assert torch.equal(logits_out["targets"], hidden_out["targets"])  # the same samples
    torch.testing.assert_close(hidden_out["loss"], logits_out["loss"], rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(logits_student.named_parameters(), hidden_student.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_prompts_must_fit_the_batch_and_be_unpadded():
    module = on_policy_module()
    with pytest.raises(ValueError, match=r"prompt_length=3 .* at least 4 tokens, got input_ids of shape \(4, 3\)"):
        module.training_step(token_batch(length=3), 0)
    batch = token_batch()
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[2, 1:] = 0
    with pytest.raises(ValueError, match=r"prompts without padding.*rows \[2\] have attention_mask 0"):
        module.training_step({**batch, "attention_mask": mask}, 0)
    mask[2, 1:] = 1
    mask[:, 5:] = 0  # padding after the prompt is no matter: the sample replaces it
    assert int(module.training_step({**batch, "attention_mask": mask}, 0)["mask"].sum()) == 4 * NEW


# --- one token count per optimizer step -------------------------------------------------------


class CountedTokens(CausalLMDistillationModule):
    """Records each optimizer step's token count (this rank's micro-batches) before it is used."""

    def on_before_optimizer_step(self, optimizer):
        self.counts = [*getattr(self, "counts", []), int(self._tokens_this_step)]
        super().on_before_optimizer_step(optimizer)


def fit_on_policy(student, teacher, batches, accumulate, on_policy, max_steps=1, **trainer_kwargs):
    module = CountedTokens(copy.deepcopy(student), teacher, optimizer=sgd, on_policy=on_policy)
    trainer = quiet_trainer(max_steps=max_steps, accumulate_grad_batches=accumulate, **trainer_kwargs)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return module, trainer


def test_one_batch_or_two_uneven_micro_batches_give_the_same_on_policy_update():
    """1 + 3 rows: a per-micro-batch mean would weigh the single row's tokens three times as much."""
    student, teacher = TinyLM(seed=1), TinyLM(width=16, seed=2)
    ids = token_batch()["input_ids"]
    greedy = sampling(top_k=1)  # each row's sample is then the same however the rows are grouped
    whole, _ = fit_on_policy(student, teacher, [{"input_ids": ids}], 1, greedy)
    parts = [{"input_ids": ids[:1]}, {"input_ids": ids[1:]}]
    accumulated, _ = fit_on_policy(student, teacher, parts, 2, greedy)
    assert whole.counts == accumulated.counts == [4 * NEW]
    assert_same_parameters(whole.student, accumulated.student)
    assert any(not torch.equal(a, b) for a, b in zip(whole.student.parameters(), student.parameters(), strict=True))


def test_train_on_policy_logs_the_steps_that_sample_and_counts_their_tokens():
    student, teacher = TinyLM(seed=1), TinyLM(width=16, seed=2)
    half = sampling(0.5, seed=1)
    logged = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged.append(float(trainer.callback_metrics["train/on_policy"]))

    batches = [token_batch(rows=2, seed=s) for s in range(8)]
    module, _ = fit_on_policy(
        student, teacher, batches, 1, half, max_steps=8, log_every_n_steps=1, callbacks=[Record()]
    )
    decisions = [half.samples_this_step(step) for step in range(8)]
    assert 0 < sum(decisions) < 8
    assert logged == [float(d) for d in decisions]
    assert module.counts == [2 * NEW if d else 2 * 7 for d in decisions]  # ordinary steps count L - 1 per row


# --- two processes ----------------------------------------------------------------------------

DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from kd_testing import TinyLM
    from lightning_kd import DistillationLoss
    from lightning_kd.text import CausalLMDistillationModule, OnPolicySampling

    ROWS = torch.randint(1, 23, (3, 7), generator=torch.Generator().manual_seed(0))


    class Recorded(CausalLMDistillationModule):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            prompt = batch["input_ids"][:, : self.on_policy.prompt_length]
            self.sequences = torch.cat([prompt, out["targets"][:, prompt.shape[1] - 1 :]], dim=1)
            return out

        def on_before_optimizer_step(self, optimizer):
            self.local_tokens = int(self._tokens_this_step)
            super().on_before_optimizer_step(optimizer)


    class PerRankData(L.LightningDataModule):
        def train_dataloader(self):  # rank 0: row 0; rank 1: rows 0-2 (the same first prompt on both)
            rows = ROWS[: 1 + 2 * self.trainer.global_rank]
            return DataLoader([{"input_ids": rows}], batch_size=None)


    if __name__ == "__main__":
        module = Recorded(
            TinyLM(seed=1),
            TinyLM(width=16, seed=2),
            loss=DistillationLoss(temperature=2.0, alpha=0.5),
            optimizer=lambda parameters: torch.optim.SGD(parameters, lr=0.5),
            on_policy=OnPolicySampling(1.0, prompt_length=3, max_new_tokens=4, seed=5),
        )
        trainer = L.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_steps=1, use_distributed_sampler=False, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )
        trainer.fit(module, datamodule=PerRankData())
        torch.save(
            {"sequences": module.sequences, "tokens": module.local_tokens, "student": module.student.state_dict()},
            Path(sys.argv[1]) / f"rank{trainer.global_rank}.pt",
        )
    """
)


def test_two_processes_sample_differently_and_normalise_by_the_all_reduced_token_count(tmp_path):
    """Rank 0 counts 4 tokens and rank 1 12: the update divides the summed loss by 16 on both ranks."""
    script = tmp_path / "on_policy_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["tokens"] for r in ranks] == [4, 12]
    first, second = ranks[0]["sequences"], ranks[1]["sequences"]
    assert torch.equal(first[0, :3], second[0, :3]) and not torch.equal(first[0, 3:], second[0, 3:])
    for name, value in ranks[0]["student"].items():
        torch.testing.assert_close(ranks[1]["student"][name], value, rtol=0, atol=0, msg=name)
    # The update by hand: the soft sums of all four sequences over the 16 tokens of both ranks.
    student, teacher = TinyLM(seed=1), TinyLM(width=16, seed=2)
    loss = DistillationLoss(temperature=2.0, alpha=0.5)
    total = 0.0
    for sequences in (first, second):
        mask = torch.zeros(sequences.shape[0], 6, dtype=torch.bool)
        mask[:, 2:] = True
        with torch.no_grad():
            teacher_logits = teacher(sequences)[:, :-1]
        total = total + loss.soft(student(sequences)[:, :-1], teacher_logits, mask, num_positions=1)
    (total / 16).backward()
    for name, parameter in student.named_parameters():
        expected = parameter.detach() - 0.5 * parameter.grad
        torch.testing.assert_close(ranks[0]["student"][name], expected, rtol=0, atol=1e-6, msg=name)
