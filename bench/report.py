"""Output: the table on stdout, results/<timestamp>.json (every sample, machine, commit), and
results/<timestamp>.png (throughput per reader per workload)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .readers import READER_NAMES

FLOORS = ("floor:numcodecs", "floor:libzstd")
# targets for gpuzarr's CPU path (shared/BENCHMARKS.md)
TARGET_RATIO = {"full": 0.8, "window": 1.0}
TARGET_EFF = 0.7


# --------------------------------------------------------------------------- environment


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "processor": platform.processor()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        info["memory_bytes"] = psutil.virtual_memory().total
    except Exception:
        pass
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("gpuzarr", "numpy", "numcodecs", "zstandard", "zarr", "zarrs", "tensorstore", "psutil",
                "matplotlib", "cupy-cuda12x", "cupy-cuda13x", "nvidia-nvcomp-cu12", "nvidia-nvcomp-cu13"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_info(root: Path) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=30).stdout.rstrip()  # keep " M path"
        return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(status), "modified": [ln[3:] for ln in status.splitlines()],
                "subject": git("log", "-1", "--format=%s")}
    except Exception as exc:
        return {"error": str(exc)}


def commit_label(git: dict) -> str:
    """A run's commit as the headers print it: its first 10 digits, "(dirty)" if the tree had changes."""
    return (git.get("commit") or "?")[:10] + (" (dirty)" if git.get("dirty") else "")


def run_started() -> dict:
    """A run's document entries for the machine's load: the load average and the CPU time counters
    at its start (close_run adds their ends), and each core's speed (core_seconds)."""
    return {"load_average": {"start": os.getloadavg()}, "steal": {"ticks_start": _cpu_ticks()},
            "core_seconds": core_seconds(), "cores_at_once_seconds": core_seconds(at_once=True)}


def core_seconds(rounds: int = 5, at_once: bool = False) -> dict[int, float]:
    """Per core this process may run on, the thread CPU seconds of one fixed libzstd decode (1 MiB,
    the best of `rounds`) on a thread pinned there. Cores of one machine are not always equal: on
    the 2-core VMs here, for a while, core 0 decoded zstd 1.55x slower than core 1 (alone or with
    core 1 busy; equal again a quarter of an hour later), and a read whose last parts are split equally
    between threads ends on the slow one (hybrid CPUs' efficiency cores do the same). `at_once`:
    every core's thread decoding at the same time (the median of `rounds`), as a read's threads
    do: on those VMs two at once each took 1.06x their time alone in one phase and 1.76x in
    another (cores that share one physical core, or a busy host), where splitting a read over
    both saved 0.70-0.74x of its time and then 0.94-0.96x. Taken once, at the run's start."""
    import threading

    import numpy as np
    import zstandard

    if not hasattr(os, "sched_setaffinity"):
        return {}
    data = np.random.default_rng(0).integers(0, 64, 1 << 20, dtype=np.uint8).tobytes()
    frame = zstandard.ZstdCompressor(level=3).compress(data)
    out: dict[int, float] = {}

    cpus = sorted(os.sched_getaffinity(0))
    start_together = threading.Barrier(len(cpus) if at_once else 1)

    def probe(cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only
        decoder = zstandard.ZstdDecompressor()
        start_together.wait()
        taken = []
        for _ in range(rounds):
            start = time.thread_time()
            decoder.decompress(frame)
            taken.append(time.thread_time() - start)
        out[cpu] = round(float(np.median(taken)) if at_once else min(taken), 6)

    threads = [threading.Thread(target=probe, args=(cpu,)) for cpu in cpus]
    for group in ([threads] if at_once else [[t] for t in threads]):
        for thread in group:
            thread.start()
        for thread in group:
            thread.join()
    return out


def close_run(doc: dict, t_start: float) -> None:
    """Stamp a finished run's document: the load average at its end, the share of the machine's
    CPU time its hypervisor stole over the run, and the seconds it took."""
    doc["load_average"]["end"] = os.getloadavg()
    start, end = doc["steal"]["ticks_start"], _cpu_ticks()
    doc["steal"]["share"] = None if start is None or end is None or end[0] <= start[0] else \
        round((end[1] - start[1]) / (end[0] - start[0]), 3)
    doc["seconds"] = round(time.perf_counter() - t_start, 1)


def machine_load(doc: dict) -> str:
    """The load of a closed run, for its header line. Steal (time a shared virtual machine's
    hypervisor gave its CPUs to others) makes a run noisy: on the 2-core machines it came in
    phases where one thread's pure libzstd decode took 1.4x its CPU time in wall time, and a
    read's threads waited on each other longer; ratios within one run (readers alternating)
    still compare, figures across runs less so."""
    load = doc["load_average"]
    steal = doc["steal"].get("share")
    cores = list(doc.get("core_seconds", {}).values())
    spread = max(cores) / min(cores) if cores and min(cores) > 0 else 1.0
    together = list(doc.get("cores_at_once_seconds", {}).values())
    slowed = sum(together) / sum(cores) if len(together) > 1 and len(together) == len(cores) and min(cores) > 0 else 1.0
    return (f"load avg {load['start'][0]:.2f} -> {load['end'][0]:.2f}"
            + ("" if steal is None else f"  steal {steal:.0%}" + (" (a shared machine: noisy)" if steal >= 0.05 else ""))
            + (f"  cores unequal: the slowest took {spread:.2f}x the fastest's time" if spread >= 1.15 else "")
            + (f"  cores at once: each took {slowed:.2f}x its time alone (threads gain less)" if slowed >= 1.3 else ""))


def _cpu_ticks() -> tuple[int, int] | None:
    """(all CPU time, the part stolen) so far, in clock ticks, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(ticks), ticks[7]


# --------------------------------------------------------------------------- table


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "-"
    if entry.get("error"):
        return "ERR" if not entry["error"].startswith("MISMATCH") else "MISMATCH"
    return _ms(entry.get("median_s"))


def derived(row: dict) -> dict:
    """gpuzarr/tensorstore ratio, floor, efficiency, targets for one dataset x workload row."""
    med = {k: v.get("median_s") for k, v in row["readers"].items() if not v.get("error")}
    floors = {k: v.get("median_s") for k, v in row.get("floors", {}).items() if not v.get("error")}
    g, t = med.get("gpuzarr"), med.get("tensorstore")
    out: dict = {"ratio": g / t if g and t else None}
    live = [v for v in floors.values() if v]
    out["floor_s"] = min(live) if live else None
    out["floor_variant"] = min(floors, key=lambda k: floors[k] or 1e99) if live else None
    out["efficiency"] = out["floor_s"] / g if out["floor_s"] and g else None
    misses = []
    if row["workload"] in TARGET_RATIO and out["ratio"] is not None and out["ratio"] > TARGET_RATIO[row["workload"]]:
        misses.append(f"ratio>{TARGET_RATIO[row['workload']]}")
    if row["workload"] == "full" and out["efficiency"] is not None and out["efficiency"] < TARGET_EFF:
        misses.append(f"eff<{TARGET_EFF}")
    checked = row["workload"] in TARGET_RATIO and out["ratio"] is not None
    out["target"] = ("miss: " + ", ".join(misses)) if misses else ("ok" if checked else "")
    return out


def ratios(row: dict, base: str = "tensorstore") -> dict:
    """Every reader's median over `base`'s (<1: faster than base), plus zarr-python's API with
    gpuzarr's pipeline over zarr-python's default pipeline ("zarr-python+gpuzarr/zarr-python")."""
    med = {k: v.get("median_s") for k, v in row["readers"].items() if not v.get("error")}
    out = {f"{k}/{base}": (m / med[base] if m and med.get(base) else None) for k, m in med.items() if k != base}
    zg, zp = med.get("zarr-python+gpuzarr"), med.get("zarr-python")
    if zg and zp:
        out["zarr-python+gpuzarr/zarr-python"] = zg / zp
    return out


def format_ratio_table(doc: dict) -> str:
    readers = [r for r in READER_NAMES if r in doc["readers"] and r != "tensorstore"]
    if "tensorstore" not in doc["readers"]:
        readers = []
    extra = "zarr-python+gpuzarr" in doc["readers"] and "zarr-python" in doc["readers"]
    if not readers and not extra:
        return ""
    head = ["dataset", "workload", "time per", *readers]
    if extra:
        head.append("zp+gz / zp")
    rows = []
    for row in doc["results"]:
        r = ratios(row)
        cells = [row["dataset"], row["workload"], row["unit"], *(_ratio(r.get(f"{n}/tensorstore")) for n in readers)]
        if extra:
            cells.append(_ratio(r.get("zarr-python+gpuzarr/zarr-python")))
        rows.append(cells)
    return ("time / tensorstore's time (<1: faster than tensorstore); zp+gz / zp = zarr-python with gpuzarr's "
            "codec pipeline / zarr-python with its default BatchedCodecPipeline\n" + _grid(head, rows))


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_table(doc: dict) -> str:
    readers = [r for r in READER_NAMES if r in doc["readers"]]
    head = ["dataset", "workload", "time per", *readers, "floor:nc", "floor:zstd", "gz/ts", "eff", "host us/chunk",
            "target"]
    rows = []
    notes = []
    for row in doc["results"]:
        d = derived(row)
        host = row.get("host_cost") or {}
        host_cell = f"{host['us_per_chunk']['host']:.1f}" if "us_per_chunk" in host else (
            "n/a" if host else "-")
        floors = row.get("floors", {})
        rows.append([row["dataset"], row["workload"], row["unit"],
                     *(_cell(row["readers"].get(r)) for r in readers),
                     _cell(floors.get("floor:numcodecs")), _cell(floors.get("floor:libzstd")),
                     f"{d['ratio']:.2f}" if d["ratio"] is not None else "-",
                     f"{d['efficiency']:.2f}" if d["efficiency"] is not None else "-",
                     host_cell, d["target"]])
        for name, e in list(row["readers"].items()) + list(floors.items()):
            if e.get("error"):
                notes.append(f"  {row['dataset']}/{row['workload']} {name}: {e['error']}")
        if host.get("error"):
            notes.append(f"  {row['dataset']}/{row['workload']} host cost: {host['error']}")
    text = _grid(head, rows)
    text += ("\n\ntimes: medians in ms (window: per window, median over windows x repeats; batch: all patches; "
             "scan: all chunks one by one)\n"
             "gz/ts = gpuzarr / tensorstore (<1: gpuzarr faster); eff = floor / gpuzarr, floor = the faster of "
             "floor:nc (numcodecs Zstd) and floor:zstd (python-zstandard), all cores, frames in memory\n"
             f"targets: full gz/ts <= {TARGET_RATIO['full']} and eff >= {TARGET_EFF}; window gz/ts <= "
             f"{TARGET_RATIO['window']}")
    ratio_table = format_ratio_table(doc)
    if ratio_table:
        text += "\n\n" + ratio_table
    fallbacks = doc.get("gpuzarr_pipeline_fallbacks")
    if fallbacks:
        notes.append("  zarr-python+gpuzarr: reads handed to zarr-python's own pipeline (gpuzarr.zarr_pipeline."
                     "FALLBACKS): " + ", ".join(f"{k} x{v}" for k, v in fallbacks.items()))
    host_rows = []
    for row in doc["results"]:
        h = row.get("host_cost") or {}
        if "us_per_chunk" not in h:
            continue
        u = h["us_per_chunk"]
        host_rows.append([row["dataset"], row["workload"], str(h["chunks"]), str(h["reads"]),
                          *(f"{u[k]:.1f}" for k in ("plan", "locate_cold", "locate_warm", "fetch", "host", "decode")),
                          f"{h['us_per_read']['host']:.0f}",
                          f"{h['us_per_read']['small_host']:.0f}" if "small_host" in h["us_per_read"] else "-"])
    if host_rows:
        text += ("\n\ngpuzarr host cost per chunk (us; run step by step, medians; host = plan + locate_warm + fetch; "
                 "small = reads of a few chunks, which skip these phases: their time less decode)\n")
        text += _grid(["dataset", "workload", "chunks", "reads", "plan", "locate_cold", "locate_warm", "fetch", "host",
                       "decode", "host us/read", "small us/read"], host_rows)
    mem_rows = []
    for ds, per in (doc.get("memory") or {}).items():
        for name in readers:
            m = per.get(name)
            if not m:
                continue
            if m.get("error"):
                mem_rows.append([ds, name, "-", "ERR", "", "", "", ""])
                notes.append(f"  {ds}/memory {name}: {m['error']}")
                continue
            mib = lambda v: f"{v / 2**20:.1f}"  # noqa: E731
            budget = m["out_nbytes"] + 2 * m["batch_bytes"] if "batch_bytes" in m else None
            verdict = ("" if budget is None else ("ok" if m["rss_peak_delta"] <= budget * 1.05 else "over"))
            mem_rows.append([ds, name, mib(m["out_nbytes"]), mib(m["rss_peak_delta"]), mib(m["maxrss_delta"]) if m.get("maxrss_delta") is not None else "-",
                             mib(m["tracemalloc_peak"]), mib(budget) if budget else "-", verdict])
    if mem_rows:
        text += ("\n\npeak memory of one full read (MiB; fresh process per reader; RSS delta sampled by psutil every "
                 "0.5 ms, maxrss = kernel high-water mark (VmHWM, reset before the read) delta, traced = tracemalloc peak; gpuzarr budget = output + "
                 "2 compressed batches; within = rss peak <= budget + 5%)\n")
        text += _grid(["dataset", "reader", "output", "rss peak", "maxrss", "traced", "budget", "within"], mem_rows)
    if notes:
        text += "\n\nerrors (not timed) and notes:\n" + "\n".join(notes)
    return text


def _grid(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i > 2 else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


# --------------------------------------------------------------------------- files


def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=_default))


def _default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in doc["results"]))
    readers = [r for r in READER_NAMES if r in doc["readers"]]
    series = readers + ["floor"]
    colors = {"gpuzarr": "#d62728", "tensorstore": "#1f77b4", "zarrs-python": "#ff7f0e",
              "zarr-python+gpuzarr": "#9467bd", "zarr-python": "#2ca02c",
              "floor": "#7f7f7f"}
    fig, axes = plt.subplots(len(datasets), 1, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    for ax, ds in zip(axes[:, 0], datasets):
        rows = [r for r in doc["results"] if r["dataset"] == ds]
        width = 0.8 / len(series)
        x = np.arange(len(rows))
        top = 0.0
        for k, name in enumerate(series):
            vals, labels = [], []
            for row in rows:
                if name == "floor":
                    d = derived(row)
                    sec, err = d["floor_s"], None
                else:
                    e = row["readers"].get(name, {})
                    sec, err = e.get("median_s"), e.get("error")
                if err or not sec:
                    vals.append(0.0)
                    labels.append("ERR" if err else "")
                else:
                    gbs = row["op_nbytes"] / sec / 1e9
                    vals.append(gbs)
                    labels.append(f"{gbs:.2f}" if gbs < 10 else f"{gbs:.0f}")
                    top = max(top, gbs)
            pos = x - 0.4 + width * (k + 0.5)
            bars = ax.bar(pos, vals, width, label=name, color=colors.get(name),
                          hatch="//" if name == "floor" else None, edgecolor="white" if name != "floor" else "black",
                          linewidth=0.5)
            for b, lab in zip(bars, labels):
                if lab:
                    ax.annotate(lab, (b.get_x() + b.get_width() / 2, max(b.get_height(), 1e-3)),
                                ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2),
                                textcoords="offset points", color="red" if lab == "ERR" else "black")
        ax.set_yscale("log")
        ax.set_ylim(bottom=min(0.01, top / 1000 if top else 0.01), top=top * 8 if top else 1)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r['workload']}\n(per {r['unit']})" for r in rows], fontsize=9)
        ax.set_ylabel("GB/s of output (log)")
        ax.set_title(f"{ds}: {doc['datasets'][ds]['describe']}", fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0, 0].legend(ncol=min(len(series), 3), fontsize=8, loc="upper right")
    m = doc["machine"]
    fig.suptitle(f"gpuzarr bench {doc['timestamp']}  commit {commit_label(doc.get('git', {}))}  device {doc['args']['device']}\n"
                 f"{m.get('processor', '?')}, {m.get('affinity')} cores; medians of {doc['args']['repeats']}; "
                 "floor = libzstd decompression only", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
