"""JSONLLogger and read_jsonl: one JSON line per logged step, read back as written."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import optdsl
from optdsl.diagnostics import DiagnosticsError, JSONLLogger, read_jsonl, rebin, series
from optdsl.optim import Adam
from tests.diagnostics.diag_util import assert_close


def _run(steps: int, log=None, nan_at: int | None = None):
    rng = np.random.default_rng(0)
    w = optdsl.Param(rng.standard_normal((4, 3)), name="w")
    b = optdsl.Param(np.zeros(3), name="b")
    opt = Adam([{"params": [w]}, {"params": [b], "lr": 0.01}], lr=0.1, diagnostics=True,
               skip_nonfinite=True)
    out = []
    for step in range(1, steps + 1):
        w.grad = rng.standard_normal((4, 3))
        b.grad = rng.standard_normal(3)
        if step == nan_at:
            w.grad[0, 0] = np.nan
        opt.step()
        out.append(opt.diagnostics().to_dict())
        if log is not None:
            log.log(opt)
    return opt, out


def test_round_trip(tmp_path):
    path = tmp_path / "runs" / "deep" / "diag.jsonl"  # parent directories are made
    with JSONLLogger(path) as log:
        _, dicts = _run(4, log, nan_at=3)
        assert log.written == 4
    assert log._file.closed
    records = read_jsonl(path)
    assert len(records) == 4 and len(path.read_text().splitlines()) == 4
    for record, d in zip(records, dicts, strict=True):
        assert record.pop("time") > 0
        assert_close(record, d, rtol=0.0)  # bit for bit, nan included
    assert records[2]["skipped"] is True and math.isnan(records[2]["groups"][0]["grad_norm"])
    assert [r["step"] for r in records] == [1, 2, 2, 3]


def test_every_and_explicit_steps_and_appending(tmp_path):
    path = tmp_path / "diag.jsonl"
    log = JSONLLogger(path, every=3)
    opt, _ = _run(1)
    written = [log.log(opt, step=100 + i) for i in range(7)]
    log.close()
    assert [w is not None for w in written] == [True, False, False, True, False, False, True]
    with JSONLLogger(path) as again:  # appends: a resumed run continues its log
        again.log(opt.diagnostics(), step=7)
    assert [r["step"] for r in read_jsonl(path)] == [100, 103, 106, 7]
    with pytest.raises(DiagnosticsError, match="is closed"):
        log.log(opt)
    with pytest.raises(ValueError, match="every must be a whole number >= 1"):
        JSONLLogger(path, every=0)


def test_lines_are_standard_json_objects(tmp_path):
    path = tmp_path / "diag.jsonl"
    with JSONLLogger(path) as log:
        _run(2, log)
    for line in path.read_text().splitlines():
        record = json.loads(line)
        assert record["format"] == 1 and record["optimizer"] == "Adam"
        assert {g["group"] for g in record["groups"]} == {0, 1}
        assert [p["label"] for p in record["params"]] == ["w", "b"]
        assert len(record["params"][0]["grad_histogram"]["counts"]) == 32


def test_a_log_of_an_optimizer_without_diagnostics_raises(tmp_path):
    w = optdsl.Param(np.ones(2))
    w.grad = np.ones(2)
    opt = Adam([w])
    opt.step()
    with JSONLLogger(tmp_path / "d.jsonl") as log, pytest.raises(DiagnosticsError,
                                                                  match="diagnostics are off"):
        log.log(opt)


@pytest.mark.parametrize(("text", "message"), [
    ('{"step": 1, "groups": [], "params": []}\nnot json\n', r"d.jsonl:2: not a JSON line"),
    ('[1, 2]\n', r"d.jsonl:1: not a diagnostics record"),
    ('{"step": 1}\n', r"d.jsonl:1: not a diagnostics record"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "d.jsonl"
    path.write_text(text)
    with pytest.raises(DiagnosticsError, match=message):
        read_jsonl(path)


def test_an_unfinished_last_line_is_left_out(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"step": 1, "groups": [], "params": []}\n{"step": 2, "gro')
    assert [r["step"] for r in read_jsonl(path)] == [1]


def test_a_missing_or_binary_file(tmp_path):
    with pytest.raises(DiagnosticsError, match=r"cannot read .*nope.jsonl: No such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\x89PNG\xff\xfe")
    with pytest.raises(DiagnosticsError, match="not a diagnostics log"):
        read_jsonl(tmp_path / "bin.jsonl")


def test_series_and_rebin_for_the_plot():
    _, dicts = _run(3, nan_at=2)
    s = series(dicts)
    assert list(s["steps"]) == [1.0, 1.0, 2.0] and set(s["groups"]) == {0, 1}
    g0 = s["groups"][0]
    assert math.isnan(g0["grad_norm"][1]) and g0["update_ratio"][1] == 0.0
    assert set(g0["tracks"]) == {"effective_lr"} and math.isnan(g0["tracks"]["effective_lr"]
                                                                ["mean"][1])
    counts, edges = rebin(g0["histograms"], bins=16)
    assert counts.shape == (3, 16) and len(edges) == 17
    for row, d in zip(counts, dicts, strict=True):  # spreading keeps every count
        assert row.sum() == pytest.approx(sum(d["groups"][0]["grad_histogram"]["counts"]))
