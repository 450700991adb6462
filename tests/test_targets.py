import json

import pytest

from mpqc import targets as tg
from mpqc.errors import TargetError

REQUIRED = {"x86-avx2", "x86-avx512", "arm64-cortex-a72", "arm64-cortex-a76", "arm64-neon"}


def test_builtin_targets_present_and_valid():
    found = tg.builtin_targets()
    assert REQUIRED <= set(found)
    for target in found.values():
        assert target.arch in ("x86_64", "aarch64")
        assert target.tvm_target["kind"] == "llvm"
        tvm_target = tg.tvm_target(target)  # TVM accepts every dict
        assert str(tvm_target.kind) == "llvm"
        if target.arch == "aarch64":
            assert target.cross_compiler == "aarch64-linux-gnu-g++"
            assert target.tvm_target["mtriple"].startswith("aarch64")


def test_target_features_are_what_tvm_sees():
    from tvm.target import codegen
    avx512 = tg.tvm_target(tg.load_target("x86-avx512"))
    assert codegen.llvm_cpu_has_features(["avx512vpopcntdq"], avx512)
    avx2 = tg.tvm_target(tg.load_target("x86-avx2"))
    assert codegen.llvm_cpu_has_features(["avx2", "popcnt"], avx2)
    assert not codegen.llvm_cpu_has_features(["avx512f"], avx2)


def test_host_is_detected_not_assumed():
    from tvm.target import codegen
    host = tg.load_target("host")
    assert host.name == "host"
    assert host.mcpu == codegen.llvm_get_system_cpu()
    detected = tg.detect_target()
    assert set(detected.required_features) <= tg.host_features()
    assert host.schedule == detected.schedule
    assert tg.runs_on_host(host)


def test_detect_prefers_exact_and_most_specific(monkeypatch):
    monkeypatch.setattr(tg, "_host_arch", lambda: "aarch64")
    monkeypatch.setattr(tg, "host_cpu", lambda: "cortex-a72")
    monkeypatch.setattr(tg, "host_features", lambda: frozenset({"neon", "crc"}))
    assert tg.detect_target().name == "arm64-cortex-a72"
    monkeypatch.setattr(tg, "host_cpu", lambda: "neoverse-n1")
    assert tg.detect_target().name == "arm64-neon"
    monkeypatch.setattr(tg, "_host_arch", lambda: "x86_64")
    monkeypatch.setattr(tg, "host_features", lambda: frozenset(
        {"avx2", "popcnt", "avx512f", "avx512bw", "avx512vpopcntdq"}))
    assert tg.detect_target().name == "x86-avx512"
    monkeypatch.setattr(tg, "host_features", lambda: frozenset({"sse4.2"}))
    with pytest.raises(TargetError, match="no built-in target matches"):
        tg.detect_target()


def test_unknown_name_lists_known():
    with pytest.raises(TargetError) as info:
        tg.load_target("pentium")
    message = str(info.value)
    assert "pentium" in message and "x86-avx2" in message and "host" in message


def test_user_target_file(tmp_path):
    spec = tg.builtin_targets()["arm64-neon"].to_json()
    spec.pop("source")
    spec.update(name="my-board", rpc_key="myboard",
                tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53"})
    path = tmp_path / "board.json"
    path.write_text(json.dumps(spec))
    target = tg.load_target(str(path))
    assert target.name == "my-board" and target.mcpu == "cortex-a53"
    assert target.source == str(path)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("arch"), "missing key"),
    (lambda s: s.update(arch="mips"), "'arch'"),
    (lambda s: s.update(popcount="magic"), "'popcount'"),
    (lambda s: s.update(pack_word_bits=12), "'pack_word_bits'"),
    (lambda s: s.update(tvm_target="llvm -mcpu=x"), "'tvm_target'"),
    (lambda s: s.update(colour="red"), "unknown key"),
    (lambda s: s.update(default_threads=0), "default_threads"),
])
def test_bad_target_files(tmp_path, mutate, message):
    spec = tg.builtin_targets()["x86-avx2"].to_json()
    spec.pop("source")
    mutate(spec)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(TargetError, match=message) as info:
        tg.load_target(str(path))
    assert str(path) in str(info.value)


def test_missing_and_corrupt_target_file(tmp_path):
    with pytest.raises(TargetError, match="does not exist"):
        tg.load_target(str(tmp_path / "nope.json"))
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    with pytest.raises(TargetError, match="not valid JSON"):
        tg.load_target(str(corrupt))
