"""Deployable libraries: compile (lower + build + manifest), verify, bench, ONNX export."""

# Bumped whenever the way a network library is built changes its speed (the VM's
# execution mode, the default pipeline's passes): glue measured on libraries of another
# format is stale, and the pipeline rebuilds its library. 2: the VM in compiled mode.
# 3: int32 requantization also for layers with a near-dead channel (schedules/requant.py).
# 4: the input quantizer inside the first conv, the pooling as a scheduled prim func.
# 5: small kernel buffers on the stack (schedules/tir_pipeline.py).
# 6: shortcuts carry 8-bit codes of their own, requantized for the layer reading them.
LIBRARY_FORMAT = 6
