"""The latency database: records round-trip, a torn line is skipped, stale kernels and
foreign files are recognised."""
import json

import pytest

from mpqc.errors import ConfigError, DataError
from mpqc.latency.records import (LatencyRecord, LayerShape, append_db, measured_keys,
                                  package_versions, read_db)
from mpqc.latency.space import model_jobs, parse_bits, random_shapes


def record(h=8, a=1, w=1, ms=0.5, **kw):
    shape = LayerShape("conv2d", h, h, 16, 32, 3, 1, 1)
    return LatencyRecord(target="host", target_tvm={"kind": "llvm"}, shape=shape, a_bits=a,
                         w_bits=w, threads=1, median_ms=ms, min_ms=ms, max_ms=ms, repeats=5,
                         conv_ms=ms and ms * 0.9, pack_ms=ms and ms * 0.1,
                         **{"versions": package_versions(), **kw})


def test_round_trip_and_torn_line(tmp_path):
    db = tmp_path / "lat.jsonl"
    append_db(db, record(a=1))
    append_db(db, record(a=2))
    with open(db, "a") as f:
        f.write('{"schema": 1, "target": "ho')  # a run killed mid-write
    assert [r.a_bits for r in read_db(db)] == [1, 2]
    append_db(db, record(a=3))  # the next append terminates the torn line first
    rows = read_db(db)
    assert [r.a_bits for r in rows] == [1, 2, 3]
    assert rows[0].shape == LayerShape("conv2d", 8, 8, 16, 32, 3, 1, 1)
    assert len(db.read_text().splitlines()) == 4


def test_record_fields_round_trip():
    r = record(a=2, w=3, device="rpc:127.0.0.1:9000", emulated=True)
    again = LatencyRecord.from_json(json.loads(json.dumps(r.to_json())))
    assert again == r


def test_failures_and_stale_kernels_are_measured_again():
    ok, failed = record(a=1), record(a=2, ms=None, error="build failed")
    stale = record(a=3, versions={"schedules": -1})
    keys = measured_keys([ok, failed, stale])
    assert keys == {ok.key}


def test_foreign_file_is_a_clear_error(tmp_path):
    db = tmp_path / "other.jsonl"
    db.write_text('{"kernel": "x", "knobs": {}}\n')
    with pytest.raises(DataError, match="not a latency record"):
        read_db(db)


def test_shapes_and_bits():
    assert parse_bits("1-4") == (1, 2, 3, 4)
    assert parse_bits("4,1,2") == (1, 2, 4)
    for bad in ("0,1", "9", "a,b", ""):
        with pytest.raises(ConfigError):
            parse_bits(bad)
    shapes = random_shapes(50, seed=3)
    assert len(set(shapes)) == 50 and shapes == random_shapes(50, seed=3)
    assert random_shapes(60, seed=3)[:50] == shapes  # a larger space extends a smaller one
    assert all(s.out_hw[0] >= 1 for s in shapes)


def test_model_jobs_group_layers_by_shape():
    from mpqc.models import build_model, describe_layers
    layers = describe_layers(build_model("resnet20"), (3, 32, 32))
    jobs = model_jobs(layers, (1, 2), (1, 2))
    shapes = {j.shape for j in jobs}
    assert len(jobs) == 4 * len(shapes)
    assert sum(len(j.layers) for j in jobs) == 4 * sum(l.quantizable for l in layers)
    assert LayerShape("conv2d", 32, 32, 16, 16, 3, 1, 1) in shapes
