"""Models: built-in shapes, the pretrained checkpoint, layer descriptions, user specs, errors."""
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from mpqc.errors import ModelError, MpqcError
from mpqc.models import (BUILTIN_MODELS, build_model, describe_layers, layers_from_json,
                         layers_to_json, load_weights)
from mpqc.models.layers import FIRST_LAYER_REASON, LAST_LAYER_REASON

CHECKPOINT = (Path(__file__).resolve().parents[1].parent / "shared" / "models"
              / "resnet20-12fca82f.th")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def pretrained_path() -> Path:
    if not CHECKPOINT.exists():
        pytest.skip("../shared/models/resnet20-12fca82f.th not present "
                    "(only in the project's CI/dev checkout)")
    return CHECKPOINT


def _input(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *BUILTIN_MODELS[name].input_shape)


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_builtin_output_shapes(name):
    info = BUILTIN_MODELS[name]
    model = build_model(name).eval()
    assert model(_input(name)).shape == (2, info.num_classes)
    assert build_model(name, num_classes=7).eval()(_input(name)).shape == (2, 7)
    assert info.default_data in ("mnist", "cifar10")


def test_resnet20_structure():
    model = build_model("resnet20")
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6  # 0.27M (paper)
    shortcut = model.layer2[0].shortcut  # option A: x[:, :, ::2, ::2] + zero channels
    x = torch.randn(1, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()
    assert isinstance(model.layer1[0].shortcut, nn.Identity)


def test_pretrained_checkpoint_loads_strictly(pretrained_path):
    raw = torch.load(pretrained_path, map_location="cpu", weights_only=True)["state_dict"]
    model = build_model("resnet20")
    missing, unexpected = model.load_state_dict(
        {k.removeprefix("module."): v for k, v in raw.items()}, strict=True)
    assert not missing and not unexpected
    model = build_model("resnet20")
    load_weights(model, pretrained_path)
    assert torch.equal(model.linear.weight, raw["module.linear.weight"])


def test_pretrained_checkpoint_is_the_trained_model(pretrained_path):
    fresh, trained = build_model("resnet20").eval(), build_model("resnet20").eval()
    load_weights(trained, pretrained_path)
    assert not torch.allclose(trained.bn1.running_mean, torch.zeros(16))
    assert not torch.allclose(trained.layer3[2].bn2.running_var, torch.ones(64))
    x = _input("resnet20", batch=4)
    with torch.no_grad():
        out_trained, out_fresh = trained(x), fresh(x)
    assert not torch.allclose(out_trained, out_fresh, atol=1e-3)
    assert torch.isfinite(out_trained).all()


def test_load_weights_accepts_containers_and_dataparallel_prefix(tmp_path):
    source = build_model("democnn")
    state = source.state_dict()
    prefixed = {f"module.{k}": v for k, v in state.items()}
    for i, obj in enumerate([state, {"state_dict": prefixed}, {"model": state, "epoch": 3}]):
        path = tmp_path / f"w{i}.pt"
        torch.save(obj, path)
        target = build_model("democnn")
        load_weights(target, path)
        assert torch.equal(target.conv3.weight, source.conv3.weight)


def test_describe_layers_resnet20():
    layers = describe_layers(build_model("resnet20"), (3, 32, 32))
    assert len(layers) == 20  # conv1 + 9 blocks x 2 convs + linear
    assert [l.kind for l in layers] == ["conv2d"] * 19 + ["linear"]
    assert (layers[0].name, layers[0].reason) == ("conv1", FIRST_LAYER_REASON)
    assert (layers[-1].name, layers[-1].reason) == ("linear", LAST_LAYER_REASON)
    assert not layers[0].quantizable and not layers[-1].quantizable
    assert sum(l.quantizable for l in layers) == 18
    assert all(l.reason == "" for l in layers[1:-1])
    down = next(l for l in layers if l.name == "layer2.0.conv1")
    assert (down.in_channels, down.out_channels, down.stride) == (16, 32, (2, 2))
    assert (down.in_hw, down.out_hw, down.padding) == ((32, 32), (16, 16), (1, 1))
    assert down.macs == 16 * 16 * 32 * 16 * 9
    assert sum(l.macs for l in layers) == 40_551_040  # the usual "41M MACs" of ResNet-20
    every = describe_layers(build_model("resnet20"), (3, 32, 32), first_last_8bit=False)
    assert all(l.quantizable for l in every)


def test_describe_layers_democnn_channels_pack():
    layers = describe_layers(build_model("democnn"), (1, 28, 28))
    assert [l.name for l in layers] == ["conv1", "conv2", "conv3", "conv4", "conv5", "linear"]
    quantizable = [l for l in layers if l.quantizable]
    assert [l.name for l in quantizable] == ["conv2", "conv3", "conv4", "conv5"]
    assert all(l.in_channels % 8 == 0 and l.out_channels % 8 == 0 for l in quantizable)
    assert 2e6 < sum(l.macs for l in layers) < 6e6  # small enough for a CPU epoch
    assert layers[-1].in_channels == 64 and layers[-1].out_channels == 10


def test_describe_layers_keeps_mode_and_statistics():
    model = build_model("resnet20").train()
    before = model.bn1.running_mean.clone()
    describe_layers(model, (3, 32, 32))
    assert model.training and model.layer1[0].bn1.training
    assert torch.equal(model.bn1.running_mean, before)


def test_unsupported_convolutions_are_reported():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),          # depthwise
        nn.Conv2d(16, 16, 3, padding=2, dilation=2),
        nn.Conv2d(16, 16, (1, 3), padding=(0, 1)),
        nn.Conv2d(16, 16, 3, stride=3, padding=1),
        nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    layers = describe_layers(model, (3, 12, 12))
    reasons = [l.reason for l in layers]
    assert [l.quantizable for l in layers] == [False] * 6 + [True, False]
    assert reasons[1] == "grouped convolution (groups=16) is not supported by the bit-serial kernels"
    assert layers[1].groups == 16 and layers[1].macs == 12 * 12 * 16 * 1 * 9
    assert "dilat" in reasons[2]
    assert "kernel 1x3" in reasons[3]
    assert "stride (3, 3)" in reasons[4]
    assert "reflect" in reasons[5]


def test_layers_json_roundtrip():
    import json
    layers = describe_layers(build_model("democnn"), (1, 28, 28))
    rows = json.loads(json.dumps(layers_to_json(layers)))
    assert rows[1]["kernel"] == [3, 3] and rows[1]["quantizable"] is True
    assert layers_from_json(rows) == layers


@pytest.mark.parametrize("shape", [(1, 28), (0, 28, 28), "abc"])
def test_describe_layers_bad_input_shape(shape):
    with pytest.raises(ModelError, match="input_shape"):
        describe_layers(build_model("democnn"), shape)


def test_describe_layers_wrong_input_channels():
    with pytest.raises(ModelError, match=r"\(1, 3, 28, 28\)"):
        describe_layers(build_model("democnn"), (3, 28, 28))


def test_describe_layers_reused_layer():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x.flatten(1)))

    with pytest.raises(ModelError, match="'fc' runs 2 times"):
        describe_layers(Twice(), (1, 2, 2))


def _write_user_module(tmp_path, monkeypatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_user_spec_builds_factory(tmp_path, monkeypatch):
    _write_user_module(tmp_path, monkeypatch, "mpqc_user_net", """
        from torch import nn

        def tiny(num_classes=10):
            return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, num_classes))

        def fixed():
            return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

        def fixed_kwargs(**kwargs):
            return nn.Sequential(nn.Flatten(), nn.Linear(16, kwargs.get("num_classes", 2)))
    """)
    model = build_model("mpqc_user_net:tiny")
    assert model(torch.zeros(2, 1, 6, 6)).shape == (2, 10)
    assert build_model("mpqc_user_net:tiny", num_classes=5)(torch.zeros(1, 1, 6, 6)).shape == (1, 5)
    assert build_model("mpqc_user_net:fixed", num_classes=3)[1].out_features == 3
    assert build_model("mpqc_user_net:fixed_kwargs", num_classes=6)[1].out_features == 6
    with pytest.raises(ModelError, match="last linear layer has 3 outputs"):
        build_model("mpqc_user_net:fixed", num_classes=10)


def test_user_spec_errors(tmp_path, monkeypatch):
    _write_user_module(tmp_path, monkeypatch, "mpqc_user_bad", """
        import torch
        NOT_CALLABLE = 3

        def returns_tensor():
            return torch.zeros(3)

        def raises():
            raise RuntimeError("no GPU here")
    """)
    _write_user_module(tmp_path, monkeypatch, "mpqc_user_broken", "import no_such_dependency_xyz\n")
    cases = {
        "mpqc_no_such_module_xyz:net": "cannot import module 'mpqc_no_such_module_xyz'",
        "mpqc_user_broken:net": "cannot import module 'mpqc_user_broken'.*no_such_dependency_xyz",
        "mpqc_user_bad:missing": "has no attribute 'missing'",
        "mpqc_user_bad:NOT_CALLABLE": "not a callable",
        "mpqc_user_bad:returns_tensor": "returned a Tensor, not a torch.nn.Module",
        "mpqc_user_bad:raises": "RuntimeError: no GPU here",
        "mpqc_user_bad:": "malformed",
        "a b:c": "malformed",
    }
    for spec, message in cases.items():
        with pytest.raises(ModelError, match=message) as info:
            build_model(spec)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec", ["resnet18", "", "ResNet20"])
def test_unknown_model_lists_choices(spec):
    with pytest.raises(ModelError) as info:
        build_model(spec)
    message = str(info.value)
    assert "resnet20" in message and "democnn" in message
    assert "package.module:function" in message
    assert isinstance(info.value, MpqcError)


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ModelError, match="num_classes"):
        build_model("resnet20", num_classes=num_classes)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.th"
    with pytest.raises(ModelError, match="nope.th not found"):
        load_weights(build_model("resnet20"), missing)
    with pytest.raises(ModelError, match="not found"):
        load_weights(build_model("resnet20"), tmp_path)  # a directory


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 64, b"PK\x03\x04garbage"])
def test_corrupt_weights_file(tmp_path, content):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="corrupt.pt cannot be read") as info:
        load_weights(build_model("democnn"), path)
    assert "\n" not in str(info.value)


def test_weights_with_code_are_refused(tmp_path):
    path = tmp_path / "pickled_model.pt"
    torch.save(build_model("democnn"), path)  # a whole pickled module: weights_only refuses
    with pytest.raises(ModelError, match=r"pickled_model.pt cannot be read.*pickles .*DemoCNN"):
        load_weights(build_model("democnn"), path)


def test_weights_that_are_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ModelError, match="holds no state_dict"):
        load_weights(build_model("democnn"), path)


def test_wrong_keys_and_shapes(tmp_path):
    path = tmp_path / "demo.pt"
    torch.save(build_model("democnn").state_dict(), path)
    with pytest.raises(ModelError, match=r"demo.pt does not match ResNetCifar.*missing keys "
                                         r"\(layer1\.0\.conv1\.weight") as info:
        load_weights(build_model("resnet20"), path)
    assert "unexpected keys (conv2.weight" in str(info.value)

    with pytest.raises(ModelError, match=r"shape mismatches \(linear.weight \(10, 64\) vs "
                                         r"model \(7, 64\)"):
        load_weights(build_model("democnn", num_classes=7), path)

    state = build_model("democnn").state_dict()
    del state["bn2.running_var"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, path)
    target = build_model("democnn")
    before = target.conv1.weight.clone()
    with pytest.raises(ModelError, match=r"1 missing keys \(bn2.running_var\); "
                                         r"1 unexpected keys \(extra.weight\)"):
        load_weights(target, path)
    assert torch.equal(target.conv1.weight, before)  # nothing half-loaded


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_torch_export_and_fx(name):
    model = build_model(name).eval()
    x = _input(name, batch=1)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any("conv2d" in t for t in targets)
    traced = torch.fx.symbolic_trace(model)  # the supernet wraps layers through torch.fx
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)
