"""The CLI as a user meets it: a subprocess of the installed console script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MPQC = str(Path(sys.executable).with_name("mpqc"))


def run(*args, check_rc=0):
    proc = subprocess.run([MPQC, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == check_rc, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_help_lists_commands():
    out = run("--help").stdout
    for command in ("targets", "data", "import", "eval", "kernel", "tune", "bench"):
        assert command in out


def test_targets_json_lists_required_targets():
    listed = json.loads(run("targets", "--json").stdout)
    names = {t["name"] for t in listed}
    assert {"host", "x86-avx2", "x86-avx512", "arm64-cortex-a72", "arm64-cortex-a76",
            "arm64-neon"} <= names
    for t in listed:
        assert t["arch"] in ("x86_64", "aarch64") and t["tvm_target"]["kind"] == "llvm"


def test_targets_table_and_detect():
    table = run("targets").stdout
    assert "x86-avx512" in table and "popcount" in table
    detected = run("targets", "--detect", "--json").stdout
    assert json.loads(detected)["name"] in {"x86-avx2", "x86-avx512", "arm64-neon",
                                            "arm64-cortex-a72", "arm64-cortex-a76"}


def test_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text("{oops")
    for args in (["data", "nosuchset"], ["import", "--model", "nosuchmodel"],
                 ["targets", "pentium"], ["targets", str(bad)]):
        proc = run(*args, check_rc=2)
        assert proc.stderr.startswith("mpqc: error: ") and proc.stderr.count("\n") == 1
        assert "Traceback" not in proc.stderr


def test_user_target_file_is_shown(tmp_path):
    spec = json.loads(run("targets", "--json", "arm64-neon").stdout)[0]
    spec.pop("source")
    spec["name"] = "my-board"
    path = tmp_path / "board.json"
    path.write_text(json.dumps(spec))
    assert "my-board" in run("targets", str(path)).stdout


def test_debug_shows_traceback():
    proc = run("--debug", "data", "nosuchset", check_rc=1)
    assert "Traceback" in proc.stderr and "DataError" in proc.stderr


def test_kernel_command_checks_and_times():
    out = json.loads(run("kernel", "--shape", "8,8,20,16,3,2,1", "--bits", "1x1",
                         "--bits", "3x2", "--repeats", "3", "--json").stdout)
    assert [(r["a_bits"], r["w_bits"]) for r in out] == [(1, 1), (3, 2)]
    for r in out:
        assert r["exact"] and r["mismatches"] == 0
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]


def test_kernel_command_bad_bits():
    proc = run("kernel", "--shape", "8,8,16,16,3,1,1", "--bits", "2x9", check_rc=2)
    assert "a=2, w=9" in proc.stderr and "outside 1..8" in proc.stderr


def test_bench_kernels_json_and_plot(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    run("bench", "kernels", "--shape", "resnet20.layer3", "--bits", "1x1", "--bits", "2x2",
        "--repeats", "3", "--json", str(out), "--plot", str(png))
    rows = json.loads(out.read_text())
    assert [r["bits"] for r in rows] == [[1, 1], [2, 2]]
    for r in rows:
        assert r["shape"] == "resnet20.layer3" and r["threads"] == 1 and r["mpqc_exact"]
        for key in ("mpqc_ms", "torch_fp32_ms", "ort_fp32_ms", "ort_int8_ms", "tvm_topi_ms",
                    "roofline_ms"):
            assert r[key] > 0
        assert r["mpqc_ms"] > r["mpqc_conv_ms"]  # packing is counted
    # the roofline scales with a*w on one shape
    assert abs(rows[1]["roofline_ms"] / rows[0]["roofline_ms"] - 4) < 1e-9
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the roofline is per core: two threads halve the floor
    two = tmp_path / "two.json"
    run("bench", "kernels", "--shape", "resnet20.layer3", "--bits", "1x1", "--threads", "2",
        "--repeats", "3", "--json", str(two))
    # (each run measures the roofline anew, and on a loaded machine two measurements
    # differ: compare the floors at the rate each run measured)
    second = json.loads(two.read_text())[0]
    ratio = ((second["roofline_ms"] * second["roofline_gbmacs"])
             / (rows[0]["roofline_ms"] * rows[0]["roofline_gbmacs"]))
    assert ratio == pytest.approx(0.5)


def test_data_and_eval_commands():
    info = json.loads(run("data", "mnist", "--json").stdout)
    assert (info["train"], info["val"], info["test"]) == (50000, 10000, 10000)
    assert info["input_shape"] == [1, 28, 28]
    result = json.loads(run("eval", "--model", "democnn", "--data", "mnist", "--limit", "200",
                            "--json").stdout)
    assert result["images"] == 200 and 0 <= result["accuracy"] <= 1


def test_rpc_errors_are_one_line(tmp_path):
    proc = run("kernel", "--target", "arm64-neon", "--shape", "8,8,16,16,3,1,1",
               "--bits", "1x1", check_rc=2)
    assert "cannot run on this machine" in proc.stderr and "--rpc-tracker" in proc.stderr
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    proc = run("kernel", "--target", "arm64-neon", "--shape", "8,8,16,16,3,1,1",
               "--bits", "1x1", "--rpc-tracker", f"127.0.0.1:{port}", check_rc=2)
    assert "cannot reach the RPC tracker" in proc.stderr and proc.stderr.count("\n") == 1
