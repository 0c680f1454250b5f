"""python -m bench --loader: data-loader throughput (samples/s) of `gpuzarr.loader.PatchDataset`
against the same map-style dataset reading through tensorstore and zarr-python, with 0, 2 and 4
worker processes: a torch DataLoader when torch is installed (batches as tensors, through shared
memory), else a `multiprocessing` pool (batches as NumPy arrays, pickled back). See bench/README.md.

Every loader's first pass is the check: each batch's digest is compared with the digest of the
same patches regenerated from the dataset's generator (independently of every reader). Then
`--repeats` passes, the readers' order rotated each pass; workers are started (and their
imports paid) before anything is timed."""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import DatasetSpec, ensure, generate, make_specs, warm_page_cache
from .workloads import digest

HERE = Path(__file__).resolve().parent
READERS = ("gpuzarr", "tensorstore", "zarr-python")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench --loader",
                                description="Data-loader throughput: gpuzarr's PatchDataset against the same loop "
                                            "over tensorstore and zarr-python, with 0, 2 and 4 workers.")
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="where datasets are kept (default bench/.cache)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes (default bench/results)")
    p.add_argument("--ml-shape", default="16,1024,1024", help="Z,Y,X of the ML patch stack (default 16,1024,1024)")
    p.add_argument("--patches", type=int, default=512, help="patches per pass (default 512)")
    p.add_argument("--batch-size", type=int, default=32, help="patches per batch (default 32)")
    p.add_argument("--workers", default="0,2,4", help="worker counts (default 0,2,4)")
    p.add_argument("--readers", default=",".join(READERS), help=f"subset of {','.join(READERS)}")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per loader (default 3)")
    p.add_argument("--pool", choices=("auto", "torch", "mp"), default="auto",
                   help="workers: a torch DataLoader (auto: when torch imports) or a multiprocessing pool")
    p.add_argument("--context", choices=("spawn", "fork", "forkserver"), default="spawn",
                   help="how workers start (default spawn: tensorstore's threads do not survive fork)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patch positions and order")
    args = p.parse_args(argv)
    try:
        args.ml_shape = tuple(int(v) for v in args.ml_shape.split(","))
        args.workers = [int(v) for v in args.workers.split(",")]
        assert len(args.ml_shape) == 3 and min(args.workers) >= 0
    except (ValueError, AssertionError):
        p.error("--ml-shape must be Z,Y,X and --workers non-negative integers")
    args.readers = [r for r in args.readers.split(",") if r]
    bad = [r for r in args.readers if r not in READERS]
    if bad:
        p.error(f"unknown reader(s) {', '.join(bad)}; choose from {', '.join(READERS)}")
    if args.pool == "auto":
        args.pool = "torch" if _has_torch() else "mp"
    return args


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


# --------------------------------------------------------------------------- datasets


class PeerDataset:
    """PatchDataset's protocol (`__getitems__` returns the stacked batch) over a peer reader from
    bench/readers.py, opened in each process on first use: threads do not survive fork."""

    def __init__(self, name: str, spec: DatasetSpec, path: Path, windows: Any, as_torch: bool):
        self.name, self.spec, self.path, self.windows, self.as_torch = name, spec, path, windows, as_torch
        self._reader, self._pid = None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None, "_pid": None}

    def __len__(self) -> int:
        return len(self.windows)

    def __getitems__(self, indices: list[int]) -> Any:
        if self._pid != os.getpid():
            from .readers import make_readers

            (self._reader,) = make_readers([self.name], "cpu")
            self._reader.open(self.spec, self.path)
            self._pid = os.getpid()
        batch = np.stack(self._reader.read_many(self.windows[np.asarray(indices)].selections()))
        if self.as_torch:
            from gpuzarr.loader import to_torch

            return to_torch(batch)
        return batch


def make_dataset(name: str, spec: DatasetSpec, path: Path, windows: Any, as_torch: bool) -> Any:
    if name == "gpuzarr":
        import gpuzarr
        from gpuzarr.loader import PatchDataset

        return PatchDataset(gpuzarr.open(str(path), device="cpu"), windows, as_torch=as_torch)
    return PeerDataset(name, spec, path, windows, as_torch)


# --------------------------------------------------------------------------- loaders


_pool_dataset: Any = None


def _pool_init(dataset: Any) -> None:
    global _pool_dataset
    _pool_dataset = dataset


def _pool_batch(indices: list[int]) -> Any:
    return _pool_dataset.__getitems__(indices)


class Loader:
    """One dataset served by `workers` processes (0: in this process), started once; `run()`
    is one pass over `batches`, yielding each batch in order."""

    def __init__(self, dataset: Any, batches: list[list[int]], workers: int, pool: str, context: str):
        self.dataset, self.batches, self.workers, self.kind = dataset, batches, workers, pool
        self._pool = self._torch = None
        if workers and pool == "mp":
            self._pool = multiprocessing.get_context(context).Pool(workers, _pool_init, (dataset,))
        elif pool == "torch":
            from torch.utils.data import DataLoader

            from gpuzarr.loader import collate

            # more workers than cores is what the 4-worker row measures, not a mistake
            warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
            self._torch = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                                     multiprocessing_context=context if workers else None,
                                     persistent_workers=bool(workers))

    def run(self) -> Any:
        if self._torch is not None:
            return iter(self._torch)
        if self._pool is not None:
            return self._pool.imap(_pool_batch, self.batches)
        return (self.dataset.__getitems__(b) for b in self.batches)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
        self._torch = None  # its persistent workers end with the iterator


def check(loader: Loader, expected: list[str]) -> str | None:
    """The warm-up pass (starts the workers): None when every batch is the expected bytes."""
    got = [digest(np.asarray(b)) for b in loader.run()]
    bad = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    if len(got) != len(expected) or bad:
        return f"MISMATCH: {len(bad)} of {len(expected)} batches differ (first: batch {bad[0] if bad else '?'})"
    return None


def timed_pass(loader: Loader) -> float:
    t0 = time.perf_counter()
    for batch in loader.run():
        del batch
    return time.perf_counter() - t0


def reference_digests(spec: DatasetSpec, windows: Any, batches: list[list[int]]) -> list[str]:
    """Each batch's digest, regenerated from the dataset's generator (no reader involved)."""
    out = []
    for b in batches:
        sub = windows[np.asarray(b)]
        out.append(digest(np.stack([generate(spec, tuple(lo), tuple(hi))
                                    for lo, hi in zip(sub.starts.tolist(), sub.stops.tolist())])))
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    from gpuzarr.loader import random_windows

    args = parse_args(argv)
    spec = make_specs(ml_shape=args.ml_shape)["ml"]
    path, _ = ensure(spec, args.cache)
    warm_page_cache(path)
    window = (1, *(w for w in spec.window if w is not None))  # one 256² tile of one slice
    windows = random_windows(spec.shape, window, args.patches, seed=args.seed)
    order = np.random.default_rng(args.seed + 1).permutation(args.patches).tolist()
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    expected = reference_digests(spec, windows, batches)
    as_torch = args.pool == "torch"
    pool = (f"torch DataLoader ({args.context})" if as_torch else f"multiprocessing pool ({args.context})")
    _log(f"{spec.describe()}; {args.patches} patches of {'x'.join(map(str, window))}, batches of "
         f"{args.batch_size}; workers: {pool}")
    results: dict[str, dict[int, dict]] = {r: {} for r in args.readers}
    t_start = time.perf_counter()
    for workers in args.workers:
        loaders = {}
        for name in args.readers:
            entry = results[name][workers] = {"samples_s": [], "error": None}
            try:
                loaders[name] = Loader(make_dataset(name, spec, path, windows, as_torch), batches, workers,
                                       args.pool, args.context)
                entry["error"] = check(loaders[name], expected)
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
            if entry["error"]:
                _log(f"  {name}, {workers} workers: {entry['error']}")
        live = [n for n in args.readers if not results[n][workers]["error"]]
        for k in range(args.repeats):
            for name in live[k % max(1, len(live)):] + live[:k % max(1, len(live))]:
                results[name][workers]["samples_s"].append(args.patches / timed_pass(loaders[name]))
        for loader in loaders.values():
            loader.close()
        _log(f"  {workers} workers: " + "  ".join(f"{n} {_median(results[n][workers])}" for n in args.readers))
    print(f"loader benchmark: {spec.describe()}\n  {args.patches} patches of {'x'.join(map(str, window))} "
          f"uint16 per pass, batches of {args.batch_size}, workers: {pool}, median samples/s of "
          f"{args.repeats} passes ({os.cpu_count()} cores)\n")
    print(format_table(results, args.workers))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"loader-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "pool": pool,
                               "spec": spec.describe(), "results": results,
                               "seconds": round(time.perf_counter() - t_start, 1)}, indent=2))
    print(f"\nwrote {out}")
    return 1 if any((e["error"] or "").startswith("MISMATCH") for r in results.values() for e in r.values()) else 0


def _median(entry: dict) -> str:
    if entry["error"]:
        return "ERR" if not entry["error"].startswith("MISMATCH") else "MISMATCH"
    return f"{np.median(entry['samples_s']):.0f}"


def format_table(results: dict, workers: list[int]) -> str:
    head = f"{'reader':<14}" + "".join(f"{f'{w} workers':>12}" for w in workers)
    rows = [f"{name:<14}" + "".join(f"{_median(by[w]):>12}" for w in workers) for name, by in results.items()]
    return "\n".join([head, *rows])


if __name__ == "__main__":
    sys.exit(main())
