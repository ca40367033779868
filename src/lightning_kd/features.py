"""Intermediate-feature distillation: which layers to match, how to record them, and the adapters.

A :class:`FeaturePair` names a layer of the student and a layer of the teacher (their names in
``model.named_modules()``), the loss between their outputs (FitNets hints ``"mse"`` or
``"cosine"``, or ``"attention"`` transfer; see :mod:`lightning_kd.losses.features`), an optional
trainable adapter that maps the student's feature to the teacher's shape (``"linear"`` or
``"conv1x1"``), and the weight of the term. :class:`FeatureCapture` records the outputs of named
layers with forward hooks, and :class:`FeatureDistillation` puts both together: hooks on the
student and the teacher, the adapters built from one dry forward, and the per-pair losses.

Nothing here assumes images or classifiers: a pair of ``[B, L, D]`` hidden states of two
language models works the same way, with a ``mask`` of the counted tokens.

Example:
    >>> import torch
    >>> from lightning_kd.features import FeatureDistillation
    >>> from lightning_kd.models import CNN
    >>> student, teacher = CNN(1, 3, channels=(4, 8)), CNN(1, 3, channels=(8, 16))
    >>> distillation = FeatureDistillation([{"student": "features.6", "teacher": "features.6", "adapter": "conv1x1"}])
    >>> x = torch.randn(2, 1, 8, 8)
    >>> distillation.build(student, teacher, x)
    >>> distillation.adapters
    ModuleDict(
      (features_6_to_features_6): Conv2d(8, 16, kernel_size=(1, 1), stride=(1, 1))
    )
    >>> distillation.attach(student, teacher)
    >>> with distillation.capturing():
    ...     _ = student(x), teacher(x)
    ...     losses = distillation.losses(*distillation.take())
    >>> distillation.remove()
    >>> sorted(losses)
    ['features.6->features.6']
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_kd.losses.features import attention_transfer_loss, hint_loss

__all__ = [
    "FEATURE_ADAPTERS",
    "FEATURE_LOSSES",
    "FeatureCapture",
    "FeatureDistillation",
    "FeaturePair",
    "LinearAdapter",
    "build_adapter",
    "parse_feature_pairs",
]

FEATURE_LOSSES = ("mse", "cosine", "attention")
FEATURE_ADAPTERS = ("linear", "conv1x1")
_FIELDS = ("student", "teacher", "loss", "adapter", "weight")


def _clean(name: str) -> str:
    return re.sub(r"[^\w.\-]", "_", name)


@dataclasses.dataclass(frozen=True)
class FeaturePair:
    """A student layer, the teacher layer it imitates, the loss between them, an adapter and a weight.

    Attributes:
        student: The student layer's name in ``student.named_modules()``, e.g. ``"features.6"``.
        teacher: The teacher layer's name in ``teacher.named_modules()``.
        loss: ``"mse"`` or ``"cosine"`` (FitNets hints, :func:`~lightning_kd.losses.hint_loss`) or
            ``"attention"`` (:func:`~lightning_kd.losses.attention_transfer_loss`, ``p = 2``).
        adapter: ``"conv1x1"`` (a 1x1 convolution from the student's channels to the teacher's, for
            ``[B, C, H, W]`` maps of one spatial size), ``"linear"`` (on the last dimension, or on the
            flattened per-sample feature when the other dimensions differ), or ``None`` (the shapes
            already fit; attention transfer needs none across channel counts).
        weight: The term's weight in the training loss, ``>= 0`` (mdistiller: 100 for FitNets, 1000
            for attention transfer). 0 computes and logs the term without training on it (an adapter
            then gets no gradient, which DDP accepts only with ``find_unused_parameters=True``).

    Example:
        >>> pair = FeaturePair("layers.1", "features.4", loss="mse", adapter="linear", weight=100)
        >>> pair.name, pair.log_name, pair.weight
        ('layers.1->features.4', 'layers.1_to_features.4', 100.0)
    """

    student: str
    teacher: str
    loss: str = "mse"
    adapter: Optional[str] = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        for role in ("student", "teacher"):
            value = getattr(self, role)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{role} must be the non-empty name of a layer (see named_modules()), got {value!r}")
        if self.loss not in FEATURE_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(FEATURE_LOSSES)}, got {self.loss!r}")
        if self.adapter is not None and self.adapter not in FEATURE_ADAPTERS:
            raise ValueError(f"adapter must be one of {', '.join(FEATURE_ADAPTERS)} or None, got {self.adapter!r}")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        object.__setattr__(self, "weight", float(weight))

    @property
    def name(self) -> str:
        """``"<student layer>-><teacher layer>"``: the pair in messages and in :meth:`FeatureDistillation.losses`."""
        return f"{self.student}->{self.teacher}"

    @property
    def log_name(self) -> str:
        """The name in logged metrics, of the characters every logger accepts: ``"<student>_to_<teacher>"``."""
        return f"{_clean(self.student)}_to_{_clean(self.teacher)}"

    @property
    def adapter_key(self) -> str:
        """The adapter's key in an ``nn.ModuleDict`` (no dots): ``"features_6_to_features_6"``."""
        return self.log_name.replace(".", "_")

    def to_dict(self) -> dict[str, Any]:
        """The fields as primitives, e.g. for a checkpoint's hyperparameters."""
        return dataclasses.asdict(self)


def parse_feature_pairs(
    pairs: Optional[Iterable[Union[FeaturePair, Mapping[str, Any]]]],
) -> tuple[FeaturePair, ...]:
    """Feature pairs from a list of :class:`FeaturePair` or dicts (a Hydra list works), checked.

    Raises:
        TypeError: when ``pairs`` is not a list, or an item is neither a pair nor a dict.
        ValueError: for unknown or missing keys, bad values (naming the pair), or a pair listed twice.

    Example:
        >>> parse_feature_pairs([{"student": "net.1", "teacher": "net.3", "loss": "cosine"}])[0].name
        'net.1->net.3'
        >>> parse_feature_pairs([{"student": "net.1", "teacher": "net.3", "lose": "mse"}])
        Traceback (most recent call last):
        ValueError: feature pair 0 has unknown keys ['lose']; the keys are student, teacher, loss, adapter, weight
    """
    if pairs is None:
        return ()
    if isinstance(pairs, (str, bytes, Mapping)) or not isinstance(pairs, Iterable):
        raise TypeError(
            "feature_pairs must be a list of FeaturePair or of dicts with the keys "
            f"{', '.join(_FIELDS)}, got {type(pairs).__name__}: {pairs!r:.80}"
        )
    parsed: list[FeaturePair] = []
    for index, item in enumerate(pairs):
        if isinstance(item, FeaturePair):
            parsed.append(item)
            continue
        if not isinstance(item, Mapping):
            raise TypeError(
                f"feature pair {index} must be a FeaturePair or a dict with the keys {', '.join(_FIELDS)}, "
                f"got {type(item).__name__}: {item!r:.80}"
            )
        fields = {str(key): value for key, value in item.items()}
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown:
            raise ValueError(f"feature pair {index} has unknown keys {unknown}; the keys are {', '.join(_FIELDS)}")
        missing = [key for key in ("student", "teacher") if key not in fields]
        if missing:
            raise ValueError(f"feature pair {index} ({fields}) lacks {' and '.join(missing)}: name both layers")
        try:
            parsed.append(FeaturePair(**fields))
        except (TypeError, ValueError) as error:
            raise type(error)(f"feature pair {index} ({fields}): {error}") from None
    for attribute in ("name", "log_name", "adapter_key"):
        seen: dict[str, FeaturePair] = {}
        for pair in parsed:
            other = seen.setdefault(getattr(pair, attribute), pair)
            if other is not pair:
                raise ValueError(
                    f"feature pairs {other.name!r} and {pair.name!r} share the {attribute} "
                    f"{getattr(pair, attribute)!r}: list each pair of layers once"
                )
    return tuple(parsed)


def _either(names: list[str]) -> str:
    """``'a'``, ``'a' or 'b'``, ``'a', 'b' or 'c'``."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _feature_of(output: Any) -> Optional[Tensor]:
    """A layer's output as a feature: a tensor, or the first element of a tuple or list (transformer blocks)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def _version(tensor: Tensor) -> Optional[int]:
    """The tensor's in-place modification counter (``None`` for inference tensors, which have none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


class FeatureCapture:
    """Records the outputs of named submodules of ``model`` with forward hooks.

    A layer's feature is its output tensor, or the first element of a tuple or list (as
    transformer blocks return). The names are checked at construction: a name that matches no
    submodule raises, suggesting close names. Hooks are registered by :meth:`attach` (or
    ``with``) and removed by :meth:`remove` (or the end of the ``with``); while :attr:`active` is
    ``False`` they record nothing (e.g. during validation). :meth:`take` returns the features of
    one forward pass and checks that each layer ran exactly once and that its output was not
    modified in place afterwards (a layer followed by ``ReLU(inplace=True)``: hook the ReLU).

    Args:
        model: The network.
        names: Submodule names, as in ``dict(model.named_modules())``.
        role: What ``model`` is, for messages (``"student"``, ``"teacher"``).

    Raises:
        ValueError: for a name that is not a submodule of ``model``.

    Example:
        >>> import torch
        >>> from lightning_kd.models import CNN
        >>> net = CNN(1, 3, channels=(4, 8))
        >>> with FeatureCapture(net, ["features.2"]) as capture:
        ...     _ = net(torch.zeros(2, 1, 8, 8))
        >>> capture.take()["features.2"].shape, capture.attached
        (torch.Size([2, 4, 8, 8]), False)
        >>> FeatureCapture(net, ["feature.2"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: the model has no submodule named 'feature.2'; did you mean 'features.2'...
    """

    def __init__(self, model: nn.Module, names: Iterable[str], role: str = "model"):
        self.model = model
        self.role = role
        self.names = tuple(dict.fromkeys(names))
        self.modules = self._resolve(model, self.names, role)
        self.active = True
        self._handles: list[RemovableHandle] = []
        self._records: dict[str, tuple[Tensor, Optional[int]]] = {}
        self._calls: dict[str, int] = {}

    @staticmethod
    def _resolve(model: nn.Module, names: tuple[str, ...], role: str) -> dict[str, nn.Module]:
        available = dict(model.named_modules())
        found = {}
        for name in names:
            if name not in available or not name:
                choices = [key for key in available if key]
                close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.6)
                hint = f"; did you mean {_either(close)}?" if close else ""
                shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
                raise ValueError(
                    f"the {role} has no submodule named {name!r}{hint} Its {len(choices)} submodule names "
                    f"(dict({role}.named_modules())) include: {shown or 'none'}"
                )
            found[name] = available[name]
        return found

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def attach(self) -> FeatureCapture:
        """Register the hooks (once; attaching again does nothing)."""
        if not self._handles:
            # A partial of a bound method, not a closure: a deep copy of a hooked network records into a copy.
            self._handles = [
                module.register_forward_hook(functools.partial(self._record, name))
                for name, module in self.modules.items()
            ]
        return self

    def remove(self) -> None:
        """Remove the hooks; the recorded features stay until :meth:`clear` or :meth:`take`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureCapture:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __getstate__(self) -> dict[str, Any]:  # hooks do not travel (spawned processes, deep copies)
        return {**self.__dict__, "_handles": [], "_records": {}, "_calls": {}}

    def _record(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if not self.active:
            return
        feature = _feature_of(output)
        if feature is None:
            raise TypeError(
                f"the {self.role}'s layer {name!r} ({type(module).__name__}) returned {type(output).__name__}; "
                "a feature must be a tensor, or a tuple or list whose first element is one"
            )
        self._records[name] = (feature, _version(feature))
        self._calls[name] = self._calls.get(name, 0) + 1

    def clear(self) -> None:
        """Forget the recorded features."""
        self._records.clear()
        self._calls.clear()

    def take(self) -> dict[str, Tensor]:
        """The features of the last forward pass, by layer name; then forget them.

        Raises:
            RuntimeError: when a layer did not run, ran more than once, or its output was modified
                in place after it ran.
        """
        try:
            features = {}
            for name in self.names:
                if name not in self._records:
                    raise RuntimeError(
                        f"the {self.role}'s layer {name!r} did not run in the forward pass, so it has no feature"
                    )
                if self._calls[name] > 1:
                    raise RuntimeError(
                        f"the {self.role}'s layer {name!r} ran {self._calls[name]} times in one forward pass (a shared "
                        "layer?), so its feature is ambiguous: pick a layer that runs once"
                    )
                feature, version = self._records[name]
                if _version(feature) != version:
                    raise RuntimeError(
                        f"the output of the {self.role}'s layer {name!r} was modified in place after it ran (by an "
                        "in-place operation such as ReLU(inplace=True)): hook that operation's layer instead"
                    )
                features[name] = feature
            return features
        finally:
            self.clear()


class LinearAdapter(nn.Linear):
    """A linear map of a feature's last dimension, or of the flattened per-sample feature ``[B, -1]``.

    The flattened form serves features whose other dimensions differ (``[B, C, H, W]`` to
    ``[B, D]``); its output is ``[B, out_features]``, compared with the teacher's flattened feature.

    Example:
        >>> import torch
        >>> LinearAdapter(8, 4)(torch.zeros(2, 5, 8)).shape, LinearAdapter(12, 4)(torch.zeros(2, 3, 2, 2)).shape
        (torch.Size([2, 5, 4]), torch.Size([2, 4]))
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] == self.in_features:
            return super().forward(x)
        if x.dim() > 2 and math.prod(x.shape[1:]) == self.in_features:
            return super().forward(x.flatten(1))
        raise ValueError(
            f"the linear adapter maps features of size {self.in_features} (last or flattened), got {tuple(x.shape)}"
        )


def build_adapter(kind: str, student_feature: Tensor, teacher_feature: Tensor) -> nn.Module:
    """An untrained adapter that maps features shaped like ``student_feature`` to ``teacher_feature``'s shape.

    Args:
        kind: ``"conv1x1"`` (``[B, C, H, W]`` maps of one spatial size) or ``"linear"`` (the last
            dimension when the others agree, else the flattened per-sample features).
        student_feature: An example student feature (only its shape is used).
        teacher_feature: An example teacher feature.

    Raises:
        ValueError: for an unknown kind or shapes the kind cannot map, naming the shapes.

    Example:
        >>> import torch
        >>> build_adapter("conv1x1", torch.zeros(2, 4, 8, 8), torch.zeros(2, 16, 8, 8))
        Conv2d(4, 16, kernel_size=(1, 1), stride=(1, 1))
    """
    s, t = tuple(student_feature.shape), tuple(teacher_feature.shape)
    if len(s) < 2 or len(t) < 2 or s[0] != t[0]:
        raise ValueError(f"an adapter needs features [B, ...] of one batch size, got student {s} and teacher {t}")
    if kind == "conv1x1":
        if len(s) != 4 or len(t) != 4 or s[2:] != t[2:]:
            raise ValueError(
                f"a conv1x1 adapter maps [B, C, H, W] features of equal spatial size, got student {s} and teacher {t}"
                + ("" if len(s) != 4 or len(t) != 4 else ": hook layers of equal resolution")
            )
        return nn.Conv2d(s[1], t[1], kernel_size=1)
    if kind == "linear":
        if s[:-1] == t[:-1]:
            return LinearAdapter(s[-1], t[-1])
        return LinearAdapter(math.prod(s[1:]), math.prod(t[1:]))
    raise ValueError(f"adapter must be one of {', '.join(FEATURE_ADAPTERS)}, got {kind!r}")


def _adapter_from_state(kind: str, state: Mapping[str, Tensor]) -> nn.Module:
    """An adapter shaped like the weights of a saved one (``weight`` and ``bias``)."""
    weight = state["weight"]
    bias = "bias" in state
    if kind == "conv1x1":
        return nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=1, bias=bias)
    return LinearAdapter(weight.shape[1], weight.shape[0], bias=bias)


def _first_parameter(module: nn.Module) -> Optional[Tensor]:
    return next(module.parameters(), None)


def _run(network: nn.Module, x: Any) -> Any:
    """``network`` on the inputs ``x`` (keyword arguments when a mapping), moved to its device."""
    parameter = _first_parameter(network)
    if parameter is not None:
        x = _to_device(x, parameter.device)
    return network(**x) if isinstance(x, Mapping) else network(x)


def _to_device(x: Any, device: torch.device) -> Any:
    """Inputs on ``device``: a tensor, or a mapping of tensors (keyword inputs)."""
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {key: _to_device(value, device) for key, value in x.items()}
    return x


class FeatureDistillation:
    """Feature pairs between a student and a teacher: the hooks, the adapters and the losses.

    A plain object, so that the module that uses it owns the adapters (pass its
    ``nn.ModuleDict``): they are trained and saved with that module. The steps are:

    1. :meth:`build` runs the student and the teacher once, in eval mode and without gradients,
       on an example input, creates the missing adapters from the features' shapes (seeded: every
       process builds the same initial weights, and the global random state is left untouched),
       and computes every loss once, so that shape errors come before training;
    2. :meth:`attach` registers forward hooks on the named layers (:meth:`remove` removes them);
    3. per training step, inside :meth:`capturing`, run both networks, then :meth:`take` the
       features and compute :meth:`losses` (unweighted, by pair name) and :meth:`weighted_sum`.

    Args:
        pairs: :class:`FeaturePair` objects or dicts (see :func:`parse_feature_pairs`).
        adapters: Where the adapters live, keyed by :attr:`FeaturePair.adapter_key`; a new
            ``nn.ModuleDict`` when ``None``.

    Raises:
        ValueError: when there are no pairs, or a pair is invalid.
    """

    def __init__(
        self,
        pairs: Iterable[Union[FeaturePair, Mapping[str, Any]]],
        adapters: Optional[nn.ModuleDict] = None,
    ):
        self.pairs = parse_feature_pairs(pairs)
        if not self.pairs:
            raise ValueError("FeatureDistillation needs at least one feature pair")
        self.adapters = nn.ModuleDict() if adapters is None else adapters
        self.student_capture: Optional[FeatureCapture] = None
        self.teacher_capture: Optional[FeatureCapture] = None

    def adapter(self, pair: FeaturePair) -> Optional[nn.Module]:
        """The pair's adapter, or ``None`` when it has none (or it is not built yet)."""
        if pair.adapter is None or pair.adapter_key not in self.adapters:
            return None
        return self.adapters[pair.adapter_key]

    @property
    def built(self) -> bool:
        """Whether every pair that needs an adapter has one."""
        return all(pair.adapter_key in self.adapters for pair in self.pairs if pair.adapter is not None)

    # --- adapters ---------------------------------------------------------------------------

    def build(self, student: nn.Module, teacher: nn.Module, example_input: Any, seed: int = 0) -> None:
        """Create the missing adapters from one dry forward of both networks on ``example_input``; check every pair.

        The networks run in eval mode (no BatchNorm statistic changes) without gradients, and
        get their modes back. Adapters take the device and dtype of the student's feature.

        Raises:
            ValueError: when a name matches no layer, or a pair's shapes do not fit its adapter or loss.
        """
        student_capture = FeatureCapture(student, [pair.student for pair in self.pairs], role="student")
        teacher_capture = FeatureCapture(teacher, [pair.teacher for pair in self.pairs], role="teacher")
        modes = [(module, module.training) for module in (*student.modules(), *teacher.modules())]
        try:
            student.eval()
            teacher.eval()
            with student_capture, teacher_capture, torch.no_grad():
                _run(student, example_input)
                _run(teacher, example_input)
            student_features, teacher_features = student_capture.take(), teacher_capture.take()
        finally:
            for module, mode in modes:
                module.training = mode
        with torch.random.fork_rng(devices=[]):
            for index, pair in enumerate(self.pairs):
                if pair.adapter is None or pair.adapter_key in self.adapters:
                    continue
                feature = student_features[pair.student]
                torch.manual_seed(seed + index)  # the same initial weights in every process
                try:
                    adapter = build_adapter(pair.adapter, feature, teacher_features[pair.teacher])
                except ValueError as error:
                    raise ValueError(f"feature pair {pair.name!r}: {error}") from None
                self.adapters[pair.adapter_key] = adapter.to(device=feature.device, dtype=feature.dtype)
        with torch.no_grad():
            self.losses(student_features, teacher_features)

    def adapters_from_state(
        self, state_dict: Mapping[str, Tensor], prefix: str = "adapters.", device: Optional[torch.device] = None
    ) -> None:
        """Create the missing adapters that ``state_dict`` holds weights for, shaped like them (before loading it)."""
        for pair in self.pairs:
            if pair.adapter is None or pair.adapter_key in self.adapters:
                continue
            start = f"{prefix}{pair.adapter_key}."
            state = {key[len(start) :]: value for key, value in state_dict.items() if key.startswith(start)}
            if "weight" in state:
                adapter = _adapter_from_state(pair.adapter, state)
                self.adapters[pair.adapter_key] = adapter.to(device=device, dtype=state["weight"].dtype)

    # --- hooks ------------------------------------------------------------------------------

    def attach(self, student: nn.Module, teacher: nn.Module) -> None:
        """Register the hooks on the named layers of both networks (both names are checked first), inactive."""
        self.remove()
        student_capture = FeatureCapture(student, [pair.student for pair in self.pairs], role="student")
        teacher_capture = FeatureCapture(teacher, [pair.teacher for pair in self.pairs], role="teacher")
        for capture in (student_capture, teacher_capture):
            capture.active = False
            capture.attach()
        self.student_capture, self.teacher_capture = student_capture, teacher_capture

    def remove(self) -> None:
        """Remove the hooks from both networks."""
        for capture in (self.student_capture, self.teacher_capture):
            if capture is not None:
                capture.remove()
                capture.clear()
        self.student_capture = self.teacher_capture = None

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return self.student_capture is not None

    def _captures(self) -> tuple[FeatureCapture, FeatureCapture]:
        if self.student_capture is None or self.teacher_capture is None:
            raise RuntimeError("the feature hooks are not attached: call attach(student, teacher) first")
        return self.student_capture, self.teacher_capture

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Record the hooked layers' outputs inside the block (the hooks are inactive outside it)."""
        captures = self._captures()
        for capture in captures:
            capture.clear()
            capture.active = True
        try:
            yield
        finally:
            for capture in captures:
                capture.active = False

    def take(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The recorded ``(student features, teacher features)``, by layer name; then forget them."""
        student_capture, teacher_capture = self._captures()
        try:
            return student_capture.take(), teacher_capture.take()
        finally:
            student_capture.clear()
            teacher_capture.clear()

    # --- losses -----------------------------------------------------------------------------

    def pair_loss(
        self, pair: FeaturePair, student_feature: Tensor, teacher_feature: Tensor, mask: Optional[Tensor] = None
    ) -> Tensor:
        """The pair's loss, unweighted: the adapter (if any) on the student's feature, then the loss.

        ``mask`` (the counted positions, e.g. ``[B, L]`` tokens) applies to the hint losses.
        """
        try:
            adapter = self.adapter(pair)
            if pair.adapter is not None and adapter is None:
                raise RuntimeError(f"its {pair.adapter} adapter is not built yet: call build() first")
            s = student_feature if adapter is None else adapter(student_feature)
            if pair.loss == "attention":
                return attention_transfer_loss(s, teacher_feature)
            t = teacher_feature
            if s.dim() == 2 and t.dim() > 2 and s.shape != t.shape and s.shape[1] == math.prod(t.shape[1:]):
                t = t.flatten(1)  # a flattening linear adapter: compare with the flattened teacher feature
            return hint_loss(s, t, kind=pair.loss, mask=mask)
        except (TypeError, ValueError, RuntimeError) as error:
            raise type(error)(f"feature pair {pair.name!r} ({pair.loss} loss): {error}") from error

    def losses(
        self,
        student_features: Mapping[str, Tensor],
        teacher_features: Mapping[str, Tensor],
        mask: Optional[Tensor] = None,
    ) -> dict[str, Tensor]:
        """Each pair's unweighted loss, by :attr:`FeaturePair.name`, from features by layer name."""
        return {
            pair.name: self.pair_loss(pair, student_features[pair.student], teacher_features[pair.teacher], mask)
            for pair in self.pairs
        }

    def weighted_sum(self, losses: Mapping[str, Tensor]) -> Tensor:
        """``sum(weight * loss)`` over the pairs; a pair of weight 0 is left out (a non-finite one cannot poison it)."""
        terms = [pair.weight * losses[pair.name] for pair in self.pairs if pair.weight != 0]
        if not terms:
            return torch.zeros((), device=next(iter(losses.values())).device)
        return torch.stack(terms).sum()

    def grad_norms(self, features: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
        """The norm of the gradient that each weighted term sends to the student's feature, by pair log name.

        Computed from detached ``(student feature, teacher feature)`` pairs by pair name: only the
        adapter and the loss run again, not the networks.
        """
        norms = {}
        with torch.enable_grad():
            for pair in self.pairs:
                if pair.name not in features:
                    continue
                student_feature, teacher_feature = features[pair.name]
                adapter = self.adapter(pair)
                parameter = None if adapter is None else _first_parameter(adapter)
                dtype = student_feature.dtype if parameter is None else parameter.dtype
                s = student_feature.detach().to(dtype).requires_grad_(True)
                loss = pair.weight * self.pair_loss(pair, s, teacher_feature.detach())
                (grad,) = torch.autograd.grad(loss, s)
                norms[pair.log_name] = float(grad.float().norm())
        return norms
