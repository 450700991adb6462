"""Lowering to the integer Program (no TVM build): structure, the integer reference
against the fake-quant model, and errors that name the op and the layer."""
import numpy as np
import pytest
import torch
from torch import nn

from mpqc.build.network import NetworkSpec, build_quantized_model
from mpqc.errors import BuildError, ConfigError, ModelError
from mpqc.lower import lower_to_program, run_reference
from mpqc.targets import load_target


@pytest.fixture(scope="module")
def target():
    return load_target("x86-avx2")


def _quantized(model: str, config: str):
    return build_quantized_model(NetworkSpec(model=model, config=config))


def test_democnn_program_fuses_bn_relu_and_requantization(target):
    model, shape = _quantized("democnn", "uniform:2,2")
    program = lower_to_program(model, shape, target)
    kinds = [(op.kind, op.name) for op in program.ops]
    assert kinds[0] == ("quantize_input", "conv1.input")
    convs = {op.name: op for op in program.ops if op.kind == "conv"}
    assert convs["conv1"].params["impl"] == "relax" and convs["linear"].params["impl"] == "relax"
    for name in ("conv2", "conv3", "conv4"):  # requantized to the next layer's codes in-kernel
        assert convs[name].params["impl"] == "bitserial"
        assert convs[name].params["spec"].epilogue.output == "codes"
        assert convs[name].params["spec"].epilogue.out_bits == 2
    # the last conv feeds pooling: raw accumulators, pooled and requantized in integers
    assert convs["conv5"].params["spec"].epilogue.output == "int32"
    assert [op.kind for op in program.ops].count("pool_requant") == 1
    assert program.output_shape == (1, 10)
    assert [(l.name, l.a_bits, l.w_bits) for l in program.layers][1] == ("conv2", 2, 2)


def test_resnet20_program_passes_block_input_codes_as_residual(target):
    model, shape = _quantized("resnet20", "uniform:1,1")
    program = lower_to_program(model, shape, target)
    convs = {op.name: op for op in program.ops if op.kind == "conv"}
    second = convs["layer1.0.conv2"]
    assert second.params["spec"].epilogue.residual
    # the residual is the residual stream's 8-bit codes; layer1.0.conv1 reads them
    # requantized to its 1 bit by a 32-bit recode op
    stream = program.values[second.inputs[1]]
    assert (stream.kind, stream.dtype, stream.bits) == ("codes", "uint8", 8)
    producers = {op.output: op for op in program.ops}
    recode = producers[convs["layer1.0.conv1"].inputs[0]]
    assert recode.kind == "requant" and recode.inputs == [second.inputs[1]]
    assert recode.params["int32"] and recode.params["out_bits"] == 1
    # the block's own output is the next stream: layer1.0.conv2 writes 8-bit codes
    assert second.params["spec"].epilogue.out_bits == 8
    assert producers[convs["layer1.1.conv2"].inputs[1]] is second
    shortcuts = [op for op in program.ops if op.kind == "shortcut"]
    assert [op.name for op in shortcuts] == ["layer2.0.shortcut", "layer3.0.shortcut"]
    assert convs["layer2.0.conv2"].inputs[1] == shortcuts[0].output


@pytest.mark.parametrize("model_name,config", [("democnn", "uniform:2,2"),
                                               ("resnet20", "uniform:4,4")])
def test_integer_reference_follows_the_fake_quant_model(target, model_name, config):
    """The integer program differs from the float fake-quant model only by fixed-point
    rounding: logits close, same top-1 on most inputs."""
    model, shape = _quantized(model_name, config)
    program = lower_to_program(model, shape, target, batch=8)
    images = np.random.default_rng(3).standard_normal((8, *shape)).astype(np.float32)
    ours = run_reference(program, images)[program.output]
    with torch.no_grad():
        theirs = model(torch.from_numpy(images)).numpy()
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= 0.15 * scale
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.75


def test_reference_exposes_every_layer_as_integers(target):
    model, shape = _quantized("democnn", "uniform:1,1")
    program = lower_to_program(model, shape, target)
    values = run_reference(program, np.zeros((1, *shape), np.float32))
    for op in program.ops:
        kind = program.values[op.output].kind
        out = values[op.output]
        assert out.dtype.kind in ("u", "i") if kind != "float" else out.dtype == np.float32


def test_unquantized_model_is_refused(target):
    from mpqc.models import build_model
    with pytest.raises(ModelError, match="quantize"):
        lower_to_program(build_model("democnn"), (1, 28, 28), target)


def test_unsupported_op_names_op_and_layer(target):
    model, shape = _quantized("democnn", "uniform:2,2")
    model.bn3 = nn.Sequential(model.bn3, nn.Sigmoid())  # an op with no integer lowering
    with pytest.raises(BuildError, match=r"bn3\.1.*Sigmoid"):
        lower_to_program(model, shape, target)


def test_bits_out_of_range_are_refused(target):
    model, shape = _quantized("democnn", "uniform:2,2")
    model.conv3.a_bits = 9
    with pytest.raises(BuildError, match=r"conv3.*activation bit-width 9"):
        lower_to_program(model, shape, target)


def test_config_naming_missing_layers_is_refused(tmp_path):
    config = tmp_path / "bits.json"
    config.write_text('{"conv2": [2, 2], "conv3": [2, 2], "conv4": [2, 2], "conv5": [2, 2], '
                      '"conv9": [1, 1]}')
    with pytest.raises(ConfigError, match="conv9"):
        _quantized("democnn", str(config))


def test_config_bits_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="outside 1..8"):
        _quantized("democnn", "uniform:0,2")


def test_rebuilt_reference_has_the_same_steps(monkeypatch):
    """Calibrating on > 1M activation values subsamples at random: rebuilding the model
    from the same spec (as verify does) must still give the very same steps."""
    from mpqc.build import network
    monkeypatch.setattr(network, "RANDOM_CALIBRATION", 70)
    spec = NetworkSpec(model="resnet20", config="uniform:2,2", calibration=70)
    steps = [[float(m.a_step.detach()) for m in build_quantized_model(spec)[0].modules()
              if hasattr(m, "a_step")] for _ in range(2)]
    assert steps[0] == steps[1]
