"""make_supernet on a user model: layers the kernels cannot run are reported, not hidden."""
import textwrap

import pytest
import torch
from torch import nn

from mpqc.errors import ConfigError
from mpqc.models import build_model
from mpqc.quant import QuantConv2d, QuantLinear
from mpqc.supernet import MixedConv2d, MixedLinear, is_mixed, make_supernet

USER_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
            self.body = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.hidden = nn.Linear(16, 16)
            self.head = nn.Linear(16, num_classes)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = torch.relu(self.depthwise(x))
            x = torch.relu(self.dilated(x))
            x = torch.relu(self.body(x)).mean(dim=(2, 3))
            return self.head(torch.relu(self.hidden(x)))

    def make(num_classes=10):
        return Net(num_classes)
""")


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    (tmp_path / "my_user_net.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    return build_model("my_user_net:make", num_classes=10)


def test_user_model_from_a_spec_keeps_unsupported_layers_float_and_says_why(user_model):
    calib = torch.randn(4, 3, 16, 16)
    net, report = make_supernet(user_model, (1, 2, 4), (2, 3), calib=calib)
    assert report.searchable == ("body", "hidden")
    fixed = dict(report.fixed)
    assert set(fixed) == {"stem", "depthwise", "dilated", "head"}
    assert "grouped convolution" in fixed["depthwise"] and fixed["depthwise"].startswith("stays float")
    assert "dilated convolution" in fixed["dilated"]
    assert type(net.depthwise) is nn.Conv2d and type(net.dilated) is nn.Conv2d
    assert isinstance(net.stem, QuantConv2d) and net.stem.a_bits == 8 and net.stem.a_signed
    assert isinstance(net.head, QuantLinear) and net.head.w_bits == 8
    assert isinstance(net.body, MixedConv2d) and isinstance(net.hidden, MixedLinear)
    assert net.body.w_candidates == (1, 2, 4) and net.body.a_candidates == (2, 3)
    assert net.mpqc_input_shape == (3, 16, 16)
    # the original model is left float
    assert all(not is_mixed(m) and not isinstance(m, QuantConv2d) for m in user_model.modules())
    net.train()
    torch.nn.functional.cross_entropy(net(calib), torch.tensor([0, 1, 2, 3])).backward()
    for layer in (net.body, net.hidden):
        for p in (layer.alpha, layer.beta, layer.w_steps, layer.a_steps):
            assert p.grad is not None and p.grad.abs().sum() > 0


def test_strengths_mix_the_candidates_before_one_convolution():
    """W~ = sum p_b Q_b(W), X~ = sum q_b Q_b(X), then one conv: the output is the conv
    of the two mixtures (not a mixture of per-candidate convolutions)."""
    torch.manual_seed(3)
    layer = MixedConv2d.from_float(nn.Conv2d(4, 6, 3, padding=1), (1, 2, 3), (2, 4))
    with torch.no_grad():
        layer.alpha.copy_(torch.tensor([0.1, 0.7, -0.3]))
        layer.beta.copy_(torch.tensor([0.4, -0.2]))
    x = torch.rand(2, 4, 5, 5) * 3
    y = layer(x)
    want = torch.nn.functional.conv2d(layer.quantized_input(x), layer.quantized_weight(),
                                      layer.bias, padding=1)
    torch.testing.assert_close(y, want)
    q, p = layer.probabilities()
    assert q.detach().sum().item() == pytest.approx(1.0) == p.detach().sum().item()
    # and the mixture is the p/q-weighted sum of the candidates' fake-quant tensors
    from mpqc.quant.layers import fake_quant_act, fake_quant_weight
    with torch.no_grad():
        wq = sum(p[i] * fake_quant_weight(layer._reshaped(layer.weight), layer.w_steps[i], b)
                 for i, b in enumerate((1, 2, 3)))
        xq = sum(q[i] * fake_quant_act(x, layer.a_steps[i], b) for i, b in enumerate((2, 4)))
    torch.testing.assert_close(layer.quantized_weight(), wq)
    torch.testing.assert_close(layer.quantized_input(x), xq)


def test_input_shape_comes_from_the_calibration_batch_or_is_asked_for():
    model = build_model("democnn").eval()
    net, report = make_supernet(model, (2, 4), (2, 4), calib=torch.rand(2, 1, 28, 28))
    assert report.searchable == ("conv2", "conv3", "conv4", "conv5")
    with pytest.raises(ConfigError, match="input shape"):
        make_supernet(model, (2, 4), (2, 4))
    with pytest.raises(ConfigError, match="outside 1..8"):
        make_supernet(model, (2, 9), (2, 4), (1, 28, 28))
    with pytest.raises(ConfigError, match="outside 1..8"):
        make_supernet(model, (2, 4), (2, 4), (1, 28, 28), first_last_bits=0)
