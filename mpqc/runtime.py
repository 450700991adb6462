"""Running a compiled mpqc library: `load(path)` -> a callable that maps a float NCHW
batch (normalised as the model expects) to logits, on this machine or on a remote
device over TVM RPC.

    lib = mpqc.runtime.load("resnet20-a2w2.so")
    logits = lib(images)            # (N, 10) float32
    layers = lib.debug(images)      # {name: integers} of every op, for verification

The library is built for a fixed batch (the manifest's, usually 1); larger batches run
in chunks, a smaller last chunk is padded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mpqc.errors import ConfigError, DeviceError, last_line


class Library:
    def __init__(self, path: Path, manifest: dict, module, device, session=None):
        from tvm import relax
        self.path = path
        self.manifest = manifest
        self._module = module
        self._vm = relax.VirtualMachine(module, device)
        self._dev = device
        self._session = session  # keeps a remote session alive
        self.batch = int(manifest["batch"])
        self.input_shape = tuple(manifest["input"]["shape"][1:])
        self.num_classes = int(manifest["output"]["shape"][-1])

    @property
    def remote(self) -> bool:
        return self._session is not None

    def _chunks(self, images):
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ConfigError(f"{self.path.name} takes images of shape (N, "
                              f"{', '.join(map(str, self.input_shape))}), got {images.shape}")
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            real = len(chunk)
            if real < self.batch:
                pad = np.zeros((self.batch - real, *self.input_shape), np.float32)
                chunk = np.concatenate([chunk, pad])
            yield np.ascontiguousarray(chunk), real

    def _run(self, func: str, chunk: np.ndarray):
        import tvm
        try:
            return self._vm[func](tvm.runtime.tensor(chunk, self._dev))
        except Exception as exc:
            raise DeviceError(f"running {self.path.name} ({func}) failed: "
                              f"{last_line(exc)}") from exc

    def __call__(self, images) -> np.ndarray:
        outs = [self._run("main", chunk).numpy()[:real] for chunk, real in self._chunks(images)]
        return np.concatenate(outs)

    def debug(self, images) -> list[np.ndarray]:
        """Every op's output (manifest 'debug_values' order), batch concatenated."""
        import tvm
        parts = []
        for chunk, real in self._chunks(images):
            # set_input/invoke_stateful/get_outputs: a tuple result also comes back over RPC
            try:
                self._vm.set_input("debug", tvm.runtime.tensor(chunk, self._dev))
                self._vm.invoke_stateful("debug")
                result = self._vm.get_outputs("debug")
            except Exception as exc:
                raise DeviceError(f"running {self.path.name} (debug) failed: "
                                  f"{last_line(exc)}") from exc
            parts.append([r.numpy()[:real] for r in result])
        return [np.concatenate(column) for column in zip(*parts)]

    def time(self, repeats: int = 30, threads: int | None = None):
        """Timing (mpqc.bench.timing) of one batch on this machine."""
        from mpqc.bench.timing import pinned_threads, time_tvm
        import tvm
        if self.remote:
            raise DeviceError("timing over RPC is not reported (boards may be emulated); "
                              "time the library on the device itself")
        x = tvm.runtime.tensor(np.zeros((self.batch, *self.input_shape), np.float32), self._dev)
        self._vm.set_input("main", x)
        with pinned_threads(threads or 1):
            return time_tvm(self._vm.module, "invoke_stateful", self._dev, ["main"],
                            repeats=repeats)

    def profile(self, repeats: int = 30, threads: int | None = None) -> dict[str, float]:
        """{kernel: median ms} of every kernel the network calls (bit-packing, bit-serial
        and direct convolutions), each timed alone on zero inputs of its argument shapes
        from the manifest, as the latency model measures kernels: their time does not
        depend on the data. The network's total is time()."""
        import tvm
        from mpqc.bench.timing import pinned_threads, time_tvm
        if self.remote:
            raise DeviceError("profiling over RPC is not supported; profile on the device")
        kernels = self.manifest.get("kernels")
        if not kernels:
            raise DeviceError(f"{self.path.name}: its manifest lists no kernels (built by an "
                              "older mpqc); rebuild it with `mpqc compile`")
        code = self._code_module()
        out = {}
        with pinned_threads(threads or 1):
            for name, signature in kernels.items():
                args = [tvm.runtime.tensor(np.zeros(shape, dtype), self._dev)
                        for shape, dtype in signature]
                try:
                    out[name] = time_tvm(code, name, self._dev, args, repeats=repeats).median_ms
                except Exception as exc:
                    raise DeviceError(f"{self.path.name}: timing kernel {name} failed: "
                                      f"{last_line(exc)}") from exc
        return out

    def _code_module(self):
        """The module that holds the compiled kernels (the executable imports it)."""
        for module in [self._module, *self._module.imports]:
            if module.kind != "relax.VMExecutable":
                return module
        raise DeviceError(f"{self.path.name}: no compiled kernels found in the library")


def _manifest(path: Path) -> dict:
    from mpqc.build.compile import read_manifest
    return read_manifest(path)


def load(path, device=None) -> Library:
    """Load a library built by `mpqc compile`; `device` (mpqc.remote.RpcDevice) runs it
    on a remote board, otherwise it must run on this machine."""
    import tvm

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"library {path} not found")
    manifest = _manifest(path)
    if device is None:
        from mpqc.targets import runs_on_host, target_from_dict
        target = target_from_dict(manifest["target"], str(path))
        if not runs_on_host(target):
            raise DeviceError(f"{path.name} is built for {target.name} ({target.arch}), "
                              "which this machine cannot run; load it with a device "
                              "(--rpc-tracker HOST:PORT --rpc-key KEY)")
        try:
            lib = tvm.runtime.load_module(str(path))
        except Exception as exc:
            raise DeviceError(f"cannot load {path}: {last_line(exc)}") from exc
        dev = tvm.cpu()
        return Library(path, manifest, lib, dev)
    from mpqc.remote import connect
    session = connect(device)
    try:
        session.upload(str(path))
        lib = session.load_module(path.name)
        dev = session.cpu()
        return Library(path, manifest, lib, dev, session)
    except Exception as exc:
        raise DeviceError(f"loading {path.name} on {device} failed: {last_line(exc)}") from exc


def read_images(paths, manifest: dict) -> np.ndarray:
    """Image files -> a normalised float NCHW batch of the library's input shape."""
    from PIL import Image

    c, h, w = manifest["input"]["shape"][1:]
    norm = manifest["input"].get("normalisation") or {}
    mean = np.asarray(norm.get("mean") or [0.0] * c, np.float32).reshape(c, 1, 1)
    std = np.asarray(norm.get("std") or [1.0] * c, np.float32).reshape(c, 1, 1)
    batch = []
    for p in paths:
        try:
            img = Image.open(p).convert("L" if c == 1 else "RGB").resize((w, h))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read image {p}: {exc}") from exc
        x = np.asarray(img, np.float32) / 255.0
        x = x[None] if c == 1 else x.transpose(2, 0, 1)
        batch.append((x - mean) / std)
    return np.stack(batch).astype(np.float32)


__all__ = ["Library", "load", "read_images"]
