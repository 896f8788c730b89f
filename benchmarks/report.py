"""The suite's results as Markdown, JSON and (with matplotlib) a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import bench_compile
from benchmarks.suite import TORCH_MODES, size_label


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def _bytes(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0%}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def target_lines(results: dict) -> list[str]:
    return [f"{t['status']:4s}  {t['target']}: {t['measured']} (target {t['goal']})"
            for t in results["targets"]]


def _header(results: dict) -> list[str]:
    m = results["meta"]
    versions = ", ".join(f"{k} {m[k]}" for k in ("python", "numpy", "torch", "numba")
                         if m[k] is not None)
    lines = [
        "# optdsl benchmarks", "",
        f"- Run: {m['date']}, `{m['command']}`, {m['seconds']:.0f} s",
        "- Other processes' share of the CPUs: " + ", ".join(
            f"{k} {_share(v)}" for k, v in results["others"].items()),
        f"- Machine: {m['cpu']}, {m['cores']} cores; {m['threads']} threads for optdsl, "
        "torch and the bandwidth test",
        f"- Software: {versions}; optdsl {m['optdsl']}"
        + (f" at {m['commit']}" if m["commit"] else ""),
        f"- Backends run: {', '.join(results['config']['backends'])} (available: "
        f"{', '.join(m['available_backends'])}); optdsl.flatten: "
        f"{'yes' if m['flatten'] else 'not in this build'}",
    ]
    if results["notes"]:
        lines += ["", "Notes:", *(f"- {n}" for n in results["notes"])]
    return lines


def _bandwidth(results: dict) -> list[str]:
    bw = results["bandwidth"]
    rows = [[name + (" (reference)" if name == bw["reference"] else ""),
             f"{r['copy_gbps']:.1f}", f"{r['triad_gbps']:.1f}"]
            for name, r in bw["methods"].items()]
    return ["", f"## Memory bandwidth: {bw['threads']} threads, best of {bw['repeats']}",
            "", f"STREAM-style over float32 arrays of {_bytes(bw['array_bytes'])} each: copy "
            "`b[:] = a` counts 8 bytes per element, triad `a = b + s*c` 12. The reference "
            "copy bandwidth (the highest copy) is what '% copy' divides by.", "",
            *_table(["method", "copy GB/s", "triad GB/s"], rows)]


def _one_tensor(results: dict) -> list[str]:
    rows = results["one_tensor"]
    lines = ["", "## Step time: one float32 tensor", "",
             "Median of the timed steps (warm-up steps first). GB/s = bytes per parameter "
             "x N / time, with bytes per parameter = (3 + 2 x state buffers) x 4: each step "
             "reads p, g and every state and writes p and every state. Speed vs torch = "
             "torch's time / optdsl's (above 1: optdsl is faster). Extra memory: "
             "tracemalloc's peak during one step after warm-up (NumPy's allocations; torch's "
             "are not traced), and as a fraction of the parameter's bytes."]
    for n in dict.fromkeys(r["n"] for r in rows):
        table = []
        for r in (r for r in rows if r["n"] == n):
            extra = "n/a"
            if "peak_extra_bytes" in r:
                extra = f"{_bytes(r['peak_extra_bytes'])} ({r['peak_extra_frac']:.1%})"
            speeds = [f"{r[f'speed_vs_{m}']:.2f}x" if f"speed_vs_{m}" in r else ""
                      for m in TORCH_MODES]
            table.append([r["optimizer"], str(r["bytes_per_param"]), r["impl"],
                          _ms(r["seconds"]), f"{r['gbps']:.1f}", f"{r['frac_copy']:.0%}",
                          *speeds, extra])
        repeats = sorted({len(r["times"]) for r in rows if r["n"] == n})
        others = results["others"].get(f"N = {size_label(n)}")
        lines += ["", f"### N = {size_label(n)} ({n:,} parameters), median of "
                  f"{'/'.join(map(str, repeats))} steps; other processes: {_share(others)} "
                  "of the CPUs", "",
                  *_table(["optimizer", "B/param", "implementation", "ms/step", "GB/s",
                           "% copy", *(f"vs {m}" for m in TORCH_MODES), "extra memory"],
                          table)]
    return lines


def _many(results: dict) -> list[str]:
    rows = results["many_tensors"]
    if not rows:
        return []
    r0 = rows[0]
    table = [[r["impl"], r["layout"], _ms(r["seconds"]), f"{r['vs_one_tensor']:.2f}x"]
             for r in rows]
    return ["", f"## Many tensors: Adam, {r0['tensors']} x {r0['elements']} float32 "
            f"against one tensor of {size_label(r0['tensors'] * r0['elements'])}", "",
            "'x one tensor' is the time over the same implementation's time on one tensor "
            "holding the same elements. 'separate': a Param per tensor; 'flattened': the "
            "same Params after `optdsl.flatten` (one buffer, one kernel call per step).", "",
            *_table(["implementation", "layout", "ms/step", "x one tensor"], table)]


def _compile(results: dict) -> list[str]:
    per = results["compile"]
    if not per:
        return []
    labels = [label for label, _ in bench_compile.rows(next(iter(per.values())))]
    values = {b: dict(bench_compile.rows(r)) for b, r in per.items()}
    table = [[label, *(("" if values[b][label] is None else f"{values[b][label]:.3f}")
                       for b in per)] for label in labels
             if any(values[b][label] is not None for b in per)]
    lines = ["", "## Compile time: Adam, milliseconds", "",
             "Each column's first two runs are fresh processes sharing a temporary cache "
             "directory (optdsl's and numba's) that starts empty. 'cached' rows are the best "
             "of 20. The JIT rows are the kernel's reported compile time (after numba's "
             "start-up, its own row), else the first step's time less the second's.", "",
             *_table(["stage", *per], table)]
    for backend, r in per.items():
        for run in ("cold", "warm_disk"):
            stats = r[run].get("kernel_stats")
            if stats:
                lines.append(f"\n{backend} kernel stats ({run}): `{json.dumps(stats)}`")
    return lines


def markdown(results: dict) -> str:
    lines = [*_header(results), *_bandwidth(results), *_one_tensor(results),
             *_many(results), *_compile(results),
             "", "## Targets (measured in this run, never asserted)", "", "```",
             *target_lines(results), "```", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> bool:
    """GB/s of each implementation per optimizer, a panel per size, the copy bandwidth as
    a line. False (and no file) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = results["one_tensor"]
    sizes = list(dict.fromkeys(r["n"] for r in rows))
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False,
                             sharey=True)
    width = 0.8 / len(impls)
    for ax, n in zip(axes[0], sizes, strict=True):
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for i, name in enumerate(names):
                r = next((r for r in rows if (r["n"], r["optimizer"], r["impl"])
                          == (n, name, impl)), None)
                if r is not None:
                    xs.append(i + (k - (len(impls) - 1) / 2) * width)
                    ys.append(r["gbps"])
            ax.bar(xs, ys, width, label=impl)
        ax.axhline(results["bandwidth"]["copy_gbps"], color="black", linestyle="--",
                   linewidth=1, label="copy bandwidth")
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set_title(f"N = {size_label(n)}, float32")
    axes[0][0].set_ylabel("GB/s (bytes per parameter x N / step time)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(results: dict, out_dir: Path) -> list[Path]:
    """results.md, results.json and (with matplotlib) results.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js, png = (out_dir / f"results.{ext}" for ext in ("md", "json", "png"))
    md.write_text(markdown(results))
    js.write_text(json.dumps(results, indent=1) + "\n")
    written = [md, js]
    if plot(results, png):
        written.append(png)
    return written
