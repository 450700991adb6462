"""Compile quantized networks into libraries for x86 and verify them exactly against the
integer reference; manifests; errors of the build step."""
import json
from pathlib import Path

import numpy as np
import pytest

from mpqc.build.compile import check_can_build, compile_library, read_manifest
from mpqc.build.network import NetworkSpec
from mpqc.build.verify import verify_library
from mpqc.errors import BuildError, TargetError
from mpqc.targets import Target, load_target

from conftest import SHARED

RESNET20_WEIGHTS = SHARED / "models" / "resnet20-12fca82f.th"
DEMOCNN_MIXED = {"conv2": [1, 2], "conv3": [3, 1], "conv4": [2, 4], "conv5": [4, 3]}
RESNET20_MIXED = {**{f"layer1.{i}.conv{j}": [2, 2] for i in range(3) for j in (1, 2)},
                  **{f"layer2.{i}.conv{j}": [1, 2] for i in range(3) for j in (1, 2)},
                  **{f"layer3.{i}.conv{j}": [3, 1] for i in range(3) for j in (1, 2)},
                  "layer1.0.conv1": [4, 3], "layer3.2.conv2": [1, 1]}


@pytest.fixture(scope="module")
def host():
    return load_target("host")


def _config(tmp_path: Path, name: str, config) -> str:
    if isinstance(config, str):
        return config
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize("config", ["uniform:1,1", "uniform:2,2", "uniform:4,4", DEMOCNN_MIXED],
                         ids=["a1w1", "a2w2", "a4w4", "mixed"])
def test_democnn_library_is_exact(tmp_path, host, config):
    spec = NetworkSpec(model="democnn", config=_config(tmp_path, "democnn", config))
    result = compile_library(spec, host, tmp_path / "democnn.so")
    check = verify_library(result.library, count=3)
    assert check.exact, [c for c in check.layers if not c.equal]
    assert check.max_abs_diff < 1e-4 and check.top1_agreement == 1.0
    assert all(c.equal for c in check.layers)


@pytest.fixture(scope="module")
def resnet20_libraries(tmp_path_factory, host):
    """ResNet-20 (the shared checkpoint when present) compiled once per configuration."""
    root = tmp_path_factory.mktemp("resnet20")
    weights = str(RESNET20_WEIGHTS) if RESNET20_WEIGHTS.exists() else None
    out = {}
    for name, config in (("a1w1", "uniform:1,1"), ("a2w2", "uniform:2,2"),
                         ("a4w4", "uniform:4,4"), ("mixed", RESNET20_MIXED)):
        spec = NetworkSpec(model="resnet20", weights=weights,
                           config=_config(root, name, config))
        out[name] = compile_library(spec, host, root / f"resnet20-{name}.so",
                                    predicted_ms=1.0, budget_ms=2.0)
    return out


@pytest.mark.parametrize("name", ["a1w1", "a2w2", "a4w4", "mixed"])
def test_resnet20_library_is_exact(resnet20_libraries, name):
    result = resnet20_libraries[name]
    check = verify_library(result.library, count=2)
    assert check.exact, check.first_mismatch
    assert check.max_abs_diff < 1e-3
    convs = [c for c in check.layers if c.kind != "float"]
    assert len(convs) >= 20  # every conv, shortcut, requantization and pooling compared


def test_resnet20_manifest(resnet20_libraries):
    result = resnet20_libraries["mixed"]
    manifest = read_manifest(result.library)
    assert manifest == result.manifest
    assert manifest["input"]["shape"] == [1, 3, 32, 32]
    assert manifest["input"]["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert manifest["output"]["shape"] == [1, 10]
    bits = {l["name"]: (l["a"], l["w"]) for l in manifest["layers"]}
    assert bits["conv1"] == (8, 8) and bits["linear"] == (8, 8)
    assert bits["layer2.1.conv1"] == (1, 2) and bits["layer3.2.conv2"] == (1, 1)
    assert manifest["predicted_ms"] == 1.0 and manifest["budget_ms"] == 2.0
    assert len(manifest["sha256"]) == 64 and manifest["versions"]["apache-tvm"]
    assert manifest["network"]["model"] == "resnet20"
    assert manifest["compile_seconds"] < 60
    # the input quantizer runs inside the first conv (it reads the float NCHW image), and
    # pooling + the last quantizer is one scheduled kernel
    assert manifest["kernels"]["direct_conv1"][0] == [[1, 3, 32, 32], "float32"]
    assert manifest["kernels"]["pool_layer3_2_conv2_pool"][-1] == [[1, 64], "uint8"]


def test_library_runs_through_the_runtime(resnet20_libraries):
    from mpqc import runtime
    lib = runtime.load(resnet20_libraries["a2w2"].library)
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    logits = lib(images)
    assert logits.shape == (3, 10) and logits.dtype == np.float32
    np.testing.assert_array_equal(lib(images[:1]), logits[:1])


def test_library_profile_times_every_kernel_alone(resnet20_libraries):
    """The library runs the VM in compiled mode (no instrument hook): its manifest lists
    every kernel main calls with argument shapes, and profile() times each one alone."""
    from mpqc import runtime
    from mpqc.errors import DeviceError
    result = resnet20_libraries["mixed"]
    assert result.manifest["exec_mode"] == "compiled"
    kernels = result.manifest["kernels"]
    searched = [l["name"].replace(".", "_") for l in result.manifest["layers"]
                if l["impl"] == "bitserial"]
    assert len(searched) == 18
    for name in searched:
        assert f"bitpack_{name}" in kernels and f"conv_{name}" in kernels
    # the conv's arguments: packed planes, packed weights, epilogue constants, output
    # (the last conv hands int32 to the pooling, the others codes to the next layer)
    for layer, out in (("layer2_1_conv1", [[1, 16, 16, 32], "uint8"]),
                       ("layer3_2_conv2", [[1, 8, 8, 64], "int32"])):
        a, w = RESNET20_MIXED[layer.replace("_", ".")]
        planes, weights = kernels[f"conv_{layer}"][:2]
        assert (planes[0][3], weights[0][2], kernels[f"conv_{layer}"][-1]) == (a, w, out)
    lib = runtime.load(result.library)
    profile = lib.profile(repeats=3)
    assert set(profile) == set(kernels) and all(ms > 0 for ms in profile.values())
    # the kernels alone take less than the network they make up
    assert sum(profile.values()) < 2 * lib.time(repeats=5).median_ms
    stale = runtime.Library(lib.path, {**lib.manifest, "kernels": {}}, lib._module, lib._dev)
    with pytest.raises(DeviceError, match="rebuild it"):
        stale.profile()


def test_target_without_compiler_is_refused(tmp_path):
    arm = load_target("arm64-neon")
    bare = Target(**{**arm.__dict__, "cross_compiler": None})
    with pytest.raises(TargetError, match="cross compiler"):
        check_can_build(bare)
    missing = Target(**{**arm.__dict__, "cross_compiler": "no-such-g++"})
    with pytest.raises(TargetError, match="no-such-g\\+\\+ is not installed"):
        compile_library(NetworkSpec(model="democnn", config="uniform:2,2"), missing,
                        tmp_path / "x.so")


def test_library_name_must_end_in_so(tmp_path, host):
    with pytest.raises(BuildError, match=r"\.so"):
        compile_library(NetworkSpec(model="democnn", config="uniform:2,2"), host,
                        tmp_path / "x.bin")
