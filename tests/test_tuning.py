import json

from mpqc.kernel_check import conv_spec_for
from mpqc.schedules import Knobs
from mpqc.targets import load_target
from mpqc.tuning import best_knobs, kernel_key, knob_space, read_log, tune_conv

HOST = load_target("host")
SPEC = conv_spec_for(8, 8, 16, 16, 3, 1, 1, 2, 2, HOST)


def test_tuning_is_resumable_and_keeps_best(tmp_path):
    log = tmp_path / "tune.jsonl"
    first = knob_space()[:3]
    best = tune_conv(SPEC, HOST, log, first, repeats=3)
    records = read_log(log)
    assert len(records) == 3 and all(r.exact and r.kernel == kernel_key(SPEC) for r in records)
    assert best.median_ms == min(r.median_ms for r in records)
    # a killed run leaves a torn line: it is skipped, and finished choices are not redone
    with open(log, "a") as f:
        f.write('{"target": "host", "kern')
    calls = []
    tune_conv(SPEC, HOST, log, knob_space()[:4], repeats=3,
              progress=lambda todo: calls.extend(todo) or todo)
    assert len(calls) == 1
    assert len(read_log(log)) == 4
    for line in log.read_text().splitlines()[-1:]:
        json.loads(line)  # the record after the torn line is whole
    chosen = best_knobs(log, SPEC, HOST)
    fastest = min(read_log(log), key=lambda r: r.median_ms)
    assert chosen == Knobs(**fastest.knobs)


def test_best_knobs_ignores_other_kernels_and_missing_log(tmp_path):
    assert best_knobs(None, SPEC, HOST) is None
    assert best_knobs(tmp_path / "none.jsonl", SPEC, HOST) is None
    log = tmp_path / "tune.jsonl"
    tune_conv(SPEC, HOST, log, knob_space()[:1], repeats=3)
    other = SPEC.with_(a_bits=1)
    assert best_knobs(log, other, HOST) is None


def test_layer_tuning_compares_words_with_packing(tmp_path):
    from mpqc.tuning import best_variant, tune_layer, word_variants
    log = tmp_path / "tune.jsonl"
    spec = conv_spec_for(6, 6, 24, 8, 3, 1, 1, 1, 2, HOST)
    variants = word_variants(spec, HOST)
    assert [v.word_bits for v in variants] == [8, 16, 32, 64]
    chosen, knobs, total = tune_layer(spec, HOST, log, knob_space()[:1], repeats=3)
    records = read_log(log)
    assert {r.kernel for r in records} == {kernel_key(v) for v in variants}
    assert all(r.pack_ms > 0 for r in records)
    fastest = min(records, key=lambda r: r.median_ms + r.pack_ms)
    assert kernel_key(chosen) == fastest.kernel and total == fastest.total_ms
    assert best_variant(log, spec, HOST)[0] == chosen


def test_the_lookup_kernel_is_tuned_on_x86_only():
    """Its vpshufb is x86 code: LLVM cannot select it for an ARM target."""
    assert any(k.lookup_tables for k in knob_space(family="x86"))
    assert not any(k.lookup_tables for k in knob_space(family="arm"))
