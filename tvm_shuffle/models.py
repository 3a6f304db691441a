"""Model zoo: ShuffleNet v1 and v2 in plain PyTorch, described by a registry of plain data.

* v2 (Ma et al. 2018) matches torchvision's ``ShuffleNetV2`` module for module,
  so a torchvision ``state_dict`` loads with ``strict=True``.
* v1 (Zhang et al. 2018) follows the authors' release
  (megvii-model/ShuffleNet-Series, ``ShuffleNetV1``); widths and groups the
  release does not ship are derived by the rule in :func:`_v1_channels`.
  Channels, groups and complexity match the release, but its checkpoints do
  not load here: module names differ, ``fc`` has a bias, and shuffles use the
  one :func:`channel_shuffle` shared with v2.

List the zoo with ``python -m tvm_shuffle.models`` (``--json`` for machines).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tvm_shuffle.defaults import INPUT_SHAPE
from tvm_shuffle.errors import UserError, cli_entry, unknown_name

STAGE_REPEATS = (4, 8, 4)
WIDTHS = (0.5, 1.0, 1.5, 2.0)
V1_GROUPS = (1, 2, 3, 4, 8)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one zoo model, as plain data.

    ``stage_channels`` is (stem, stage2, stage3, stage4) for v1 and
    (stem, stage2, stage3, stage4, conv5) for v2, the layout torchvision calls
    ``stages_out_channels``. ``paper_macs``/``paper_params`` are the published
    figures (None where the authors give none); ``reference`` says where they
    come from.
    """

    name: str
    family: str  # "v1" | "v2"
    width: float
    groups: int | None  # pointwise-conv groups; v1 only
    stage_channels: tuple[int, ...]
    stage_repeats: tuple[int, ...] = STAGE_REPEATS
    paper_macs: int | None = None
    paper_params: int | None = None
    reference: str | None = None
    input_shape: tuple[int, int, int, int] = INPUT_SHAPE
    num_classes: int = 1000


# ---------------------------------------------------------------------------
# Building blocks


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (the paper's "channel shuffle").

    Kept in exactly this view/transpose/contiguous/view form: the graph
    passes recognise the pattern torch.export produces from it.
    """
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, c, h, w)


def _conv_bn(inp: int, out: int, kernel: int, *, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]


class InvertedResidual(nn.Module):
    """ShuffleNet v2 unit; attribute names and layer order as torchvision's."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = out // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                *_conv_bn(inp, inp, 3, stride=stride, groups=inp),
                *_conv_bn(inp, branch, 1), nn.ReLU(inplace=True))
        self.branch2 = nn.Sequential(
            *_conv_bn(inp if stride > 1 else branch, branch, 1), nn.ReLU(inplace=True),
            *_conv_bn(branch, branch, 3, stride=stride, groups=branch),
            *_conv_bn(branch, branch, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """torchvision-compatible ShuffleNet v2 (same state_dict keys and shapes)."""

    def __init__(self, stage_channels: Sequence[int], stage_repeats: Sequence[int] = STAGE_REPEATS,
                 num_classes: int = 1000) -> None:
        super().__init__()
        stem, *stages, last = stage_channels
        self.conv1 = nn.Sequential(*_conv_bn(3, stem, 3, stride=2), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inp = stem
        for index, (repeats, out) in enumerate(zip(stage_repeats, stages), start=2):
            units = [InvertedResidual(inp, out, 2)] + [InvertedResidual(out, out, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{index}", nn.Sequential(*units))
            inp = out
        self.conv5 = nn.Sequential(*_conv_bn(inp, last, 1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x)
        return self.fc(x.mean([2, 3]))


class ShuffleV1Unit(nn.Module):
    """ShuffleNet v1 unit (paper Fig. 2b/2c).

    A stride-2 unit's branch yields ``out - inp`` channels so that concatenating
    the average-pooled input restores ``out``.
    """

    def __init__(self, inp: int, out: int, *, stride: int, groups: int, group_first_conv: bool = True) -> None:
        super().__init__()
        self.stride = stride
        # After an ungrouped conv every channel already sees every input, so a
        # shuffle would only permute channels the next conv's weights can absorb.
        self.shuffle_groups = groups if group_first_conv else 1
        mid = out // 4
        branch = out - inp if stride == 2 else out
        self.compress = nn.Sequential(*_conv_bn(inp, mid, 1, groups=self.shuffle_groups), nn.ReLU(inplace=True))
        self.depthwise = nn.Sequential(*_conv_bn(mid, mid, 3, stride=stride, groups=mid))
        self.expand = nn.Sequential(*_conv_bn(mid, branch, 1, groups=groups))
        if stride == 2:
            self.shortcut = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compress(x)
        if self.shuffle_groups > 1:
            out = channel_shuffle(out, self.shuffle_groups)
        out = self.expand(self.depthwise(out))
        if self.stride == 1:
            return F.relu(out + x)
        return F.relu(torch.cat((self.shortcut(x), out), dim=1))


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 with the same top-level layout as :class:`ShuffleNetV2`."""

    def __init__(self, stage_channels: Sequence[int], groups: int,
                 stage_repeats: Sequence[int] = STAGE_REPEATS, num_classes: int = 1000) -> None:
        super().__init__()
        stem, *stages = stage_channels
        self.conv1 = nn.Sequential(*_conv_bn(3, stem, 3, stride=2), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inp = stem
        for index, (repeats, out) in enumerate(zip(stage_repeats, stages), start=2):
            # Paper Sec. 3.3: stage 2's first pointwise conv is not grouped,
            # its input (the stem) has too few channels.
            units = [ShuffleV1Unit(inp, out, stride=2, groups=groups, group_first_conv=index > 2)]
            units += [ShuffleV1Unit(out, out, stride=1, groups=groups) for _ in range(repeats - 1)]
            setattr(self, f"stage{index}", nn.Sequential(*units))
            inp = out
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean([2, 3]))


# ---------------------------------------------------------------------------
# Registry

_V2_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
# ShuffleNet V2 paper, Table 5 (its MFLOPs are multiply-adds).
_V2_PAPER = {0.5: (41e6, 1.4e6), 1.0: (146e6, 2.3e6), 1.5: (299e6, 3.5e6), 2.0: (591e6, 7.4e6)}

# Stage-2 output channels of the 1.0x models, ShuffleNet paper Table 1.
_V1_STAGE2_AT_1X = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
# Stem channels by width, as the authors' release uses for g=3 and g=8.
_V1_STEM = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}
_V1_RELEASE = "authors' release README (megvii-model/ShuffleNet-Series)"
_V1_TABLE1 = "ShuffleNet paper, Table 1"
# (MACs, params, source) per (groups, width). The release ships g=3 and g=8;
# for the other groups only the paper's 1.0x complexities (Table 1) exist.
_V1_PUBLISHED = {
    (3, 0.5): (38e6, 0.7e6, _V1_RELEASE), (3, 1.0): (138e6, 1.9e6, _V1_RELEASE),
    (3, 1.5): (292e6, 3.4e6, _V1_RELEASE), (3, 2.0): (524e6, 5.4e6, _V1_RELEASE),
    (8, 0.5): (40e6, 1.0e6, _V1_RELEASE), (8, 1.0): (138e6, 2.4e6, _V1_RELEASE),
    (8, 1.5): (290e6, 4.3e6, _V1_RELEASE), (8, 2.0): (522e6, 6.5e6, _V1_RELEASE),
    (1, 1.0): (143e6, None, _V1_TABLE1), (2, 1.0): (140e6, None, _V1_TABLE1), (4, 1.0): (133e6, None, _V1_TABLE1),
}


def _width_tag(width: float) -> str:
    return f"x{width:.1f}".replace(".", "_")


def _round_to_multiple(value: float, divisor: int) -> int:
    """Nearest multiple of ``divisor``, halves rounding up, never below ``divisor``."""
    return max(divisor, int(value / divisor + 0.5) * divisor)


def _v1_channels(groups: int, width: float) -> tuple[int, int, int, int]:
    """(stem, stage2, stage3, stage4) for ShuffleNet v1.

    Stage 2 is the paper's 1.0x width times ``width``, rounded to a multiple of
    ``4 * groups`` so both the unit outputs and their bottlenecks (out // 4)
    split evenly into groups; stages 3 and 4 double it. The stem is the
    release's, rounded up to a multiple of ``groups`` because stage 2's first
    branch yields ``stage2 - stem`` channels from a grouped conv. This
    reproduces the release's g=3 and g=8 tables exactly.
    """
    stage2 = _round_to_multiple(_V1_STAGE2_AT_1X[groups] * width, 4 * groups)
    stem = -(-_V1_STEM[width] // groups) * groups
    return stem, stage2, 2 * stage2, 4 * stage2


def _as_int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _v2_spec(width: float) -> ModelSpec:
    macs, params = _V2_PAPER[width]
    return ModelSpec(name=f"shufflenet_v2_{_width_tag(width)}", family="v2", width=width, groups=None,
                     stage_channels=_V2_CHANNELS[width], paper_macs=int(macs), paper_params=int(params),
                     reference="ShuffleNet V2 paper, Table 5")


def _v1_spec(groups: int, width: float) -> ModelSpec:
    macs, params, reference = _V1_PUBLISHED.get((groups, width), (None, None, None))
    return ModelSpec(name=f"shufflenet_v1_g{groups}_{_width_tag(width)}", family="v1", width=width, groups=groups,
                     stage_channels=_v1_channels(groups, width), paper_macs=_as_int(macs),
                     paper_params=_as_int(params), reference=reference)


def _registry() -> dict[str, ModelSpec]:
    specs = [_v2_spec(w) for w in WIDTHS] + [_v1_spec(g, w) for g in V1_GROUPS for w in WIDTHS]
    return {spec.name: spec for spec in specs}


MODELS: dict[str, ModelSpec] = _registry()
DEFAULT_MODEL = "shufflenet_v2_x1_0"


# ---------------------------------------------------------------------------
# Public API


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; :class:`UserError` listing valid names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise unknown_name("model", name, MODELS) from None


def build_model(name: str, *, weights: str | os.PathLike | None = None, num_classes: int = 1000) -> nn.Module:
    """Build zoo model ``name`` in eval mode.

    ``weights`` is a file saved with ``torch.save`` holding a state_dict (or a
    checkpoint dict with one under ``"state_dict"``); it must match the model
    exactly (``strict=True``). Any problem with it is a one-line :class:`UserError`.
    Without ``weights`` the parameters are PyTorch's default random init drawn
    from a fixed seed, so every process (compiler, runtime check, report
    peers) builds the same network.
    """
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if spec.family == "v2":
            model = ShuffleNetV2(spec.stage_channels, spec.stage_repeats, num_classes)
        else:
            model = ShuffleNetV1(spec.stage_channels, spec.groups, spec.stage_repeats, num_classes)
    if weights is not None:
        state = _with_bn_counters(_read_state_dict(Path(weights)), model.state_dict())
        problem = _state_dict_mismatch(model.state_dict(), state)
        if problem:
            raise UserError(f"weights file {weights} does not match {name}: {problem}")
        model.load_state_dict(state, strict=True)
    return model.eval()


def count_macs_params(module: nn.Module, input_shape: Sequence[int] = INPUT_SHAPE) -> tuple[int, int]:
    """(multiply-adds, parameters) of ``module`` for one forward pass at ``input_shape``.

    MACs are measured, not looked up: a forward pass with hooks on every
    ``Conv2d`` (output elements x in_channels/groups x kernel area) and
    ``Linear`` (output elements x in_features). Like the papers, this ignores
    BN, ReLU, pooling and additions; MACs scale with the batch in
    ``input_shape``. Works on meta-device modules, and leaves the module's
    train/eval flags and BN statistics untouched.
    """
    macs = 0

    def conv_hook(conv: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        kernel_h, kernel_w = conv.kernel_size
        macs += output.numel() * (conv.in_channels // conv.groups) * kernel_h * kernel_w

    def linear_hook(linear: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        macs += output.numel() * linear.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in module.modules() if isinstance(m, nn.Linear)]
    modes = {m: m.training for m in module.modules()}
    reference = next(module.parameters(), torch.zeros(()))
    try:
        module.eval()  # train mode would update the BN running statistics
        with torch.no_grad():
            module(torch.zeros(tuple(input_shape), device=reference.device, dtype=reference.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        for m, training in modes.items():
            m.training = training
    return macs, sum(p.numel() for p in module.parameters())


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random but well-conditioned statistics and affine terms.

    Freshly built models have mean 0, var 1, weight 1, bias 0, which makes BN an
    identity and hides bugs in BN folding. Deterministic for a given ``seed``;
    returns ``module`` for chaining.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                continue
            n = bn.num_features
            for tensor, values in (
                (bn.running_mean, 0.1 * torch.randn(n, generator=gen)),
                (bn.running_var, 0.5 + 1.5 * torch.rand(n, generator=gen)),
                (bn.weight, 0.5 + torch.rand(n, generator=gen)),
                (bn.bias, 0.1 * torch.randn(n, generator=gen)),
            ):
                if tensor is not None:
                    tensor.copy_(values)
    return module


# ---------------------------------------------------------------------------
# Weights files

_LISTED = 3  # names shown per list in a mismatch message, to keep it one line


def _load_failure(err: BaseException, limit: int = 100) -> str:
    """A short reason from torch.load's (often multi-paragraph) exception."""
    text = str(err)
    if "Unsupported global" in text:
        return "it pickles Python objects, not only tensors; save module.state_dict() instead"
    # Past this marker is the unpickler's own reason; before it, generic advice.
    lines = [line.strip() for line in text.split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
    reason = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"weights file {path} {'is not a file' if path.exists() else 'not found'}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable or foreign files
        raise UserError(f"weights file {path} is not a PyTorch state_dict ({_load_failure(err)})") from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"weights file {path} holds a {type(data).__name__}, not a state_dict of tensors")
    return data


def _with_bn_counters(state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> dict:
    """``state`` plus the model's own ``num_batches_tracked`` where the file has none.

    Checkpoints from before PyTorch 0.4.1 (some published ImageNet weights)
    lack these counters; they never affect eval-mode outputs.
    """
    counters = {k: v for k, v in model_state.items() if k.endswith(".num_batches_tracked") and k not in state}
    return {**state, **counters}


def _listing(noun: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LISTED]) + (", ..." if len(items) > _LISTED else "")
    plural = "" if len(items) == 1 else "es" if noun.endswith("ch") else "s"
    return f"{len(items)} {noun}{plural} ({shown})"


def _state_dict_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """One line describing how ``found`` differs from ``expected``; empty if it fits."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k}: file {tuple(found[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in found and found[k].shape != v.shape]
    parts = [_listing(noun, items) for noun, items in
             (("missing key", missing), ("unexpected key", unexpected), ("shape mismatch", shapes)) if items]
    return ", ".join(parts)


# ---------------------------------------------------------------------------
# CLI


def _fmt(value: float | None, scale: float = 1e6) -> str:
    return "-" if value is None else f"{value / scale:.1f}"


def zoo_table() -> list[dict]:
    """One row per zoo model: registry data plus measured MACs/params at its input shape."""
    rows = []
    for spec in MODELS.values():
        # The meta device gives shapes without allocating or initialising weights.
        with torch.device("meta"):
            model = build_model(spec.name)
        macs, params = count_macs_params(model, spec.input_shape)
        rows.append({"name": spec.name, "family": spec.family, "groups": spec.groups, "width": spec.width,
                     "macs": macs, "params": params, "paper_macs": spec.paper_macs,
                     "paper_params": spec.paper_params, "stage_channels": list(spec.stage_channels)})
    return rows


def _render(rows: list[dict]) -> str:
    header = ("name", "family", "groups", "width", "MACs (M)", "params (M)", "paper MACs", "paper params")
    lines = [header] + [
        (r["name"], r["family"], "-" if r["groups"] is None else str(r["groups"]), f"{r['width']:.1f}x",
         _fmt(r["macs"]), _fmt(r["params"]), _fmt(r["paper_macs"]), _fmt(r["paper_params"]))
        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
                     for line in lines)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tvm_shuffle.models",
        description="List the ShuffleNet model zoo with multiply-adds and parameters measured from "
                    "each model at 1x3x224x224, next to the figures the authors published.")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {name, family, groups, width, macs, params, ...}")
    args = parser.parse_args(argv)
    rows = zoo_table()
    print("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]" if args.json else _render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
