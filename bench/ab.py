"""python -m bench.ab REV: the working tree's gpuzarr against gpuzarr at git revision REV (and
tensorstore as the yardstick), in one process, on the benchmark's datasets and workloads.

Differences of a few percent decide whether a change stays, and these machines are noisy, so:
both versions run in the same process on the same warm files; every round runs each reader
once, in an order rotated round by round (whoever runs right after tensorstore is ~10% slower);
the figure is the median over many rounds (default 15). Two copies of identical code differ by
up to about 4% here: smaller differences are noise.

REV is checked out with `git archive` into a temporary directory as the package `gpuzarr_base`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from . import report
from .__main__ import HERE, ROOT, _list, _log

BASE = "gpuzarr_base"


def snapshot(rev: str, into: Path) -> str:
    """gpuzarr at `rev` as the importable package `gpuzarr_base` under `into`; returns the commit."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "gpuzarr"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    package = into / BASE
    (into / "gpuzarr").rename(package)
    for source in package.rglob("*.py"):  # the package's absolute imports of itself
        text = source.read_text()
        source.write_text(re.sub(r"\b(from|import) gpuzarr\b", rf"\1 {BASE}", text))
    why = _build_host_lib(commit, into, package)
    if why:
        _log(f"gpuzarr@{commit[:10]} runs its per-chunk loops in Python: {why}")
    return commit


def _build_host_lib(commit: str, into: Path, package: Path) -> str | None:
    """Compile the revision's host library (setup.py's sources and flags) into its package, as
    `pip install` does, so that both sides run it; why not, or None."""
    import sysconfig

    if subprocess.run(["git", "cat-file", "-e", f"{commit}:kernels/host_scatter.cpp"], cwd=ROOT,
                      capture_output=True).returncode:
        return "it has no host library"
    archive = subprocess.run(["git", "archive", commit, "kernels"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    # every host_*.cpp of the revision (setup.py's sources: two up to host lib version 14, then host_blosc.cpp)
    sources = sorted(str(path.relative_to(into)) for path in (into / "kernels").glob("host_*.cpp"))
    target = package / f"_host_lib{sysconfig.get_config_var('EXT_SUFFIX')}"
    try:
        built = subprocess.run(["c++", "-std=c++17", "-O2", "-shared", "-fPIC", f"-I{into / 'kernels'}",
                                *(str(into / s) for s in sources), "-o", str(target)], capture_output=True, text=True)
    except FileNotFoundError:
        return "no C++ compiler (c++) here"
    return None if built.returncode == 0 else f"its build failed: {built.stderr.strip()[:300]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("rev", help="git revision to compare the working tree against (e.g. HEAD, HEAD~1, a commit)")
    p.add_argument("--datasets", nargs="+", default=["2d", "3d", "v2", "ml"], metavar="NAME")
    p.add_argument("--workloads", nargs="+", default=["full", "window"], metavar="NAME")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per workload (default 15)")
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="generated datasets (default bench/.cache)")
    p.add_argument("--windows", type=int, default=16, help="windows timed in the window workload (default 16)")
    p.add_argument("--patches", type=int, default=256, help="patches in the batch workload (default 256)")
    args = p.parse_args(argv)

    from .datasets import ensure, make_specs, warm_page_cache
    from .readers import GpuzarrReader, TensorstoreReader
    from .workloads import check, make_workload, time_all

    specs = make_specs()
    started, doc = time.perf_counter(), report.run_started()  # the machine's state, for the last line
    with tempfile.TemporaryDirectory(prefix="gpuzarr-ab-") as tmp:
        commit = snapshot(args.rev, Path(tmp))
        sys.path.insert(0, tmp)
        names = ("gpuzarr", f"gpuzarr@{commit[:10]}", "tensorstore")
        print(f"A = working tree, B = {args.rev} ({commit[:10]}); medians of {args.rounds} rotated rounds, ms")
        print(f"{'dataset':8} {'workload':8} {'A':>9} {'B':>9} {'ts':>9} {'A/B':>6} {'A/ts':>6} {'B/ts':>6}")
        for name in _list(args.datasets):
            spec = specs[name]
            path, _ = ensure(spec, args.cache)
            warm_page_cache(path)
            readers = [GpuzarrReader(), GpuzarrReader(module=BASE, name=names[1]), TensorstoreReader()]
            for r in readers:
                r.open(spec, path)
            for wname in _list(args.workloads):
                wl = make_workload(wname, spec, args.windows, args.patches, 0)
                outcomes = check(readers, wl, _log)
                time_all(readers, wl, outcomes, args.rounds)
                a, b, ts = (outcomes[n].median for n in names)
                if None in (a, b, ts):
                    print(f"{name:8} {wname:8} " + "; ".join(f"{n}: {outcomes[n].error}" for n in names
                                                            if outcomes[n].error))
                    continue
                print(f"{name:8} {wname:8} {a * 1e3:9.3f} {b * 1e3:9.3f} {ts * 1e3:9.3f} "
                      f"{a / b:6.3f} {a / ts:6.2f} {b / ts:6.2f}")
    report.close_run(doc, started)
    print(report.machine_load(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
