"""mpqc: mixed-precision quantization compiler (PyTorch -> bit-serial TVM kernels)."""
from mpqc.errors import (BuildError, ConfigError, DataError, DeviceError, ModelError,
                         MpqcError, TargetError)

__version__ = "0.1.0"
__all__ = ["MpqcError", "TargetError", "DataError", "ModelError", "ConfigError",
           "BuildError", "DeviceError", "__version__"]
