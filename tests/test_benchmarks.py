"""``python -m benchmarks --smoke`` runs end to end and reports every optimizer, so the suite
cannot rot; and the suite's arithmetic (sizes, bytes moved, targets) is right.

No test here judges a speed: the suite prints its targets, it never asserts them.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import suite

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmarks")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out, proc.stdout, json.loads((out / "results.json").read_text())


def test_smoke_reports_every_optimizer_for_every_backend_and_size(smoke):
    out, stdout, results = smoke
    rows = results["one_tensor"]
    assert results["config"]["backends"], "no backend was run"
    for backend in results["config"]["backends"]:
        for n in results["config"]["sizes"]:
            names = {r["optimizer"] for r in rows
                     if (r["impl"], r["n"]) == (f"optdsl {backend}", n)}
            assert names == set(suite.OPTIMIZERS), (backend, n)
    for r in rows:
        assert r["seconds"] > 0 and len(r["times"]) >= 3
        assert r["gbps"] == pytest.approx(r["bytes_per_param"] * r["n"] / r["seconds"] / 1e9)
    markdown = (out / "results.md").read_text()
    assert stdout.strip() == markdown.strip()  # what is printed is what is saved
    for name in suite.OPTIMIZERS:
        assert markdown.count(f"| {name} | ") >= len(results["config"]["sizes"]), name
    assert "## Targets" in markdown


def test_smoke_has_the_torch_rows_when_torch_is_installed(smoke):
    _, _, results = smoke
    if importlib.util.find_spec("torch") is None:
        assert results["meta"]["torch"] is None
        return
    impls = {(r["optimizer"], r["impl"]) for r in results["one_tensor"]}
    for name in suite.OPTIMIZERS:
        assert {(name, "torch for-loop"), (name, "torch foreach")} <= impls
        assert ((name, "torch fused") in impls) == (name in suite.TORCH_FUSED)
    speeds = [r for r in results["one_tensor"] if "speed_vs_torch foreach" in r]
    assert len(speeds) == len(suite.OPTIMIZERS) * len(results["config"]["sizes"]) * len(
        results["config"]["backends"])


def test_smoke_measures_bandwidth_compile_memory_and_many_tensors(smoke):
    out, _, results = smoke
    bw = results["bandwidth"]
    assert bw["copy_gbps"] > 0 and bw["reference"] in bw["methods"]
    assert set(results["compile"]) == set(results["config"]["backends"])
    for r in results["compile"].values():
        assert r["cold"]["first_compile_ms"] > r["cold"]["cached_compile_ms"] > 0
    # The naive Adam allocates parameter-sized temporaries: the memory probe must see them.
    naive = [r for r in results["one_tensor"] if r["impl"] == "naive NumPy"]
    assert naive and all(r["peak_extra_frac"] > 1 for r in naive)
    layouts = {(r["impl"], r["layout"]) for r in results["many_tensors"]}
    for backend in results["config"]["backends"]:
        assert (f"optdsl {backend}", "one tensor") in layouts
        assert (f"optdsl {backend}", "separate") in layouts
        assert ((f"optdsl {backend}", "flattened") in layouts) == results["meta"]["flatten"]
    assert {t["status"] for t in results["targets"]} <= {"PASS", "MISS", "SKIP"}
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / "results.png").exists() == has_matplotlib


@pytest.mark.parametrize("text,n,label", [("1M", 1 << 20, "1M"), ("64k", 64 << 10, "64K"),
                                          ("1000", 1000, "1,000"), ("1024", 1024, "1K")])
def test_sizes_parse_with_binary_suffixes(text, n, label):
    assert suite.parse_size(text) == n
    assert suite.size_label(n) == label


@pytest.mark.parametrize("text", ["", "M", "-1M", "1.5M", "0"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError):
        suite.parse_size(text)


@pytest.mark.parametrize("name,hypers,expected", [
    ("Adam", {}, 28), ("Adam", {"amsgrad": True}, 36), ("AdamW", {}, 28),
    ("SGD", {"momentum": 0.9}, 20), ("SGD", {}, 12), ("RMSprop", {}, 20),
    ("RMSprop", {"centered": True, "momentum": 0.9}, 36), ("Adagrad", {}, 20),
    ("Adadelta", {}, 28),
])
def test_bytes_per_param_counts_reads_and_writes_of_each_state(name, hypers, expected):
    assert suite.bytes_per_param(name, hypers) == expected


def _results(ours: float, fused: float, gbps_frac: float) -> dict:
    n = 16 << 20
    row = {"optimizer": "Adam", "n": n, "impl": "optdsl fast", "seconds": ours,
           "frac_copy": gbps_frac, "gbps": 1.0, "speed_vs_torch fused": fused / ours}
    return {"one_tensor": [row], "many_tensors": [], "compile": {},
            "config": {"backends": ["fast"]}}


def test_targets_pass_and_miss_in_the_right_direction():
    faster = {t["target"]: t["status"] for t in suite.targets(_results(1.0, 2.0, 0.9))}
    slower = {t["target"]: t["status"] for t in suite.targets(_results(2.0, 1.0, 0.5))}
    key = "optdsl fast Adam 16M vs torch fused"
    assert (faster[key], slower[key]) == ("PASS", "MISS")
    key = "optdsl fast Adam 16M of copy bandwidth"
    assert (faster[key], slower[key]) == ("PASS", "MISS")
    assert faster["optdsl fast Adam 64M"] == "SKIP"  # not measured: skipped, not failed


# --- the GPU benchmark (runs only where there is a GPU: here, its arithmetic and report) ---

def test_gpu_bench_sizes_and_report():
    from benchmarks import gpu_bench

    assert gpu_bench.parse_size("10M") == 10**7 and gpu_bench.parse_size("1B") == 10**9
    assert gpu_bench.steps_for(10**9) >= 5 and gpu_bench.steps_for(10**7) <= 200
    row = {"optimizer": "Adam", "params": 10**8, "layout": "1 tensor", "optdsl_ms": 0.7,
           "torch_fused_ms": 0.84, "speedup_vs_torch": 1.2, "optdsl_bw_fraction": 0.93,
           "torch_fused_bw_fraction": 0.775}
    variant = {"optimizer": "Adam", "params": 10**8, "multi_rawkernel_ms": 0.75,
               "multi_rawkernel_bw_fraction": 0.868}
    text = gpu_bench.render({"gpu": "NVIDIA H200", "cupy": "14.2.0", "torch": "2.11",
                             "numpy": "2", "copy_TBps": 4.3, "seconds": 60, "rows": [row],
                             "variants": [variant]})
    assert "| Adam | 100,000,000 | 1 tensor | 0.700 | 0.840 | 1.20x | 93.0% | 77.5% |" in text
    assert "- multi_rawkernel: 0.750 ms, 86.8%" in text


def test_gpu_check_script_is_valid_bash():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert "pytest -m gpu" in text and "benchmarks.gpu_bench" in text and '"$out"' in text


def test_bench_diagnostics_runs_at_a_tiny_size():
    """benchmarks/bench_diagnostics.py end to end at 64K params (numbers not meaningful):
    every configuration's row, the reference at 1.00x."""
    proc = subprocess.run([sys.executable, "benchmarks/bench_diagnostics.py", "--n", "64K",
                           "--tensors", "3", "--rounds", "2", "--steps", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    names = [row.split(" | ")[0][2:] for row in rows[2:]]
    assert names == ["float32, diagnostics off", "float32, extras only",
                     "float32, diagnostics on", "float16, master_weights", "float16, plain"]
    assert rows[2].endswith("| 1.00x |") and "64K params in 3 flattened tensors" in proc.stdout


def test_bench_reductions_runs_at_a_tiny_size():
    """benchmarks/bench_reductions.py end to end at 64K params (numbers not meaningful):
    Adam, LAMB and the NumPy LAMB each get a row, Adam at 1.00x."""
    proc = subprocess.run([sys.executable, "benchmarks/bench_reductions.py", "--n", "64K",
                           "--tensors", "3", "--rounds", "2", "--steps", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    names = [row.split(" | ")[0][2:] for row in rows[2:]]
    assert names == ["Adam (one fused pass)", "LAMB (reduce pass + update)",
                     "LAMB in plain NumPy"]
    assert rows[2].endswith("| 1.00x |") and "64K float32 params in 3" in proc.stdout
