"""mpqc.quant: codes, fake-quant layers with LSQ gradients, quantize_model, checkpoints."""
import pytest
import torch
from torch import nn

from mpqc.errors import ConfigError, ModelError
from mpqc.models import build_model
from mpqc.quant import (QuantConv2d, QuantLinear, act_codes, load_quantized, quant_config,
                        quantize_model, save_quantized, weight_codes)
from mpqc.schedules.spec import weight_code_range


@pytest.mark.parametrize("bits", range(1, 9))
def test_codes_are_integers_in_range(bits):
    torch.manual_seed(bits)
    w, x = torch.randn(1000), torch.randn(1000) * 3
    wc, ac = weight_codes(w, 0.1, bits), act_codes(x.relu(), 0.05, bits)
    lo, hi = weight_code_range(bits)
    assert (wc == wc.round()).all() and wc.min() >= lo and wc.max() <= hi
    assert ac.min() >= 0 and ac.max() <= (1 << bits) - 1 and (ac == ac.round()).all()
    sc = act_codes(x, 0.05, bits, signed=True)
    assert sc.min() >= -(1 << (bits - 1)) and sc.max() <= (1 << (bits - 1)) - 1
    if bits == 1:
        assert set(wc.tolist()) == {-1.0, 1.0}
    assert act_codes(torch.tensor([0.125, 0.375]), 0.25, 4).tolist() == [0.0, 2.0]  # half to even


def test_bits_outside_1_to_8_are_refused():
    with pytest.raises(ConfigError, match="outside 1..8"):
        weight_codes(torch.zeros(2), 1.0, 9)
    with pytest.raises(ConfigError, match="outside 1..8"):
        QuantConv2d.from_float(nn.Conv2d(3, 4, 3), 0, 2)


@pytest.mark.parametrize("a_bits,w_bits", [(1, 1), (2, 3), (4, 4), (8, 8)])
def test_fake_quant_equals_codes_times_steps_and_steps_learn(a_bits, w_bits):
    torch.manual_seed(0)
    q = QuantConv2d.from_float(nn.Conv2d(8, 4, 3, padding=1, bias=False), a_bits, w_bits)
    x = torch.rand(2, 8, 6, 6) * 2
    with torch.no_grad():
        q.a_step.fill_(2.0 / ((1 << a_bits) - 1))  # the grid covers x, as calibration does
    y = q(x)
    integer = torch.nn.functional.conv2d(act_codes(x, q.a_step, a_bits),
                                         weight_codes(q.weight, q.w_step, w_bits), padding=1)
    torch.testing.assert_close(y, integer * q.a_step * q.w_step, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    for p in (q.weight, q.a_step, q.w_step):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_quantize_resnet20_first_last_8bit_and_shared_shortcut_input():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    calib = torch.randn(8, 3, 32, 32)
    q = quantize_model(model, (2, 3), calib=calib)
    assert model.conv1.__class__ is nn.Conv2d  # the original is untouched
    assert isinstance(q.conv1, QuantConv2d) and q.conv1.a_bits == 8 and q.conv1.a_signed
    assert isinstance(q.linear, QuantLinear) and q.linear.w_bits == 8
    config = quant_config(q)
    assert len(config) == 18 and set(config.values()) == {(2, 3)}
    # the block input reaches the shortcut as the residual stream's 8-bit codes, and
    # conv1 reads the same codes (which it requantizes to its own 2 bits)
    block = q.layer2[0]
    assert block.shortcut.residual_bits == 8
    seen = {}
    block.register_forward_pre_hook(lambda m, args: seen.update(raw=args[0]))
    block.shortcut.register_forward_hook(lambda m, args, out: seen.update(shortcut_in=args[0]))
    block.conv1.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        q(calib[:2])
    step = block.shortcut.residual_step
    expected = act_codes(seen["raw"], step, 8) * step
    torch.testing.assert_close(seen["shortcut_in"], expected)
    torch.testing.assert_close(seen["x"], expected)
    assert not torch.equal(seen["shortcut_in"], seen["raw"])
    assert "layer2.0.shortcut.residual_step" in q.state_dict()


def test_shortcut_at_the_readers_codes_without_residual_bits():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    calib = torch.randn(8, 3, 32, 32)
    q = quantize_model(model, (2, 3), calib=calib, residual_bits=None)
    block = q.layer2[0]
    assert not hasattr(block.shortcut, "residual_step")
    seen = {}
    block.shortcut.register_forward_hook(lambda m, args, out: seen.update(shortcut_in=args[0]))
    block.conv1.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        q(calib[:2])
    expected = act_codes(seen["x"], block.conv1.a_step, 2) * block.conv1.a_step
    torch.testing.assert_close(seen["shortcut_in"], expected)
    assert not torch.equal(seen["shortcut_in"], seen["x"])


def test_mixed_config_and_bad_configs():
    model = build_model("democnn").eval()
    layers = quantize_model(model, (1, 1), input_shape=(1, 28, 28))
    names = list(quant_config(layers))
    mixed = {n: (i % 4 + 1, 4 - i % 4) for i, n in enumerate(names)}
    assert quant_config(quantize_model(model, mixed, input_shape=(1, 28, 28))) == mixed
    with pytest.raises(ConfigError, match="not a quantizable layer"):
        quantize_model(model, {**mixed, "nope": (1, 1)}, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="outside 1..8"):
        quantize_model(model, {**mixed, names[0]: (9, 1)}, input_shape=(1, 28, 28))


def test_a_model_without_quantizable_layers_is_refused():
    tiny = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(ModelError, match="no quantizable layer"):
        quantize_model(tiny, (2, 2), input_shape=(1, 28, 28))


def test_checkpoint_round_trip_and_corruption(tmp_path):
    torch.manual_seed(0)
    q = quantize_model(build_model("democnn").eval(), (2, 2), calib=torch.rand(4, 1, 28, 28))
    with torch.no_grad():
        q.conv2.a_step.mul_(1.5)
    path = save_quantized(q, tmp_path / "q.pt", {"model": "democnn"})
    again, meta = load_quantized(path)
    assert meta["model"] == "democnn" and quant_config(again) == quant_config(q)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), q.eval()(x))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelError, match="corrupt"):
        load_quantized(path)
    with pytest.raises(ModelError, match="not found"):
        load_quantized(tmp_path / "missing.pt")
