"""`mpqc pipeline` on tiny data: end to end, resumed after kill -9 in measure and in
search (finished steps not redone, database intact), and bad input through the CLI."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpqc.cli import main
from mpqc.latency.records import read_db
from mpqc.pipeline import STEP_NAMES, PipelineConfig

TINY = ["--model", "democnn", "--data", "mnist", "--subset", "512", "--bits", "1,2",
        "--epochs", "2", "--finetune-epochs", "1", "--fp32-epochs", "1",
        "--random-shapes", "6", "--repeats", "3", "--budget-ratio", "0.8", "--quiet"]
# 0.8: with 2-bit activations on the lookup-table kernel, democnn at uniform 1x1 is
# ~0.6 of uniform 2x2 on an AVX2 host, so smaller ratios can be infeasible there
SUMMARY_KEYS = {"verified_exact", "measured_ms", "predicted_ms", "budget_ms", "accuracy",
                "fp32_accuracy", "ort_int8_ms", "so_path"}


def _cmd(workdir, *extra):
    return [str(Path(sys.executable).parent / "mpqc"), "pipeline", *TINY, "--workdir",
            str(workdir), *extra]


def _kill_when(proc, ready, timeout=300):
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, "the pipeline finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _stamp(workdir, step):
    path = Path(workdir) / "steps" / f"{step}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _db_lines(workdir):
    db = Path(workdir) / "latency.jsonl"
    return len(db.read_text().splitlines()) if db.is_file() else 0


def test_killed_in_measure_resumes_with_an_intact_database(tmp_path):
    work = tmp_path / "w"
    proc = subprocess.Popen(_cmd(work, "--until-step", "fit"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: _db_lines(work) >= 3)
    assert _stamp(work, "import") and _stamp(work, "measure") is None
    kept = {r.key for r in read_db(work / "latency.jsonl") if r.ok}
    assert len(kept) >= 2
    imported = _stamp(work, "import")["finished"]

    done = subprocess.run(_cmd(work, "--until-step", "fit"), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped (up to date)" in done.stderr.split("[2/3]")[0]     # import not redone
    assert _stamp(work, "import")["finished"] == imported
    facts = _stamp(work, "measure")["facts"]
    passes = 2  # the pipeline's default
    assert facts["already"] >= len(kept)
    assert facts["measured"] == passes * facts["kernels"] - facts["already"]
    records = read_db(work / "latency.jsonl")
    keys = [r.key for r in records if r.ok]
    # every kernel in each pass exactly once: nothing measured twice in a pass, nothing lost
    assert len(set(keys)) == facts["kernels"] and len(keys) == passes * facts["kernels"]
    assert kept <= set(keys)
    assert _stamp(work, "fit") and _stamp(work, "search") is None    # --until-step fit


def test_killed_in_search_resumes_and_ends_with_a_verified_library(tmp_path):
    work = tmp_path / "w"
    proc = subprocess.Popen(_cmd(work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the search checkpoints after every epoch: kill once the first one is on disk
    _kill_when(proc, lambda: (work / "search.ckpt").is_file())
    assert _stamp(work, "fit") and _stamp(work, "search") is None
    before = {s: _stamp(work, s)["finished"] for s in ("import", "measure", "fit")}
    db_before = (work / "latency.jsonl").read_bytes()

    done = subprocess.run(_cmd(work), capture_output=True, text=True, timeout=900)
    # 1 only for a budget the library missed: a timing on a shared machine, not a defect
    # here (the benchmarks hold that goal); what decides 0 or 1 is checked below
    assert done.returncode in (0, 1), done.stderr[-3000:]
    for step, finished in before.items():
        assert _stamp(work, step)["finished"] == finished, f"{step} was redone"
    assert (work / "latency.jsonl").read_bytes() == db_before
    assert done.stderr.count("skipped (up to date)") == 3
    for step in STEP_NAMES:
        assert _stamp(work, step), f"step {step} has no stamp"

    summary = json.loads((work / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["verified_exact"] is True
    assert summary["ok"] is summary["within_budget"]
    assert done.returncode == (0 if summary["ok"] else 1)
    # a --budget-ratio is decided by the ratio to the uniform 2x2 library timed alongside
    same_run = summary["same_run"]
    assert summary["budget_check"] == "same-run ratio" and same_run["budget_ratio"] == 0.8
    assert same_run["reference"] == "uniform 2x2" and (work / same_run["reference_library"]).is_file()
    assert same_run["ratio"] == pytest.approx(same_run["library_ms"] / same_run["reference_ms"],
                                              rel=0.5)
    assert summary["within_budget"] is (same_run["ratio"] <= 0.8)
    assert summary["within_budget_ms"] is (summary["measured_ms"] <= summary["budget_ms"])
    if not summary["ok"]:
        assert "exceeds the budget ratio" in done.stdout + done.stderr
    assert summary["measured_ms"] > 0 and summary["ort_int8_ms"] > 0
    assert summary["predicted_ms"] <= summary["budget_ms"]
    assert Path(summary["so_path"]).is_file() and Path(summary["manifest_path"]).is_file()
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["fp32_accuracy"] <= 1
    # the .so itself scored on the test images the fine-tuned model was scored on (the
    # --subset share: 256 of MNIST's 10000); integer rounding may flip a near tie or two
    assert summary["library_accuracy_images"] == 256
    assert abs(summary["library_accuracy"] - summary["accuracy"]) <= 2 / 256
    assert "(library " in done.stdout
    assert [p["kind"] for p in summary["pareto"]] == ["searched", "uniform", "uniform"]
    assert all(l["measured_ms"] > 0 for l in summary["layer_latency"])
    for name in ("report.md", "pareto.png", "bits.png", "latency.png"):
        assert (work / name).stat().st_size > 0
    assert "exact" in (work / "report.md").read_text()
    assert "verified  exact" in done.stdout

    # everything is up to date now; a changed budget redoes the search and what follows
    # (a larger one: how small a ratio is feasible depends on this CPU's glue vs kernels)
    again = subprocess.run(_cmd(work, "--until-step", "search"), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and again.stderr.count("skipped (up to date)") == 4
    moved = subprocess.run([*_cmd(work, "--until-step", "search")[:-2], "--budget-ratio", "0.9",
                            "--until-step", "search"], capture_output=True, text=True,
                           timeout=600)
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert moved.stderr.count("skipped (up to date)") == 3
    assert json.loads((work / "search.json").read_text())["budget_ms"] == pytest.approx(
        summary["budget_ms"] * 0.9 / 0.8)


def _run(*args):
    return CliRunner().invoke(main, ["pipeline", *args], catch_exceptions=False)


@pytest.mark.parametrize("change, message", [
    (["--model", "nosuchpkg.mod:fn"], "nosuchpkg"),
    (["--target", "no-such-cpu"], "no-such-cpu"),
    (["--data", "cifar10:/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--bits", "1,9"], "9"),
    (["--budget-ratio", "-1"], "must be positive"),
    (["--lr", "0"], "--lr 0.0 must be positive"),
    (["--from-step", "verify", "--until-step", "measure"], "comes after"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, change, message):
    args = [*TINY, "--workdir", str(tmp_path / "w")]
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    out = _run(*args)
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert len([l for l in out.output.strip().splitlines() if l.strip()]) == 1, out.output
    assert not (tmp_path / "w" / "steps").exists()     # nothing ran


def _with_budget(*budget):
    args = list(TINY)
    i = args.index("--budget-ratio")
    args[i:i + 2] = budget
    return args


def test_a_budget_relative_to_onnxruntime_int8(tmp_path):
    work = tmp_path / "w"
    cmd = [str(Path(sys.executable).parent / "mpqc"), "pipeline",
           *_with_budget("--budget-ort-ratio", "1.0"), "--workdir", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    summary = json.loads((work / "summary.json").read_text())
    assert done.returncode == (0 if summary["ok"] else 1), done.stderr[-3000:]
    peers = json.loads((work / "peers.json").read_text())
    assert peers["model"] == "democnn" and peers["ort_int8_ms"] > 0
    # the search's budget is the ratio times the int8 peer timed before it, taken as the
    # bench step's check takes it: the fastest of 7 rounds
    assert len(peers["ort_int8_rounds_ms"]) == 7
    assert peers["ort_int8_fastest_round_ms"] == min(peers["ort_int8_rounds_ms"]) > 0
    search = json.loads((work / "search.json").read_text())
    assert search["budget_ms"] == pytest.approx(peers["ort_int8_fastest_round_ms"])
    assert search["predicted_ms"] <= search["budget_ms"]
    # and the bench step checks the ratio against the peer timed alongside the library
    same_run = summary["same_run"]
    assert same_run["reference"] == "onnxruntime int8" and same_run["budget_ratio"] == 1.0
    assert same_run["ratio"] == pytest.approx(same_run["library_ms"] / same_run["reference_ms"])
    assert summary["within_budget"] is (same_run["ratio"] <= 1.0)
    assert summary["ok"] is (summary["verified_exact"] and summary["within_budget"])
    assert "the onnxruntime int8 timed alongside" in done.stdout

    # another ratio redoes the search with the reference it already measured
    cmd[cmd.index("--budget-ort-ratio") + 1] = "0.9"
    moved = subprocess.run([*cmd, "--until-step", "search"], capture_output=True, text=True,
                           timeout=900)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert json.loads((work / "peers.json").read_text()) == peers
    assert json.loads((work / "search.json").read_text())["budget_ms"] == pytest.approx(
        0.9 * peers["ort_int8_fastest_round_ms"])


def test_a_budget_relative_to_onnxruntime_needs_a_target_that_runs_here(tmp_path):
    out = _run(*_with_budget("--budget-ort-ratio", "0.5"), "--target", "arm64-cortex-a72",
               "--workdir", str(tmp_path / "w"))
    assert out.exit_code == 2 and "arm64-cortex-a72 does not run here" in out.output
    out = _run(*TINY, "--budget-ort-ratio", "0.5", "--workdir", str(tmp_path / "w"))
    assert out.exit_code == 2 and "exactly one of" in out.output
    out = _run(*_with_budget("--budget-ort-ratio", "0"), "--workdir", str(tmp_path / "w"))
    assert out.exit_code == 2 and "must be positive" in out.output
    assert not (tmp_path / "w" / "steps").exists()


def test_corrupt_weights_and_an_impossible_budget(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    out = _run(*TINY, "--weights", str(bad), "--workdir", str(tmp_path / "w"))
    assert out.exit_code == 2 and "bad.pt" in out.output
    assert len(out.output.strip().splitlines()) == 1

    args = _with_budget("--budget-ms", "1e-6")
    out = CliRunner().invoke(main, ["pipeline", *args, "--random-shapes", "2",
                                                    "--workdir", str(tmp_path / "w2")])
    assert out.exit_code == 2
    assert "below the smallest achievable" in out.stderr
    # what was measured and fitted is kept for the next attempt
    assert (tmp_path / "w2" / "steps" / "fit.json").is_file()
    assert read_db(tmp_path / "w2" / "latency.jsonl")


@pytest.mark.slow
def test_measure_and_verify_run_on_the_devices_of_a_tracker(tmp_path, rpc_farm):
    """The host's CPU behind a local tracker stands in for a board."""
    device, ports = rpc_farm
    work = tmp_path / "w"
    done = subprocess.run(_cmd(work, "--rpc-tracker", f"127.0.0.1:{device.tracker_port}",
                               "--rpc-key", device.key), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    boards = {r.device for r in read_db(work / "latency.jsonl")}
    assert boards and all(b.startswith("rpc:127.0.0.1:") for b in boards)
    verify = json.loads((work / "verify.json").read_text())
    assert verify["exact"] and "tracker 127.0.0.1" in verify["device"]
    summary = json.loads((work / "summary.json").read_text())
    assert summary["verified_exact"] and summary["measured_ms"] is None
    assert summary["within_budget"] is None and "not measured" in summary["warnings"][0]
    assert "WARNING: library latency not measured" in done.stderr


def test_a_new_kernel_version_redoes_the_kernel_steps_only(monkeypatch):
    import mpqc.schedules
    from mpqc.pipeline.runner import Step, inputs_hash

    def step(name):
        return Step(name, "", lambda cfg, ws: {}, lambda cfg, ws: [], lambda cfg, ws: [])

    before = {n: inputs_hash(step(n), None, None) for n in ("import", "measure", "build")}
    monkeypatch.setattr(mpqc.schedules, "SCHEDULE_VERSION", mpqc.schedules.SCHEDULE_VERSION + 1)
    after = {n: inputs_hash(step(n), None, None) for n in before}
    assert after["import"] == before["import"]
    assert after["measure"] != before["measure"] and after["build"] != before["build"]


def test_a_ratio_budget_compares_the_fastest_round_of_each_library():
    """A slow spell adds about the same time to both libraries: the ratio of per-round
    times is pulled towards 1 there, the ratio of the fastest rounds is not."""
    from mpqc.pipeline.steps import alternating_ratio
    spell = [0.0, 0.014, 0.014, 0.0, 0.014]          # ms added to both in rounds 2, 3, 5
    rounds = iter(spell)
    added = []

    def library():
        added.append(next(rounds))
        return 0.031 + added[-1]

    def reference():
        return 0.045 + added[-1]

    timed = alternating_ratio(library, reference, rounds=len(spell))
    assert timed["ratio"] == pytest.approx(0.031 / 0.045)
    assert (timed["library_ms"], timed["reference_ms"]) == pytest.approx((0.031, 0.045))
    assert timed["median_round_ratio"] == pytest.approx(0.045 / 0.059)   # 0.763: over 0.7


def test_a_collapsed_network_is_a_warning():
    from mpqc.pipeline.report import collapse_warning
    assert "near chance (10 classes)" in collapse_warning(0.116, 10)
    assert collapse_warning(0.89, 10) is None and collapse_warning(0.2, 10) is None
    assert collapse_warning(0.5, 1) is None


def test_separate_activation_and_weight_candidates():
    from mpqc.pipeline.steps import baseline_pairs, candidate_bits, search_bits
    cfg = PipelineConfig(bits="1,2,3,4", a_bits="2,3", w_bits="1")
    assert search_bits(cfg) == ((2, 3), (1,))
    assert candidate_bits(cfg) == (1, 2, 3)          # measured: only what is searched
    assert baseline_pairs(cfg) == [(2, 1), (3, 1)]   # smallest and largest of each
    assert candidate_bits(replace(cfg, baselines=((4, 4),))) == (1, 2, 3, 4)
    assert search_bits(PipelineConfig(bits="1,2")) == ((1, 2), (1, 2))
