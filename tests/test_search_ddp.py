"""The same `mpqc search` under torchrun with 2 processes (DDP, gloo) on tiny data."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch.distributed")


def test_search_under_torchrun_with_two_processes(tmp_path):
    import torch.distributed as dist
    if not dist.is_gloo_available():
        pytest.skip("this torch has no gloo backend")
    out = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mpqc", "search", "--model", "democnn", "--data", "mnist", "--subset", "256",
           "--budget-ratio", "0.3", "--epochs", "1", "--fp32-epochs", "1",
           "--finetune-epochs", "1", "--batch-size", "32", "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2
    assert report["predicted_ms"] <= report["budget_ms"]
    assert len(report["trajectory"]) == 1 and len(report["layers"]) == 4
    assert (tmp_path / "ddp.pt").exists() and (tmp_path / "ddp.json.ckpt").exists()
    # rank 0 alone reports (run_search also checked that the replicas ended equal)
    assert done.stdout.count("bpnas: predicted") == 1
