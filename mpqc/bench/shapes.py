"""Named convolution shapes used by the kernel benchmarks (batch 1, square kernels)."""
from __future__ import annotations

from dataclasses import dataclass

from mpqc.errors import ConfigError
from mpqc.schedules.spec import conv_out_size


@dataclass(frozen=True)
class ConvShape:
    name: str
    h: int          # input height
    w: int          # input width
    cin: int
    cout: int
    kernel: int
    stride: int = 1
    padding: int = 0

    def __post_init__(self):
        dims = (self.h, self.w, self.cin, self.cout, self.kernel, self.stride)
        if min(dims) < 1 or self.padding < 0 or self.out_h < 1 or self.out_w < 1:
            raise ConfigError(f"conv shape {self.name!r} is impossible: {self}")

    @property
    def out_h(self) -> int:
        return conv_out_size(self.h, self.kernel, self.stride, self.padding)

    @property
    def out_w(self) -> int:
        return conv_out_size(self.w, self.kernel, self.stride, self.padding)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one image (batch 1)."""
        return self.out_h * self.out_w * self.cout * self.cin * self.kernel * self.kernel


def _c3(name: str, hw: int, cin: int, cout: int, stride: int = 1) -> ConvShape:
    return ConvShape(name, hw, hw, cin, cout, kernel=3, stride=stride, padding=1)


SHAPES: dict[str, ConvShape] = {s.name: s for s in (
    _c3("resnet18.layer1", 56, 64, 64),
    _c3("resnet18.layer2", 28, 128, 128),
    _c3("resnet18.layer3", 14, 256, 256),
    _c3("resnet18.layer4", 7, 512, 512),
    _c3("resnet20.layer1", 32, 16, 16),
    _c3("resnet20.layer2", 16, 32, 32),
    _c3("resnet20.layer3", 8, 64, 64),
    _c3("resnet20.layer2.down", 32, 16, 32, stride=2),
    _c3("resnet20.layer3.down", 16, 32, 64, stride=2),
)}


def get_shape(name: str) -> ConvShape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ConfigError(f"unknown conv shape {name!r}; known: {', '.join(SHAPES)}") from None
