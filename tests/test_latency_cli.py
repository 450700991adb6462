"""mpqc measure / fit / predict through the command line."""
import json

import pytest

from click.testing import CliRunner

from mpqc.cli import main
from mpqc.latency.records import read_db


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_measure_fit_predict(tmp_path):
    db, model = tmp_path / "lat.jsonl", tmp_path / "lm.json"
    out = run("measure", "--space", "random", "--count", "8", "--bits", "1,2", "--repeats",
              "3", "--db", db, "--quiet")
    assert out.exit_code == 0, out.output
    assert "8 measured, 0 already in" in out.output
    assert "kernel/s" not in out.output and "measure host" not in out.output  # no bar
    assert len(read_db(db)) == 8
    out = run("measure", "--model", "democnn", "--bits", "1", "--repeats", "3", "--db", db)
    assert out.exit_code == 0, out.output
    assert "measure host" in out.output  # the progress bar
    out = run("fit", "--db", db, "--out", model, "--json")
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.output)
    for key in ("n_train", "n_heldout", "heldout_within_10pct", "heldout_within_5pct",
                "heldout_mape"):
        assert key in metrics
    assert metrics["n_train"] + metrics["n_heldout"] == len(read_db(db))
    out = run("predict", "--model-file", model, "--model", "democnn", "--config",
              "uniform:1,1", "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert all(layer["measured"] for layer in result["layers"])  # democnn was measured at 1,1
    # measure --model also timed the glue; fit carried it, predict adds it
    assert result["glue_measured"] and result["glue_ms"] >= 0
    assert result["total_ms"] == pytest.approx(sum(layer["ms"] for layer in result["layers"])
                                               + result["glue_ms"])
    out = run("predict", "--model-file", model, "--model", "democnn", "--config", "uniform:3,3")
    assert out.exit_code == 0 and "predicted" in out.output and "total" in out.output


def test_bad_inputs_are_one_line_errors(tmp_path):
    for args, words in [
        (("measure", "--db", tmp_path / "x.jsonl"), "say what to measure"),
        (("measure", "--model", "democnn", "--bits", "0,9", "--db", tmp_path / "x.jsonl"), "outside 1..8"),
        (("measure", "--model", "nosuchmodel", "--db", tmp_path / "x.jsonl"), "nosuchmodel"),
        (("measure", "--target", "arm64-neon", "--model", "democnn", "--db", tmp_path / "x.jsonl"), "RPC"),
        (("fit", "--db", tmp_path / "none.jsonl", "--out", tmp_path / "m.json"), "no successful measurement"),
        (("predict", "--model-file", tmp_path / "none.json", "--model", "democnn", "--config",
          "uniform:1,1"), "mpqc fit"),
    ]:
        out = run(*args)
        assert out.exit_code == 2, (args, out.output)
        assert words in out.output, (args, out.output)
