"""Intermediate-feature distillation: pairs, hooks, adapters, and DistillationModule(feature_pairs=...)."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_testing import quiet_trainer
from lightning_kd import DistillationLoss, DistillationModule, load_student
from lightning_kd.callbacks import CacheTeacherOutputs, DistillationMonitor, ExportStudent
from lightning_kd.data import IndexedDataset
from lightning_kd.features import (
    FeatureCapture,
    FeatureDistillation,
    FeaturePair,
    LinearAdapter,
    build_adapter,
    parse_feature_pairs,
)
from lightning_kd.losses import attention_transfer_loss, hint_loss
from lightning_kd.models import CNN, MLP

# Student CNN(1, 3, (4, 8)) and teacher CNN(1, 3, (8, 16)) on 8x8 images: "features.2" is the first
# block's ReLU (4 or 8 channels, 8x8), "features.6" the second's (8 or 16 channels, 4x4).
FITNET = {"student": "features.6", "teacher": "features.6", "loss": "mse", "adapter": "conv1x1", "weight": 10.0}
ATTENTION = {"student": "features.2", "teacher": "features.2", "loss": "attention", "weight": 100.0}
PAIRS = [FITNET, ATTENTION]
FITNET_LOG, ATTENTION_LOG = "features.6_to_features.6", "features.2_to_features.2"


def networks(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return CNN(1, 3, channels=(4, 8), hidden=16), CNN(1, 3, channels=(8, 16), hidden=32)


def image_loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0).long()
    train = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8, shuffle=True)
    return train, DataLoader(TensorDataset(x[32:], y[32:]), batch_size=8)


def make_module(seed: int = 0, teacher: nn.Module = None, **kwargs) -> DistillationModule:
    student, fresh_teacher = networks(seed)
    kwargs.setdefault("feature_pairs", PAIRS)
    kwargs.setdefault("optimizer", partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    return DistillationModule(student, teacher or fresh_teacher, DistillationLoss(4.0, 0.5), **kwargs)


def hook_count(*models: nn.Module) -> int:
    return sum(len(m._forward_hooks) for model in models for m in model.modules())


def adapter_state(module: DistillationModule) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.adapters.state_dict().items()}


def read_csv(path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


# --- pairs ------------------------------------------------------------------------------------


def test_a_pair_has_a_readable_name_a_loggable_name_and_a_module_key():
    pair = FeaturePair("layers.1", "features.4", adapter="linear", weight=3)
    assert (pair.name, pair.log_name, pair.adapter_key) == (
        "layers.1->features.4",
        "layers.1_to_features.4",
        "layers_1_to_features_4",
    )
    assert pair.weight == 3.0 and isinstance(pair.weight, float)
    assert parse_feature_pairs([pair.to_dict()]) == (pair,)  # the hyperparameters round-trip
    assert parse_feature_pairs(None) == () == parse_feature_pairs([])
    from_hydra = OmegaConf.create({"pairs": [pair.to_dict()]}).pairs  # kd-train's distill.feature_pairs
    assert parse_feature_pairs(from_hydra) == (pair,)


@pytest.mark.parametrize(
    ("pairs", "error", "match"),
    [
        ({"student": "a", "teacher": "b"}, TypeError, "must be a list of FeaturePair or of dicts"),
        (["a->b"], TypeError, "feature pair 0 must be a FeaturePair or a dict"),
        ([{"student": "a", "teacher": "b", "lose": "mse"}], ValueError, r"unknown keys \['lose'\]"),
        ([{"student": "a"}], ValueError, "feature pair 0 .* lacks teacher"),
        ([{"student": "a", "teacher": "b", "loss": "l1"}], ValueError, "loss must be one of mse, cosine, attention"),
        ([{"student": "a", "teacher": "b", "adapter": "mlp"}], ValueError, "adapter must be one of linear, conv1x1"),
        ([{"student": "a", "teacher": "b", "weight": -1}], ValueError, "weight must be a finite number >= 0, got -1"),
        ([{"student": "", "teacher": "b"}], ValueError, "student must be the non-empty name of a layer"),
        ([{"student": "a", "teacher": "b"}, {"student": "a", "teacher": "b", "loss": "cosine"}], ValueError, "once"),
    ],
)
def test_bad_pairs_are_refused_naming_the_pair(pairs, error, match):
    with pytest.raises(error, match=match):
        parse_feature_pairs(pairs)


# --- capture ----------------------------------------------------------------------------------


def test_capture_records_the_named_layers_and_removes_its_hooks():
    student, _ = networks()
    x = torch.randn(2, 1, 8, 8)
    capture = FeatureCapture(student, ["features.2", "features.6"], role="student").attach()
    assert capture.attached and hook_count(student) == 2
    student(x)
    features = capture.take()
    capture.active = False  # inactive hooks record nothing
    torch.testing.assert_close(features["features.2"], student.features[:3](x))
    assert features["features.6"].shape == (2, 8, 4, 4)
    student(x)
    with pytest.raises(RuntimeError, match="the student's layer 'features.2' did not run"):
        capture.take()
    capture.remove()
    assert not capture.attached and hook_count(student) == 0


def test_an_unknown_layer_name_lists_close_names_and_some_names():
    student, _ = networks()
    with pytest.raises(ValueError) as error:
        FeatureCapture(student, ["feature.6"], role="student")
    message = str(error.value)
    assert "the student has no submodule named 'feature.6'; did you mean 'features.6'" in message
    assert "15 submodule names" in message and "features.0, features.1" in message and "head" in message


class Block(nn.Module):
    """A transformer-like block: returns a tuple whose first element is the hidden state."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return (self.linear(x), None)


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.shared = nn.Linear(4, 4)
        self.last = nn.Linear(4, 4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.shared(self.shared(self.block(x)[0]))
        return self.relu(self.last(x))  # overwrites last's output


def test_tuple_outputs_shared_layers_and_in_place_changes():
    net, x = Odd(), torch.randn(3, 4)
    with FeatureCapture(net, ["block"]) as capture:
        net(x)
        assert capture.take()["block"].shape == (3, 4)  # the first element of the tuple
    with FeatureCapture(net, ["shared"]) as capture:
        net(x)
        with pytest.raises(RuntimeError, match="ran 2 times in one forward pass"):
            capture.take()
    with FeatureCapture(net, ["last"]) as capture:
        net(x)
        with pytest.raises(RuntimeError, match=r"'last' was modified in place .* ReLU\(inplace=True\)"):
            capture.take()
    with FeatureCapture(net, ["relu"]) as capture:  # the in-place layer itself is fine
        output = net(x)
        torch.testing.assert_close(capture.take()["relu"], output)


def test_a_layer_that_returns_no_tensor_is_named():
    net = nn.Sequential(nn.Linear(4, 4))
    net[0].register_forward_hook(lambda module, args, output: {"x": output})
    with FeatureCapture(net, ["0"], role="student"), pytest.raises(TypeError, match="layer '0' .* returned dict"):
        net(torch.zeros(1, 4))


# --- adapters ---------------------------------------------------------------------------------


def test_adapters_fit_the_shapes_or_say_why_not():
    conv = build_adapter("conv1x1", torch.zeros(2, 4, 8, 8), torch.zeros(2, 16, 8, 8))
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.out_channels == 16
    last = build_adapter("linear", torch.zeros(2, 5, 8), torch.zeros(2, 5, 12))  # hidden states [B, L, D]
    assert isinstance(last, LinearAdapter) and (last.in_features, last.out_features) == (8, 12)
    flat = build_adapter("linear", torch.zeros(2, 8, 4, 4), torch.zeros(2, 32))
    assert (flat.in_features, flat.out_features) == (128, 32) and flat(torch.zeros(2, 8, 4, 4)).shape == (2, 32)
    with pytest.raises(ValueError, match=r"equal spatial size, got student \(2, 4, 8, 8\) and teacher \(2, 16, 4, 4\)"):
        build_adapter("conv1x1", torch.zeros(2, 4, 8, 8), torch.zeros(2, 16, 4, 4))
    with pytest.raises(ValueError, match=r"maps \[B, C, H, W\] features"):
        build_adapter("conv1x1", torch.zeros(2, 4), torch.zeros(2, 16))


def test_build_is_seeded_leaves_the_random_state_and_the_networks_alone():
    student, teacher = networks()
    student.train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    x = torch.randn(2, 1, 8, 8)
    rng = torch.get_rng_state()
    first = FeatureDistillation([FITNET, {**FITNET, "teacher": "features.5", "loss": "cosine"}])
    first.build(student, teacher, x, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert student.training and all(m.training for m in student.modules())  # modes given back
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # no BatchNorm update
    torch.manual_seed(123)  # another global state: the same adapters
    second = FeatureDistillation([FITNET, {**FITNET, "teacher": "features.5", "loss": "cosine"}])
    second.build(student, teacher, torch.randn(2, 1, 8, 8), seed=3)
    assert list(first.adapters) == ["features_6_to_features_6", "features_6_to_features_5"]
    for key, value in first.adapters.state_dict().items():
        assert torch.equal(value, second.adapters.state_dict()[key]), key
    other = FeatureDistillation([FITNET])
    other.build(student, teacher, x, seed=4)
    key = "features_6_to_features_6"
    assert not torch.equal(other.adapters[key].weight, first.adapters[key].weight)


def test_build_checks_every_pair_before_training():
    student, teacher = networks()
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(
        ValueError, match=r"feature pair 'features.6->features.6' \(mse loss\): hint_loss needs .* one shape"
    ):
        FeatureDistillation([{**FITNET, "adapter": None}]).build(student, teacher, x)
    with pytest.raises(ValueError, match=r"'features.6->features.2'.*equal batch and spatial sizes"):
        FeatureDistillation([{**ATTENTION, "student": "features.6"}]).build(student, teacher, x)
    with pytest.raises(ValueError, match="the teacher has no submodule named 'features.66'"):
        FeatureDistillation([{**FITNET, "teacher": "features.66"}]).build(student, teacher, x)


def test_linear_adapters_and_cosine_hints_on_hidden_vectors(toy_loaders):
    """Nothing image-specific: MLP hidden layers [B, D] through a linear adapter, trained by the module."""
    train, val = toy_loaders
    torch.manual_seed(0)
    pair = {"student": "net.2", "teacher": "net.2", "loss": "cosine", "adapter": "linear", "weight": 2.0}
    module = DistillationModule(MLP(8, 3, hidden=(4,)), MLP(8, 3, hidden=(16,)), feature_pairs=[pair])
    quiet_trainer(max_epochs=1, log_every_n_steps=1).fit(module, train, val)
    adapter = module.adapters["net_2_to_net_2"]
    assert isinstance(adapter, LinearAdapter) and (adapter.in_features, adapter.out_features) == (4, 16)
    assert "train/feature_loss/net.2_to_net.2" in module.trainer.callback_metrics


def test_grad_norms_match_the_closed_form():
    """mse without adapter: d/ds [w mean((s - t)^2)] = 2 w (s - t) / N."""
    distillation = FeatureDistillation([{"student": "a", "teacher": "b", "weight": 5.0}])
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    norms = distillation.grad_norms({"a->b": (s, t)})
    assert norms["a_to_b"] == pytest.approx((2 * 5.0 * (s - t) / 24).norm().item(), rel=1e-5)


# --- DistillationModule(feature_pairs=...) ------------------------------------------------------


class Record(L.Callback):
    """What the module looks like once fit has set it up, and which parameters the optimizer got."""

    def on_fit_start(self, trainer, pl_module):
        self.adapters = adapter_state(pl_module)
        self.hooks = hook_count(pl_module.student, pl_module.teacher)

    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        self.optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.optimizer_state = {id(p) for p in optimizer.state}


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_fitnets_and_attention_transfer_train_the_adapters_and_checkpoint_export_and_resume(tmp_path):
    train, val = image_loaders()  # 4 steps per epoch
    module = make_module()
    teacher_state = copy.deepcopy(module.teacher.state_dict())
    record = Record()
    trainer = quiet_trainer(
        max_epochs=2,
        enable_checkpointing=True,
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=1,
        callbacks=[
            record,
            ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True),
            ExportStudent(tmp_path / "export", torchscript=False, onnx=False, torch_export=False),
            DistillationMonitor(grad_every_n_steps=1),
        ],
    )
    trainer.fit(module, train, val)

    # Built at setup, from a training batch: one 1x1 convolution (attention transfer needs none).
    assert list(module.adapters) == ["features_6_to_features_6"]
    assert module.adapters["features_6_to_features_6"].in_channels == 8
    assert record.hooks == 4  # two layers of each network
    assert hook_count(module.student, module.teacher) == 0  # removed at the end of fit
    # Adapters are trained: in the optimizer, and their weights moved.
    adapter_params = list(module.adapters.parameters())
    assert {id(p) for p in adapter_params} <= record.optimized
    assert all(not torch.equal(record.adapters[k], v) for k, v in adapter_state(module).items())
    # The teacher is untouched and in eval mode.
    assert all(torch.equal(teacher_state[k], v) for k, v in module.teacher.state_dict().items())
    assert not any(m.training for m in module.teacher.modules())
    assert not any(p.requires_grad for p in module.teacher.parameters())

    # Each term is logged, and measured by the monitor.
    rows = read_csv(tmp_path / "metrics.csv")
    logged = {key for row in rows for key, value in row.items() if value}
    for name in (FITNET_LOG, ATTENTION_LOG):
        assert f"train/feature_loss/{name}" in logged
        assert f"train/grad_norm_feature/{name}" in logged
    assert {"train/loss", "train/soft_loss", "train/hard_loss", "train/grad_norm_soft"} <= logged
    norms = record_norms(module.trainer)
    assert len(norms) == 2 and all(value > 0 for value in norms.values())

    # Checkpoints hold the student and the adapters (not the teacher); exports hold the student only.
    path = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(path, weights_only=True)
    keys = set(saved["state_dict"])
    assert keys == {f"student.{k}" for k in module.student.state_dict()} | {
        f"adapters.{k}" for k in module.adapters.state_dict()
    }
    assert saved["hyper_parameters"]["feature_pairs"] == [FeaturePair(**pair).to_dict() for pair in PAIRS]
    exported = torch.load(tmp_path / "export" / "student.pt", weights_only=True)
    assert set(exported) == set(module.student.state_dict())
    assert all(torch.equal(exported[k], v) for k, v in module.student.state_dict().items())
    assert json.loads((tmp_path / "export" / "export.json").read_text())["weights_from"].endswith(".ckpt")
    x = torch.cat([x for x, _ in val])
    module.eval()
    student = load_student(networks()[0], path)
    torch.testing.assert_close(student(x), module.student(x))

    # load_from_checkpoint rebuilds the adapters from the saved shapes (the pairs come from the hyperparameters).
    reloaded = DistillationModule.load_from_checkpoint(path, student=networks()[0], teacher=module.teacher)
    assert reloaded.feature_pairs == module.feature_pairs and list(reloaded.adapters) == list(module.adapters)
    assert all(torch.equal(adapter_state(module)[k], v) for k, v in adapter_state(reloaded).items())

    # Resume: another student and fresh adapters get the checkpoint's, with the optimizer state.
    resumed = make_module(seed=1, teacher=copy.deepcopy(module.teacher))
    record = Record()
    trainer = quiet_trainer(
        max_epochs=3,
        enable_checkpointing=True,
        callbacks=[record, ModelCheckpoint(dirpath=tmp_path / "resumed", save_last=True)],
    )
    trainer.fit(resumed, train, val, ckpt_path=path)
    assert trainer.global_step == 12
    assert record.adapters and all(
        torch.equal(saved["state_dict"][f"adapters.{k}"], v) for k, v in record.adapters.items()
    )
    assert {id(p) for p in resumed.adapters.parameters()} <= record.optimizer_state  # momentum restored
    key = "features_6_to_features_6"
    assert not torch.equal(resumed.adapters[key].weight, module.adapters[key].weight)  # it trained on


def record_norms(trainer) -> dict[str, float]:
    monitor = next(c for c in trainer.callbacks if isinstance(c, DistillationMonitor))
    return {k: v for k, v in monitor.last_grad_norms.items() if k.startswith("grad_norm_feature/")}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_the_training_loss_adds_each_weighted_term_to_the_distillation_loss():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    module = make_module(example_input=x[:2])
    module.setup("fit")  # attaches the hooks; the adapters exist already
    output = module.training_step((x, y), 0)
    module.teardown("fit")
    assert hook_count(module.student, module.teacher) == 0
    with (
        FeatureCapture(module.student, ["features.2", "features.6"]) as s,
        FeatureCapture(module.teacher, ["features.2", "features.6"]) as t,
    ):
        student_logits = module.student(x)
        with torch.no_grad():
            teacher_logits = module.teacher(x)
        s, t = s.take(), t.take()
    expected = (
        DistillationLoss(4.0, 0.5)(student_logits, teacher_logits, y).total
        + 10.0 * hint_loss(module.adapters["features_6_to_features_6"](s["features.6"]), t["features.6"])
        + 100.0 * attention_transfer_loss(s["features.2"], t["features.2"])
    )
    torch.testing.assert_close(output["loss"], expected)
    assert output["features"]["features.6->features.6"][0].shape == (4, 8, 4, 4)
    assert not output["features"]["features.6->features.6"][0].requires_grad


def test_evaluation_is_unchanged_and_runs_no_hooks():
    train, val = image_loaders()
    with_pairs, plain = make_module(), make_module(feature_pairs=None)
    plain.teacher.load_state_dict(with_pairs.teacher.state_dict())
    plain.student.load_state_dict(with_pairs.student.state_dict())
    results = [quiet_trainer().validate(module, val, verbose=False)[0] for module in (with_pairs, plain)]
    assert results[0] == results[1]
    assert len(with_pairs.adapters) == 0  # validate builds nothing


def test_a_failing_fit_removes_the_hooks():
    train, val = image_loaders()
    module = make_module()

    class Fail(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                assert hook_count(pl_module.student, pl_module.teacher) == 4
                raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        quiet_trainer(max_epochs=1, callbacks=[Fail()]).fit(module, train, val)
    assert hook_count(module.student, module.teacher) == 0


def test_a_wrong_layer_name_fails_at_setup_naming_close_names():
    train, val = image_loaders()
    module = make_module(feature_pairs=[{**FITNET, "student": "feature.6"}])
    with pytest.raises(ValueError, match="the student has no submodule named 'feature.6'; did you mean 'features.6'"):
        quiet_trainer(max_epochs=1).fit(module, train, val)
    assert hook_count(module.student, module.teacher) == 0
    with pytest.raises(ValueError, match="example_input builds the adapters of feature_pairs"):
        make_module(feature_pairs=None, example_input=torch.zeros(2, 1, 8, 8))


def test_teacher_outputs_cannot_be_cached_with_feature_pairs(tmp_path):
    train, val = image_loaders()
    indexed = DataLoader(IndexedDataset(train.dataset), batch_size=8)
    callback = CacheTeacherOutputs(dirpath=tmp_path)
    with pytest.raises(ValueError, match="feature_pairs: their teacher features come from a live teacher forward"):
        quiet_trainer(max_epochs=1, callbacks=[callback]).fit(make_module(), indexed, val)


def test_under_ddp_every_rank_builds_the_same_adapters_and_they_stay_identical(tmp_path):
    """Two CPU processes (gloo): each rank has another random state and other batches; the adapters
    built at setup are the same, DDP keeps them equal, they train, and no hook is left."""
    script = Path(__file__).parent / "scripts" / "feature_ddp_fit.py"
    result = subprocess.run(
        [sys.executable, str(script), "ddp", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0 and "finished: 4 steps" in result.stdout, result.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for part in ("built", "adapters", "student"):
        assert ranks[0][part] and ranks[0][part].keys() == ranks[1][part].keys(), part
        for key, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][key]), f"{part}.{key} differs between the ranks"
    key = "features_6_to_features_6.weight"
    assert list(ranks[0]["adapters"]) == [key, "features_6_to_features_6.bias"]
    assert not torch.equal(ranks[0]["built"][key], ranks[0]["adapters"][key])
    assert ranks[0]["hooks"] == ranks[1]["hooks"] == 0
