"""EBS supernet: every searchable layer holds one meta weight and, per candidate
bit-width, its own quantizer step; strengths alpha (weights) and beta (activations) mix
the quantized tensors before ONE convolution, so cost and memory do not grow with the
number of candidates."""
from mpqc.supernet.mixed import MixedConv2d, MixedLinear, is_mixed
from mpqc.supernet.build import SupernetReport, make_supernet

__all__ = ["MixedConv2d", "MixedLinear", "is_mixed", "make_supernet", "SupernetReport"]
