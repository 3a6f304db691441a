"""The model zoo: architectures, measured complexity vs the papers, weights files, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from tvm_shuffle import models
from tvm_shuffle.errors import UserError
from tvm_shuffle.models import MODELS, build_model, count_macs_params

SMALL_INPUT = (1, 3, 64, 64)
PUBLISHED = [name for name, spec in MODELS.items() if spec.paper_macs is not None]


def _meta_counts(name: str) -> tuple[int, int]:
    with torch.device("meta"):
        module = build_model(name)
    return count_macs_params(module, MODELS[name].input_shape)


def _randomized(name: str, seed: int = 0) -> torch.nn.Module:
    return models.randomize_batchnorm(build_model(name), seed=seed)


def test_registry_is_plain_data():
    assert models.DEFAULT_MODEL in MODELS
    assert len(MODELS) == 4 + 5 * 4
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.family in ("v1", "v2")
        assert (spec.groups is None) == (spec.family == "v2")
        assert spec.input_shape == (1, 3, 224, 224) and spec.num_classes == 1000
        assert spec.stage_repeats == (4, 8, 4)
        with pytest.raises(AttributeError):
            spec.width = 3.0  # frozen


@pytest.mark.parametrize("name", list(MODELS))
def test_builds_in_eval_mode_and_classifies(name):
    module = build_model(name)
    assert not any(m.training for m in module.modules())
    with torch.no_grad():
        assert module(torch.randn(SMALL_INPUT)).shape == (1, 1000)


def test_num_classes():
    with torch.no_grad():
        assert build_model("shufflenet_v1_g3_x0_5", num_classes=10)(torch.randn(SMALL_INPUT)).shape == (1, 10)


@pytest.mark.parametrize("name", PUBLISHED)
def test_macs_and_params_match_published_figures(name):
    spec = MODELS[name]
    macs, params = _meta_counts(name)
    rel = 0.02 if spec.family == "v2" else 0.03
    assert macs == pytest.approx(spec.paper_macs, rel=rel)
    if spec.paper_params is not None:
        # Published params are rounded to 0.1M, which alone can exceed 2% on small models.
        assert abs(params - spec.paper_params) <= max(rel * spec.paper_params, 0.05e6)


def test_v1_g3_x1_0_matches_authors_release():
    macs, _ = _meta_counts("shufflenet_v1_g3_x1_0")
    assert macs == pytest.approx(138e6, rel=0.03)


@pytest.mark.parametrize("name, params", [
    ("shufflenet_v2_x0_5", 1_366_792), ("shufflenet_v2_x1_0", 2_278_604),
    ("shufflenet_v2_x1_5", 3_503_624), ("shufflenet_v2_x2_0", 7_393_996),
])
def test_v2_params_equal_torchvision(name, params):
    assert _meta_counts(name)[1] == params


def test_v2_state_dict_uses_torchvision_names():
    state = build_model("shufflenet_v2_x1_0").state_dict()
    expected = {
        "conv1.0.weight": (24, 3, 3, 3),
        "conv1.1.running_mean": (24,),
        "stage2.0.branch1.0.weight": (24, 1, 3, 3),
        "stage2.0.branch1.2.weight": (58, 24, 1, 1),
        "stage2.0.branch2.0.weight": (58, 24, 1, 1),
        "stage2.1.branch2.0.weight": (58, 58, 1, 1),
        "stage3.7.branch2.3.weight": (116, 1, 3, 3),
        "stage4.0.branch1.3.num_batches_tracked": (),
        "stage4.3.branch2.6.running_var": (232,),
        "conv5.0.weight": (1024, 464, 1, 1),
        "fc.weight": (1000, 1024),
        "fc.bias": (1000,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    # conv1 6 + 3 stride-2 units x 30 + 13 stride-1 units x 18 + conv5 6 + fc 2
    assert len(state) == 338
    assert not any(k.startswith(f"stage{s}.{i}.branch1") for s, i in [(2, 1), (3, 7), (4, 3)] for k in state)


@pytest.mark.parametrize("groups, width, channels", [
    (3, 0.5, (12, 120, 240, 480)), (3, 1.0, (24, 240, 480, 960)),
    (3, 1.5, (24, 360, 720, 1440)), (3, 2.0, (48, 480, 960, 1920)),
    (8, 0.5, (16, 192, 384, 768)), (8, 1.0, (24, 384, 768, 1536)),
    (8, 1.5, (24, 576, 1152, 2304)), (8, 2.0, (48, 768, 1536, 3072)),
])
def test_v1_channels_match_authors_release(groups, width, channels):
    assert MODELS[f"shufflenet_v1_g{groups}_{models._width_tag(width)}"].stage_channels == channels


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.family == "v1"])
def test_v1_channels_split_into_groups(name):
    spec = MODELS[name]
    stem, *stages = spec.stage_channels
    g = spec.groups
    assert all(c % g == 0 and (c // 4) % g == 0 for c in stages)
    assert (stages[0] - stem) % g == 0  # the first unit's grouped branch


def test_v1_first_pointwise_conv_is_not_grouped():
    module = build_model("shufflenet_v1_g3_x1_0")
    first, second = module.stage2[0], module.stage2[1]
    assert first.compress[0].groups == 1 and first.shuffle_groups == 1
    assert first.expand[0].groups == 3
    assert second.compress[0].groups == 3 and second.shuffle_groups == 3
    assert module.stage3[0].compress[0].groups == 3
    assert tuple(first.expand[0].weight.shape) == (240 - 24, 60 // 3, 1, 1)


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert models.channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert models.channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_count_macs_params_counts_conv_and_linear_and_keeps_state():
    module = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False), torch.nn.BatchNorm2d(8),
        torch.nn.Flatten(), torch.nn.Linear(8 * 5 * 5, 10))
    module.train()
    before = module[1].running_mean.clone()
    macs, params = count_macs_params(module, (1, 4, 5, 5))
    assert macs == 8 * 5 * 5 * (4 // 2) * 9 + 10 * 200
    assert params == 8 * 2 * 9 + 2 * 8 + 200 * 10 + 10
    assert module.training and module[1].training
    assert torch.equal(module[1].running_mean, before)


def test_randomize_batchnorm_is_deterministic_and_sane():
    a, b, c = _randomized("shufflenet_v2_x0_5", 1), _randomized("shufflenet_v2_x0_5", 1), _randomized("shufflenet_v2_x0_5", 2)
    bns = [m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert 0.5 <= bn.running_var.min() and bn.running_var.max() <= 2.0
        assert 0.5 <= bn.weight.min() and bn.weight.max() <= 1.5
        assert bn.running_mean.abs().max() < 1.0 and bn.bias.abs().max() < 1.0
    bn_keys = [k for k in a.state_dict() if "running" in k]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in bn_keys)
    assert not all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in bn_keys)


@pytest.mark.parametrize("wrap", [False, True], ids=["state_dict", "checkpoint"])
def test_weights_round_trip(tmp_path, wrap):
    source = _randomized("shufflenet_v1_g3_x0_5")
    path = tmp_path / "w.pt"
    torch.save({"state_dict": source.state_dict()} if wrap else source.state_dict(), path)
    loaded = build_model("shufflenet_v1_g3_x0_5", weights=path)
    x = torch.randn(SMALL_INPUT)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    assert not loaded.training


def test_weights_without_bn_counters_load(tmp_path):
    # Old checkpoints (e.g. some torchvision ImageNet files) predate num_batches_tracked.
    source = _randomized("shufflenet_v2_x0_5")
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    x = torch.randn(SMALL_INPUT)
    with torch.no_grad():
        assert torch.equal(build_model("shufflenet_v2_x0_5", weights=path)(x), source(x))


def test_weights_from_another_width_are_rejected_in_one_line(tmp_path):
    path = tmp_path / "x1_0.pt"
    torch.save(build_model("shufflenet_v2_x1_0").state_dict(), path)
    with pytest.raises(UserError) as err:
        build_model("shufflenet_v2_x0_5", weights=path)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400
    assert "does not match shufflenet_v2_x0_5" in message and "shape mismatches" in message
    assert "stage2.0.branch1.2.weight: file (58, 24, 1, 1) vs model (24, 24, 1, 1)" in message


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    state = build_model("shufflenet_v2_x0_5").state_dict()
    state["extra.weight"] = state.pop("conv1.0.weight")
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"1 missing key \(conv1\.0\.weight\), 1 unexpected key \(extra\.weight\)$"):
        build_model("shufflenet_v2_x0_5", weights=path)


def test_missing_file_and_non_checkpoint_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_model("shufflenet_v2_x0_5", weights=tmp_path / "nope.pt")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\nsecond line\n")
    with pytest.raises(UserError) as err:
        build_model("shufflenet_v2_x0_5", weights=text)
    assert "\n" not in str(err.value) and "is not a PyTorch state_dict" in str(err.value)
    pickled_module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled_module)
    with pytest.raises(UserError, match=r"save module\.state_dict\(\) instead"):
        build_model("shufflenet_v2_x0_5", weights=pickled_module)
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(UserError, match="not a state_dict"):
        build_model("shufflenet_v2_x0_5", weights=listing)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match="unknown model 'shufflenet_v3'.*shufflenet_v2_x1_0"):
        build_model("shufflenet_v3")


def test_exports_with_torch_export():
    program = torch.export.export(build_model("shufflenet_v1_g3_x0_5"), (torch.randn(SMALL_INPUT),))
    targets = {str(node.target) for node in program.graph.nodes}
    assert any("transpose" in t for t in targets)


def test_cli_json(capsys):
    assert models.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list(MODELS)
    assert all(isinstance(row["macs"], int) and isinstance(row["params"], int) for row in rows)


def test_cli_table(capsys):
    assert models.main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["name", "family", "groups", "width"]
    assert all(name in out for name in MODELS)


def test_default_weights_are_the_same_in_every_process():
    """The compiler and the numerics check build the model separately; they must agree."""
    torch.manual_seed(123)
    a = build_model("shufflenet_v2_x0_5").state_dict()
    torch.manual_seed(456)
    b = build_model("shufflenet_v2_x0_5").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
