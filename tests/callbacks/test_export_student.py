"""ExportStudent: the best student, without the teacher, loadable in one line, matching predict_step."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from kd_testing import BatchNormDropoutNet, quiet_trainer
from lightning_kd import DistillationLoss, DistillationModule, load_student
from lightning_kd.callbacks import ExportStudent
from lightning_kd.callbacks.export_student import materialize_student
from lightning_kd.models import MLP


def make_module() -> DistillationModule:
    torch.manual_seed(0)
    student = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    return DistillationModule(student, BatchNormDropoutNet(width=32), loss=DistillationLoss(temperature=4.0, alpha=0.5))


def fit_and_export(toy_loaders, tmp_path, *callbacks, **trainer_kwargs):
    train, val = toy_loaders
    module, export = make_module(), ExportStudent(dirpath=tmp_path / "export")
    trainer = quiet_trainer(max_epochs=4, callbacks=[*callbacks, export], **trainer_kwargs)
    trainer.fit(module, train, val)
    return module, export, trainer


def test_exports_the_best_student_matching_predict_step(toy_loaders, tmp_path):
    train, val = toy_loaders
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", mode="min")
    module, export, trainer = fit_and_export(toy_loaders, tmp_path, checkpoints, enable_checkpointing=True)
    directory = tmp_path / "export"
    info = json.loads((directory / "export.json").read_text())
    assert info["num_classes"] == 3 and info["input_shape"] == [8]
    assert info["weights_from"] == checkpoints.best_model_path
    assert info["best"]["score"] == pytest.approx(float(checkpoints.best_model_score))
    assert set(info["files"]) == {"state_dict", "torchscript", "torch_export", "onnx"}
    assert "val/acc" in info["metrics"] and "teacher" not in json.dumps(info["files"])

    # The reference: predict_step of the module with the best checkpoint's weights.
    predicted = trainer.predict(module, val, ckpt_path=checkpoints.best_model_path)
    probs = torch.cat([p["probs"] for p in predicted])
    x = val.dataset.tensors[0]

    scripted = torch.jit.load(directory / "student.ts")  # the documented one-liner
    torch.testing.assert_close(scripted(x).softmax(-1), probs, atol=1e-5, rtol=0)
    assert not any("teacher" in name for name, _ in scripted.named_modules())
    assert "temperature" not in scripted.code

    state = torch.load(directory / "student.pt", weights_only=True)
    assert not any(key.startswith("teacher") for key in state)
    rebuilt = make_module().student
    rebuilt.load_state_dict(state)
    torch.testing.assert_close(rebuilt.eval()(x).softmax(-1), probs, atol=1e-5, rtol=0)

    session = onnxruntime.InferenceSession(str(directory / "student.onnx"))
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})  # a batch size other than the trace's
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1).numpy(), probs.numpy(), atol=1e-5, rtol=0)

    best = load_student(make_module().student, checkpoints.best_model_path)
    torch.testing.assert_close(best(x), scripted(x), atol=1e-5, rtol=0)


def test_torch_export_program_has_a_free_batch_dimension_and_matches_predict_step(toy_loaders, tmp_path):
    train, val = toy_loaders
    module, export = make_module(), ExportStudent(tmp_path / "export", torchscript=False, onnx=False)
    trainer = quiet_trainer(max_epochs=2, callbacks=[export])
    trainer.fit(module, train, val)
    info = json.loads((export.export_dir / "export.json").read_text())
    assert info["files"]["torch_export"] == "student.pt2"
    assert info["load"] == "torch.export.load('student.pt2').module()(x).softmax(-1)"

    program = torch.export.load(export.export_dir / "student.pt2").module()  # the documented one-liner
    for size in (5, 1):  # traced with 2: neither size was seen
        x = val.dataset.tensors[0][:size]
        (predicted,) = trainer.predict(module, DataLoader(TensorDataset(x), batch_size=size))
        torch.testing.assert_close(program(x).softmax(-1), predicted["probs"], atol=1e-5, rtol=0)
        torch.testing.assert_close(program(x).argmax(-1), predicted["preds"])


def test_without_a_checkpoint_callback_the_strategy_gathers_the_final_weights(toy_loaders, tmp_path, monkeypatch):
    train, val = toy_loaders
    module, export = make_module(), ExportStudent(dirpath=tmp_path / "export")
    trainer = quiet_trainer(max_epochs=4, callbacks=[export])
    gathered = []

    def gather():
        state = real_gather()
        gathered.append({key: value.clone() for key, value in state.items()})
        # Leave the live student as FSDP leaves a rank without a shard: size-0 parameters. A copy of it is useless.
        for parameter in module.student.parameters():
            parameter.data = torch.empty(0)
        return state

    real_gather = trainer.strategy.lightning_module_state_dict
    monkeypatch.setattr(trainer.strategy, "lightning_module_state_dict", gather)
    trainer.fit(module, train, val)
    assert len(gathered) == 1
    final = {key.removeprefix("student."): value for key, value in gathered[0].items() if key.startswith("student.")}
    info = json.loads((export.export_dir / "export.json").read_text())
    assert info["weights_from"] == "final weights"
    exported = torch.load(export.export_dir / "student.pt", weights_only=True)
    assert exported.keys() == final.keys()
    for key in final:
        torch.testing.assert_close(exported[key], final[key], atol=0, rtol=0)
    rebuilt = make_module().student
    rebuilt.load_state_dict(final)
    x = val.dataset.tensors[0]
    torch.testing.assert_close(torch.jit.load(export.export_dir / "student.ts")(x), rebuilt.eval()(x))
    torch.testing.assert_close(torch.export.load(export.export_dir / "student.pt2").module()(x), rebuilt(x))


def trained_student() -> torch.nn.Module:
    student = make_module().student
    student(torch.randn(32, 8))  # running statistics of the BatchNorm other than their initial 0 and 1
    return student.eval()


def test_materialize_student_replaces_shards_with_the_full_tensors():
    student = trained_student()
    full = {key: value.clone() for key, value in student.state_dict().items()}
    sharded = copy.deepcopy(student)  # as under FSDP: size-0 parameters, buffers not the trained ones
    for module in sharded.modules():
        for name, value in list(module.named_parameters(recurse=False)):
            setattr(module, name, torch.nn.Parameter(value.new_empty(0)))
        for name, value in list(module.named_buffers(recurse=False)):
            setattr(module, name, torch.zeros_like(value))
    with pytest.raises(RuntimeError, match="size mismatch"):
        copy.deepcopy(sharded).load_state_dict(full)  # why a copy of the live student cannot be used

    exported = materialize_student(sharded, full).eval()
    x = torch.randn(5, 8)
    torch.testing.assert_close(exported(x), student(x), atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in exported.parameters())
    assert all(p.numel() == 0 for p in sharded.parameters())  # the structure is left as it was
    exported[0].weight.data.add_(1.0)
    assert torch.equal(full["0.weight"], student[0].weight)  # a copy, not a view of the state


def test_materialize_student_unwraps_torch_compile_and_keeps_tied_weights():
    student = trained_student()
    student[3] = torch.nn.Linear(16, 16)
    student.append(torch.nn.Linear(16, 16))
    student[4].weight = student[3].weight
    exported = materialize_student(torch.compile(student), student.state_dict())
    assert type(exported) is torch.nn.Sequential
    assert exported[4].weight is exported[3].weight and exported[3].weight is not student[3].weight
    x = torch.randn(5, 8)
    torch.testing.assert_close(exported(x), student(x), atol=1e-6, rtol=0)


def test_materialize_student_names_the_missing_and_unexpected_keys():
    student = trained_student()
    state = student.state_dict()
    del state["0.weight"], state["1.running_mean"]
    state["head.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"missing \['0.weight', '1.running_mean'\], unexpected \['head.bias'\]"):
        materialize_student(student, state)


def test_an_existing_export_is_never_overwritten(toy_loaders, tmp_path):
    _, first, _ = fit_and_export(toy_loaders, tmp_path)
    before = (tmp_path / "export" / "student.pt").read_bytes()
    _, second, _ = fit_and_export(toy_loaders, tmp_path, max_steps=2)
    assert first.export_dir == tmp_path / "export" and second.export_dir == tmp_path / "export-v1"
    assert (tmp_path / "export" / "student.pt").read_bytes() == before
    assert (tmp_path / "export-v1" / "export.json").is_file()


def test_onnx_torchscript_and_torch_export_can_be_turned_off(toy_loaders, tmp_path):
    train, val = toy_loaders
    export = ExportStudent(tmp_path / "export", torchscript=False, onnx=False, torch_export=False)
    quiet_trainer(max_epochs=1, callbacks=[export]).fit(make_module(), train, val)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["export.json", "student.pt"]
    info = json.loads((tmp_path / "export" / "export.json").read_text())
    assert info["load"] == "student.load_state_dict(torch.load('student.pt', weights_only=True))"


def test_a_module_that_is_not_distillable_is_refused_at_setup(toy_loaders, tmp_path):
    from lightning_kd import ClassifierModule

    train, val = toy_loaders
    trainer = quiet_trainer(max_epochs=1, callbacks=[ExportStudent(tmp_path)])
    with pytest.raises(TypeError, match="ExportStudent needs a DistillableModule.*got ClassifierModule"):
        trainer.fit(ClassifierModule(MLP(8, 3)), train, val)
