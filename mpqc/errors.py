"""One exception hierarchy for the whole project.

Library code raises these with the offending layer, target, bit pair or path named and
with what the user can do about it; the CLI prints them as one line and exits with 2.
"""


class MpqcError(Exception):
    """Base of every error mpqc raises on purpose (bad input, missing files, devices)."""


class TargetError(MpqcError):
    """Unknown or malformed target, or a target this machine cannot build for."""


class DataError(MpqcError):
    """Dataset spec, path or file content that cannot be used."""


class ModelError(MpqcError):
    """Model spec, weights or checkpoint that cannot be used, or an unsupported layer."""


class ConfigError(MpqcError):
    """Bad configuration: bit-widths outside 1..8, impossible budget, unknown layer names."""


class BuildError(MpqcError):
    """Compiling, lowering or exporting a kernel or a network failed."""


class DeviceError(MpqcError):
    """A local or remote (RPC) device could not run or measure what was asked."""


def first_line(exc: BaseException) -> str:
    """The headline of a foreign exception (torch, pickle, importlib) for a one-line error."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def last_line(exc: BaseException) -> str:
    """TVM puts its traceback first and the message last."""
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__
