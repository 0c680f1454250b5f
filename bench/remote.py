"""python -m bench --remote: reads from object storage at cloud latency, readers side by side.

A local S3-compatible server (`Server`: a small asyncio HTTP server in its own process answering
path-style GET/HEAD with Range, and ListObjects, from the dataset files loaded into memory) adds a
fixed latency to every request before it answers (the "proxy": `--latency-ms`, default 20; a list
runs each in turn) and counts requests, bytes sent and requests in flight. moto's own server
answers a few hundred requests a second at best on these machines, ~3-4 ms of its CPU each
(`--server-check` measures it next to this one: 150-175 requests/s), which would dominate every
small-object read; this one answers ~2000-3600 a second at ~80-120 us of its CPU each. The window
is timed in 3x the rounds (it is short, the machines noisy). Every sample goes to
bench/results/remote-<timestamp>.json. See bench/README.md, "Object storage".

Three data sets (issue 13's), written with zarr-python into the cache and served from there:
`sharded` (v3, 2048^2 uint16, shards 512^2, inner chunks 64^2, zstd 3), `chunked` (v3, 1024^2,
256 chunk objects of 64^2, zstd 3), `v2` (Zarr v2, 1024^2, 256 chunk files of 64^2, blosc-lz4 5 +
shuffle); on request, `large` (v3 512^3 uint16, shards 256^3, chunks 64^3, zstd 3: ~155 MiB in
eight shard objects, where parts and pieces matter). Workloads: `full` (the whole array),
`window` (one unaligned 256^2 window; 256^3 in 3-D), `batch`
(`--patches` random unaligned 256^2 patches: gpuzarr `read_batch`, tensorstore `ts.Batch`,
zarr-python `asyncio.gather`).

Readers (all in this process, alternating, the order rotated every round): gpuzarr through obstore
(an s3:// URL), gpuzarr with its shard-index cache off (sharded set only), gpuzarr through
fsspec/s3fs (an fsspec mapper forces it), tensorstore (s3 kvstore, cache pool 0), zarr-python with
gpuzarr's codec pipeline and with its default one (both on zarr's FsspecStore over s3fs). Every
reader's result is compared bit for bit with the local source (the generator's data) before it
is timed (a mismatch: ERR, exit status 1). The floor: one GET per object the workload needs (for shards: the span of the
inner chunks it needs, shard indexes parsed from the local files beforehand), all issued at once
through obstore with no bound, bytes only, no decoding, timed in the same rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import gc
import hashlib
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import numpy as np

from .readers import zarr_gather

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUCKET = "bench"
REGION = "us-east-1"


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# =========================================================================== the server

# shared counters (int64), written by the server's one thread, read (and PEAK, LATENCY set) by us
REQUESTS, GETS, HEADS, LISTS, OTHER, BYTES, ACTIVE, PEAK, NOT_FOUND, LATENCY_US, CONNECTIONS, JITTER_US, DRAW = range(13)
N_STATS = 13


class _Http(asyncio.Protocol):
    """One client connection: HTTP/1.1 keep-alive, requests answered in order."""

    def __init__(self, server: _State):
        self.s = server
        self.buf = b""
        self.transport: Any = None
        self.skip = 0  # request body bytes still to drop (we take no uploads)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.s.stats[CONNECTIONS] += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            if self.skip:
                n = min(self.skip, len(buf))
                buf, self.skip = buf[n:], self.skip - n
                if self.skip:
                    break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buf = buf[:end], buf[end + 4:]
            self._request(head)
        self.buf = buf

    def _request(self, head: bytes) -> None:
        s = self.s
        lines = head.decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ", 2)[:2]
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        self.skip = int(headers.get("content-length") or 0)
        st = s.stats
        st[REQUESTS] += 1
        st[ACTIVE] += 1
        if st[ACTIVE] > st[PEAK]:
            st[PEAK] = st[ACTIVE]
        response = s.answer(method, target, headers)
        delay = st[LATENCY_US] + (s.jitter_us(target, st[JITTER_US], st[DRAW]) if st[JITTER_US] else 0)
        if delay > 0:
            s.loop.call_later(delay / 1e6, self._send, response)
        else:
            self._send(response)

    def _send(self, response: tuple[bytes, Any]) -> None:
        head, body = response
        st = self.s.stats
        st[ACTIVE] -= 1
        if self.transport.is_closing():
            return
        if body is None or not len(body):
            self.transport.write(head)
            return
        n = len(body)
        st[BYTES] += n
        if n <= 1 << 18:  # one send: a copy of a small body costs less than a second syscall
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)


class _State:
    def __init__(self, objects: dict[str, bytes], stats: Any):
        self.objects = objects
        self.etags = {k: '"' + hashlib.md5(v).hexdigest() + '"' for k, v in objects.items()}
        modified = email.utils.formatdate(1_700_000_000, usegmt=True)
        # each object's own response headers, formatted once
        self.common = {k: (f"Accept-Ranges: bytes\r\nETag: {self.etags[k]}\r\nLast-Modified: {modified}\r\n"
                           "Content-Type: binary/octet-stream\r\n") for k in objects}
        self.stats = stats
        self.loop: Any = None
        self.buckets = {k.split("/", 1)[0] for k in objects} | {BUCKET}
        self._date = (0, "")

    @staticmethod
    def jitter_us(target: str, mean_us: int, draw: int) -> float:
        """The jitter of a request for `target` (its path: every request for one object alike) in
        draw `draw`: one exponential draw per object and draw, so readers timed in the same round
        wait alike for the same objects (see Server.jitter_ms)."""
        path = target.split("?", 1)[0]
        return random.Random(f"{path}#{draw}").expovariate(1.0 / mean_us)

    def _head(self, status: str, headers: dict | str) -> bytes:
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        if isinstance(headers, dict):
            headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (f"HTTP/1.1 {status}\r\nDate: {self._date[1]}\r\nServer: bench-s3\r\nx-amz-request-id: 0\r\n"
                f"{headers}\r\n").encode("latin-1")

    def _error(self, status: str, code: str, message: str, head_only: bool) -> tuple[bytes, Any]:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}'
                f"</Message><RequestId>0</RequestId></Error>").encode()
        return (self._head(status, {"Content-Type": "application/xml", "Content-Length": len(body)}),
                None if head_only else body)

    def answer(self, method: str, target: str, headers: dict) -> tuple[bytes, Any]:
        st = self.stats
        if "?" in target or "%" in target or "#" in target:
            parts = urlsplit(target)
            path, query = unquote(parts.path).lstrip("/"), parts.query
        else:  # the usual GET of an object: nothing to parse
            path, query = target.lstrip("/"), ""
        bucket, _, key = path.partition("/")
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            st[OTHER] += 1
            return self._error("501 Not Implemented", "NotImplemented", f"{method} is not served here", head_only)
        if bucket not in self.buckets:
            st[OTHER] += 1
            st[NOT_FOUND] += 1
            return self._error("404 Not Found", "NoSuchBucket", bucket, head_only)
        if not key:  # the bucket: HEAD (region discovery) or a listing
            if head_only:
                st[HEADS] += 1
                return self._head("200 OK", {"x-amz-bucket-region": REGION, "Content-Length": 0}), None
            st[LISTS] += 1
            return self._list(bucket, parse_qs(query))
        st[HEADS if head_only else GETS] += 1
        data = self.objects.get(path)
        if data is None:
            st[NOT_FOUND] += 1
            return self._error("404 Not Found", "NoSuchKey", "The specified key does not exist.", head_only)
        size = len(data)
        common = self.common[path]
        spec = headers.get("range")
        if spec is None or head_only:
            return self._head("200 OK", f"{common}Content-Length: {size}\r\n"), None if head_only else memoryview(data)
        span = _parse_range(spec, size)
        if span is None:
            return self._error("416 Requested Range Not Satisfiable", "InvalidRange",
                               "The requested range is not satisfiable", False)
        start, stop = span
        return (self._head("206 Partial Content", f"{common}Content-Length: {stop - start}\r\n"
                                                  f"Content-Range: bytes {start}-{stop - 1}/{size}\r\n"),
                memoryview(data)[start:stop])

    def _list(self, bucket: str, query: dict) -> tuple[bytes, Any]:
        """ListObjects (v1 and v2 alike): everything in one page."""
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        keys, prefixes = [], set()
        for name in sorted(self.objects):
            b, _, key = name.partition("/")
            if b != bucket or not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
            else:
                keys.append(key)
        items = "".join(f"<Contents><Key>{escape(k)}</Key><LastModified>2023-11-14T22:13:20.000Z</LastModified>"
                        f"<ETag>{escape(self.etags[f'{bucket}/{k}'])}</ETag><Size>{len(self.objects[f'{bucket}/{k}'])}"
                        f"</Size><StorageClass>STANDARD</StorageClass></Contents>" for k in keys)
        items += "".join(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in sorted(prefixes))
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
                f'2006-03-01/"><Name>{bucket}</Name><Prefix>{escape(prefix)}</Prefix>'
                f"<KeyCount>{len(keys) + len(prefixes)}</KeyCount><MaxKeys>1000</MaxKeys>"
                f"<Delimiter>{escape(delimiter)}</Delimiter><IsTruncated>false</IsTruncated>{items}"
                f"</ListBucketResult>").encode()
        return self._head("200 OK", {"Content-Type": "application/xml", "Content-Length": len(body)}), body


def _parse_range(spec: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-`, `bytes=-n` → [start, stop) clamped to the object; None: unsatisfiable."""
    unit, _, value = spec.partition("=")
    if unit.strip() != "bytes" or "," in value:
        return None
    first, _, last = value.strip().partition("-")
    if first == "":
        n = int(last)
        return (max(0, size - n), size) if n > 0 and size > 0 else None
    start = int(first)
    stop = size if last == "" else min(size, int(last) + 1)
    return (start, stop) if start < size and stop > start else None


def _serve(sources: list[tuple[str, str]], stats_file: str) -> None:
    """The server process: every file below each (local folder, bucket/prefix) in memory, then
    answer until terminated; the port goes to stdout."""
    import mmap

    objects = {}
    for folder, prefix in sources:
        for root, _, files in os.walk(folder):
            for name in files:
                p = Path(root, name)
                objects[f"{prefix}/{p.relative_to(folder).as_posix()}"] = p.read_bytes()
    with open(stats_file, "r+b") as f:
        stats = memoryview(mmap.mmap(f.fileno(), 8 * N_STATS)).cast("q")
    loop = asyncio.new_event_loop()
    state = _State(objects, stats)
    state.loop = loop
    server = loop.run_until_complete(loop.create_server(lambda: _Http(state), "127.0.0.1", 0, backlog=1024))
    print(server.sockets[0].getsockname()[1], flush=True)
    loop.run_forever()


class Server:
    """The S3 server in its own process (`python -m bench.remote --serve`), the counters it keeps
    (a small file mapped by both processes), and the latency it adds (changeable while it runs)."""

    def __init__(self, sources: list[tuple[Path, str]], latency_ms: float = 0.0):
        import mmap
        import subprocess
        import tempfile

        fd, self._stats_path = tempfile.mkstemp(prefix="bench-s3-", suffix=".stats")
        os.write(fd, bytes(8 * N_STATS))
        self._map = mmap.mmap(fd, 8 * N_STATS)
        os.close(fd)
        self.stats = memoryview(self._map).cast("q")
        self.latency_ms = latency_ms
        args = json.dumps({"sources": [(str(f), p) for f, p in sources], "stats": self._stats_path})
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.remote", "--serve", args], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # the port, or nothing when the server died
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the S3 server did not start (exit status {self.proc.poll()})")
        self.port = int(line)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    @property
    def latency_ms(self) -> float:
        return self.stats[LATENCY_US] / 1e3

    @latency_ms.setter
    def latency_ms(self, ms: float) -> None:
        self.stats[LATENCY_US] = int(round(ms * 1e3))

    @property
    def jitter_ms(self) -> float:
        """The mean of a random delay added to the latency of each request (exponential: a long
        tail, as first-byte times of cloud object stores have); 0: none. Drawn per object and
        `draw` (see _State.jitter_us): the bench sets a new draw each round, so the readers of a
        round meet the same slow objects and their times compare in pairs."""
        return self.stats[JITTER_US] / 1e3

    @jitter_ms.setter
    def jitter_ms(self, ms: float) -> None:
        self.stats[JITTER_US] = int(round(ms * 1e3))

    @property
    def draw(self) -> int:
        return self.stats[DRAW]

    @draw.setter
    def draw(self, n: int) -> None:
        self.stats[DRAW] = n

    def counters(self) -> dict[str, int]:
        s = self.stats
        return {"requests": s[REQUESTS], "get": s[GETS], "head": s[HEADS], "list": s[LISTS], "other": s[OTHER],
                "bytes": s[BYTES], "not_found": s[NOT_FOUND], "connections": s[CONNECTIONS],
                "cpu_ns": self.cpu_ns()}

    def reset_peak(self) -> None:
        self.stats[PEAK] = self.stats[ACTIVE]

    @property
    def peak(self) -> int:
        return self.stats[PEAK]

    def cpu_ns(self) -> int:
        """CPU time the server process has used (its one thread; /proc/PID/schedstat, ns)."""
        try:
            with open(f"/proc/{self.proc.pid}/schedstat") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        with contextlib.suppress(OSError):
            os.unlink(self._stats_path)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# =========================================================================== data sets


def make_specs() -> dict:
    from .datasets import DatasetSpec

    return {  # issue 13's three sets; zstd level 3 and blosc-lz4 5 + shuffle as the main bench writes them
        "sharded": DatasetSpec("remote-sharded", "v3 sharded zstd", (2048, 2048), "uint16", 3, (64, 64), (512, 512),
                               "zstd", 3, (256, 256)),
        "chunked": DatasetSpec("remote-chunked", "v3, 256 chunk objects, zstd", (1024, 1024), "uint16", 3, (64, 64),
                               None, "zstd", 3, (256, 256)),
        "v2": DatasetSpec("remote-v2", "v2, 256 chunk files, blosc-lz4 + shuffle", (1024, 1024), "uint16", 2,
                          (64, 64), None, "blosc-lz4", 5, (256, 256)),
        # a read of hundreds of MiB: eight ~19 MiB shard objects (the main bench's 3-D volume)
        "large": DatasetSpec("remote-large", "v3 sharded zstd, 3-D", (512, 512, 512), "uint16", 3, (64, 64, 64),
                             (256, 256, 256), "zstd", 3, (64, 64, 64)),
    }


SETS = ("sharded", "chunked", "v2")  # run by default; `large` on request (--datasets large)
ALL_SETS = (*SETS, "large")


class Layout:
    """Where each chunk's bytes are in the local copy (the same files the server serves): the
    object key and byte range of every stored chunk, read from the files, not from a reader."""

    def __init__(self, path: Path, spec: Any):
        self.path, self.spec = path, spec
        self.grid = tuple(-(-n // c) for n, c in zip(spec.shape, spec.chunks))
        self.where: dict[tuple[int, ...], tuple[str, int, int]] = {}  # chunk -> (key, start, stop)
        if spec.zarr_format == 2:
            meta = json.loads((path / ".zarray").read_text())
            sep = meta.get("dimension_separator") or "."
            for coord in itertools.product(*map(range, self.grid)):
                self._whole(sep.join(map(str, coord)), coord)
            return
        meta = json.loads((path / "zarr.json").read_text())
        enc = meta["chunk_key_encoding"]
        sep = enc.get("configuration", {}).get("separator", "/")
        prefix = "c" + sep if enc["name"] == "default" else ""
        if spec.shards is None:
            for coord in itertools.product(*map(range, self.grid)):
                self._whole(prefix + sep.join(map(str, coord)), coord)
            return
        (sharding,) = meta["codecs"]
        conf = sharding["configuration"]
        assert conf.get("index_location", "end") == "end"
        cps = tuple(s // c for s, c in zip(spec.shards, spec.chunks))
        n_index = math.prod(cps)
        index_bytes = 16 * n_index + (4 if any(c["name"] == "crc32c" for c in conf["index_codecs"]) else 0)
        for scoord in itertools.product(*(range(-(-n // s)) for n, s in zip(spec.shape, spec.shards))):
            key = prefix + sep.join(map(str, scoord))
            file = path / key
            if not file.is_file():
                continue
            with open(file, "rb") as f:
                f.seek(-index_bytes, os.SEEK_END)
                index = np.frombuffer(f.read(16 * n_index), dtype="<u8").reshape(-1, 2)
            for flat, (off, size) in enumerate(index):
                if size == 2**64 - 1:
                    continue
                local = np.unravel_index(flat, cps)
                coord = tuple(int(s * c + i) for s, c, i in zip(scoord, cps, local))
                self.where[coord] = (key, int(off), int(off + size))

    def _whole(self, key: str, coord: tuple[int, ...]) -> None:
        file = self.path / key
        if file.is_file():
            self.where[coord] = (key, 0, file.stat().st_size)

    def chunks_of(self, sel: tuple) -> list[tuple[int, ...]]:
        axes = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(sel, self.spec.chunks)]
        return list(itertools.product(*axes))

    def minimal_gets(self, sels: list[tuple]) -> list[tuple[str, int, int]]:
        """One GET per object: the span of the stored chunks the selections need (whole chunk
        objects; in a shard, from its first needed inner chunk to its last)."""
        spans: dict[str, list[int]] = {}
        for coord in {c for sel in sels for c in self.chunks_of(sel)}:
            if coord not in self.where:
                continue
            key, a, b = self.where[coord]
            lo_hi = spans.setdefault(key, [a, b])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], a), max(lo_hi[1], b)
        return sorted((k, a, b) for k, (a, b) in spans.items())


# =========================================================================== readers


def _gz_options(endpoint: str) -> dict:
    return {"anon": True, "endpoint_url": endpoint, "region": REGION}


def _s3fs_options(endpoint: str) -> dict:
    return {"anon": True, "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION}}


class Reader:
    name = "?"
    short = "?"
    how = ""
    only_sharded = False

    def context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def open(self, url: str, key: str, endpoint: str, spec: Any) -> None:
        raise NotImplementedError

    def read(self, sel: tuple) -> Any:
        raise NotImplementedError

    def read_many(self, sels: list[tuple]) -> Any:
        raise NotImplementedError

    def info(self) -> dict:
        return {"how": self.how}

    def close(self) -> None:
        pass


class Gpuzarr(Reader):
    name, short = "gpuzarr", "gpuzarr"
    how = "gpuzarr.open('s3://...', storage_options=...) -> obstore; arr[sel]; read_batch"
    settings: Any = None
    s3fs = False

    def open(self, url: str, key: str, endpoint: str, spec: Any) -> None:
        import fsspec

        import gpuzarr
        from gpuzarr.store_obstore import ObstoreStore

        kw = {} if self.settings is None else {"settings": self.settings()}
        if self.s3fs:
            mapper = fsspec.get_mapper(url, skip_instance_cache=True, **_s3fs_options(endpoint))
            self.arr = gpuzarr.open(mapper, device="cpu", **kw)
        else:
            self.arr = gpuzarr.open(url, storage_options=_gz_options(endpoint), device="cpu", **kw)
        through = "obstore" if isinstance(self.arr.store, ObstoreStore) else "fsspec"
        if through != ("fsspec" if self.s3fs else "obstore"):
            raise RuntimeError(f"gpuzarr opened {url} through {through}, not as this reader is named")

    def read(self, sel: tuple) -> Any:
        return self.arr[sel]

    def read_many(self, sels: list[tuple]) -> Any:
        return self.arr.read_batch(sels)

    def info(self) -> dict:
        from gpuzarr.store_obstore import requests_in_flight

        out = {"how": self.how, "settings": repr(self.arr._reader.settings), "store": repr(self.arr.store)}
        if not self.s3fs:
            out["requests_in_flight"] = requests_in_flight()
        return out


class GpuzarrNoIndexCache(Gpuzarr):
    name, short = "gpuzarr-nocache", "gz-nocache"
    how = "as gpuzarr, Settings(index_cache_bytes=0): every read fetches its shard indexes again"
    only_sharded = True

    @staticmethod
    def settings() -> Any:
        import gpuzarr

        return gpuzarr.Settings(index_cache_bytes=0)


class GpuzarrS3fs(Gpuzarr):
    name, short = "gpuzarr-s3fs", "gz-s3fs"
    how = "gpuzarr.open(fsspec.get_mapper('s3://...', **s3fs options)) -> s3fs (fsspec forced)"
    s3fs = True


class Tensorstore(Reader):
    name, short = "tensorstore", "tensorstore"
    how = ("ts.open(zarr3/zarr, kvstore s3, cache_pool 0); store[sel].read().result(); batch: every read in one "
           "ts.Batch, then the futures awaited")

    def open(self, url: str, key: str, endpoint: str, spec: Any) -> None:
        import tensorstore as ts

        self.ts = ts
        self.store = ts.open({
            "driver": "zarr3" if spec.zarr_format == 3 else "zarr",
            "kvstore": {"driver": "s3", "bucket": BUCKET, "path": key + "/", "endpoint": endpoint,
                        "aws_region": REGION, "aws_credentials": {"type": "anonymous"}},
            "context": {"cache_pool": {"total_bytes_limit": 0}},
        }).result()

    def read(self, sel: tuple) -> Any:
        return self.store[sel].read().result()

    def read_many(self, sels: list[tuple]) -> Any:
        with self.ts.Batch() as batch:
            futures = [self.store[s].read(batch=batch) for s in sels]
        return [f.result() for f in futures]

    def info(self) -> dict:
        from importlib.metadata import version

        return {"how": self.how, "version": version("tensorstore"), "s3_request_concurrency": "default"}


class ZarrPython(Reader):
    name, short = "zarr-python", "zarr-python"
    pipeline = "zarr.core.codec_pipeline.BatchedCodecPipeline"
    how = "zarr.open_array(FsspecStore.from_url('s3://...', storage_options)) (s3fs); arr[sel]; batch: asyncio.gather"

    def context(self) -> contextlib.AbstractContextManager:
        import zarr

        return zarr.config.set({"codec_pipeline.path": self.pipeline})

    def open(self, url: str, key: str, endpoint: str, spec: Any) -> None:
        import zarr

        store = zarr.storage.FsspecStore.from_url(url, storage_options=_s3fs_options(endpoint), read_only=True)
        with self.context():
            self.arr = zarr.open_array(store, mode="r")
        cls = type(self.arr._async_array.codec_pipeline)
        got = f"{cls.__module__}.{cls.__name__}"
        if got != self.pipeline:
            raise RuntimeError(f"opened with codec pipeline {got}, expected {self.pipeline} (config ignored?)")
        self.got_pipeline = got

    def read(self, sel: tuple) -> Any:
        return self.arr[sel]

    def read_many(self, sels: list[tuple]) -> Any:
        return zarr_gather(self.arr, sels)

    def info(self) -> dict:
        import zarr

        return {"how": self.how, "codec_pipeline": self.got_pipeline,
                "async.concurrency": zarr.config.get("async.concurrency")}


class ZarrPythonGpuzarr(ZarrPython):
    name, short = "zarr-python+gpuzarr", "zp+gz"
    pipeline = "gpuzarr.CodecPipeline"
    how = "as zarr-python, inside zarr.config.set({'codec_pipeline.path': 'gpuzarr.CodecPipeline'})"


READERS = (Gpuzarr, GpuzarrNoIndexCache, GpuzarrS3fs, Tensorstore, ZarrPythonGpuzarr, ZarrPython)
READER_NAMES = tuple(r.name for r in READERS)


class Floor:
    """The proxy-counted minimal GETs of a workload (`Layout.minimal_gets`), every one issued at
    once through obstore (no bound on requests in flight), bytes only: one round trip plus the
    transfer. The shard indexes it needs are known beforehand (what a warm index cache gives a
    reader; a reader without one needs a round trip more)."""

    name = short = "floor"

    def __init__(self, endpoint: str):
        import obstore
        from obstore.store import S3Store

        self.obs = obstore
        self.store = S3Store(BUCKET, endpoint=endpoint, skip_signature=True, region=REGION,
                             client_options={"allow_http": True})
        self.loop = asyncio.new_event_loop()

    def fetch(self, gets: list[tuple[str, int, int]]) -> list:
        obs, store = self.obs, self.store

        async def all_at_once() -> list:
            return await asyncio.gather(*(obs.get_range_async(store, k, start=a, end=b) for k, a, b in gets))

        return self.loop.run_until_complete(all_at_once())

    def close(self) -> None:
        self.loop.close()


# =========================================================================== workloads and timing


WORKLOADS = ("full", "window", "batch")


@dataclass
class Workload:
    name: str
    sels: list[tuple]

    def run(self, reader: Reader) -> Any:
        if self.name == "batch":
            return reader.read_many(self.sels)
        return reader.read(self.sels[0])

    def describe(self) -> str:
        if self.name == "full":
            return "full: the whole array, one read"
        if self.name == "window":
            return f"window: one 256x256 at {tuple(s.start for s in self.sels[0])}"
        return f"batch: {len(self.sels)} random 256x256 patches"


WINDOW_ROUNDS = 3  # a window read is short and these machines are noisy: 3x the rounds, still one window


def rounds(repeats: int, workload: str) -> int:
    return repeats * (WINDOW_ROUNDS if workload == "window" else 1)


def make_workload(name: str, spec: Any, patches: int, seed: int) -> Workload:
    if name == "full":
        return Workload(name, [tuple(slice(0, n) for n in spec.shape)])
    rng = np.random.default_rng([seed, WORKLOADS.index(name)])
    count = 1 if name == "window" else patches
    sels = []
    while len(sels) < count:
        start = [int(rng.integers(0, n - 256 + 1)) for n in spec.shape]
        if any(s % c == 0 for s, c in zip(start, spec.chunks)):
            continue  # unaligned in every axis
        sels.append(tuple(slice(s, s + 256) for s in start))
    return Workload(name, sels)


def verify(result: Any, wl: Workload, truth: np.ndarray) -> str | None:
    """None when the result is the local source's, bit for bit; else what differs."""
    items = [result] if wl.name != "batch" else list(result)
    if len(items) != len(wl.sels):
        return f"MISMATCH: {len(items)} results for {len(wl.sels)} selections"
    for i, (got, sel) in enumerate(zip(items, wl.sels)):
        got = np.asarray(got)
        want = truth[sel]
        if got.dtype != want.dtype or got.shape != want.shape:
            return f"MISMATCH: item {i}: {got.dtype}{got.shape}, expected {want.dtype}{want.shape}"
        if not np.array_equal(got, want):
            bad = np.argwhere(got != want)
            return f"MISMATCH: item {i} ({sel}): {len(bad)} elements differ, first at {tuple(bad[0])}"
    return None


@dataclass
class Entry:
    name: str
    run: Callable[[], Any]
    context: Callable[[], contextlib.AbstractContextManager]
    error: str | None = None
    samples: list[dict] = field(default_factory=list)
    check: dict | None = None


def measure(entry: Entry, server: Server) -> tuple[Any, dict]:
    """One call of the entry: wall, this process's CPU, the server's CPU, requests, bytes, peak
    requests in flight (the context is entered outside the timer, GC off inside)."""
    with entry.context():
        gc.collect()
        gc.disable()
        try:
            c0 = server.counters()
            server.reset_peak()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            result = entry.run()
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            c1 = server.counters()
        finally:
            gc.enable()
    sample = {"s": wall, "cpu_s": cpu, "server_cpu_s": (c1["cpu_ns"] - c0["cpu_ns"]) / 1e9,
              "requests": c1["requests"] - c0["requests"], "gets": c1["get"] - c0["get"],
              "heads": c1["head"] - c0["head"], "lists": c1["list"] - c0["list"],
              "bytes": c1["bytes"] - c0["bytes"], "peak_in_flight": server.peak}
    return result, sample


def _median(samples: list[dict], key: str) -> float | None:
    return statistics.median(s[key] for s in samples) if samples else None


def summary(entry: Entry) -> dict:
    out = {"error": entry.error, "samples": entry.samples, "check": entry.check}
    if entry.samples:
        for key in ("s", "cpu_s", "server_cpu_s", "requests", "gets", "heads", "bytes", "peak_in_flight"):
            out[f"median_{key}"] = _median(entry.samples, key)
    return out


def run_workload(entries: list[Entry], wl: Workload, truth: np.ndarray, server: Server, repeats: int,
                 floor_gets: list[tuple[str, int, int]] | None) -> None:
    # warm-up = check: one run each, verified bit for bit against the local source
    for e in entries:
        result = None
        try:
            result, sample = measure(e, server)
            if e.name == "floor":
                got = [len(memoryview(b)) for b in result]
                want = [b - a for _, a, b in floor_gets]
                e.error = None if got == want else f"MISMATCH: floor GETs returned {got[:4]}..., expected {want[:4]}..."
            else:
                e.error = verify(result, wl, truth)
            e.check = sample
        except Exception as exc:  # noqa: BLE001
            e.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        del result
    live = [e for e in entries if e.error is None]
    for r in range(repeats):
        server.draw += 1  # the jitter's: every reader of this round meets the same slow objects
        k = r % len(live) if live else 0
        for e in live[k:] + live[:k]:
            try:
                _, sample = measure(e, server)
                e.samples.append(sample)
            except Exception as exc:  # noqa: BLE001
                e.error = f"{type(exc).__name__} while timed: {str(exc)[:300]}"
                live.remove(e)


# =========================================================================== output


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _grid(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _cell(e: dict | None, key: str, fmt: Callable[[Any], str]) -> str:
    if e is None:
        return "-"
    if e.get("error"):
        return "ERR"
    v = e.get(key)
    return "-" if v is None else fmt(v)


def format_tables(doc: dict, latency: float) -> str:
    rows = [r for r in doc["results"] if r["latency_ms"] == latency]
    names = [n for n in (*doc["readers_run"], "floor") if any(n in r["entries"] for r in rows)]
    short = {r.name: r.short for r in READERS} | {"floor": "floor"}
    ts = "tensorstore"
    head = ["dataset", "workload", *(short[n] for n in names)]
    times, ratios, reqs, cpus = [], [], [], []
    notes = []
    for r in rows:
        ents = r["entries"]
        lead = [r["dataset"], r["workload"]]
        times.append(lead + [_cell(ents.get(n), "median_s", _ms) for n in names])
        t = ents.get(ts, {}).get("median_s") if not ents.get(ts, {}).get("error") else None
        ratios.append(lead + [("-" if n == ts or not t else _cell(ents.get(n), "median_s", lambda v: f"{v / t:.2f}"))
                              for n in names])
        reqs.append(lead + [_cell(ents.get(n), "median_requests", lambda v: f"{v:.0f}")
                            + ("" if not latency or not ents.get(n) or ents[n].get("error") else
                               f" ({ents[n]['median_peak_in_flight']:.0f})") for n in names])
        cpus.append(lead + [_cell(ents.get(n), "median_cpu_s", _ms) for n in names])
        for n in names:
            e = ents.get(n)
            if e and e.get("error"):
                notes.append(f"  {r['dataset']}/{r['workload']} {n}: {e['error']}")
    reps = doc["args"]["repeats"]
    jitter = doc["server"].get("jitter_ms") or 0
    latency_text = f"latency {latency:g} ms" + (f" + exponential jitter (mean {jitter:g} ms)" if jitter else "")
    text = [f"{latency_text} per request: medians of {reps} rounds (window: {rounds(reps, 'window')}), "
            "ms per read",
            _grid(head, times), "",
            f"time / tensorstore's (<1: faster than tensorstore), latency {latency:g} ms", _grid(head, ratios), "",
            f"requests per read{' (peak in flight)' if latency else ''}, latency {latency:g} ms", _grid(head, reqs),
            "",
            f"CPU of this process per read, ms (readers' threads and runtimes included; the server's not), "
            f"latency {latency:g} ms", _grid(head, cpus)]
    if notes:
        text += ["", "errors (not timed):", *notes]
    return "\n".join(text)


def server_cpu_line(doc: dict) -> str:
    n = sum(s["requests"] for r in doc["results"] for e in r["entries"].values() for s in e.get("samples") or [])
    cpu = sum(s["server_cpu_s"] for r in doc["results"] for e in r["entries"].values() for s in e.get("samples") or [])
    return (f"server: {n} timed requests, {cpu * 1e3:.0f} ms of its CPU in all ({cpu / n * 1e6:.0f} us a request)"
            if n else "server: no timed requests")


# =========================================================================== main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench --remote", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 repeats, 16 patches (explicit flags still win)")
    p.add_argument("--latency-ms", default="20",
                   help="latency added to every request, ms; a comma-separated list runs each in turn (default 20)")
    p.add_argument("--jitter-ms", type=float, default=0.0,
                   help="mean of an exponentially distributed delay added to each request's latency, ms: a "
                        "long tail, as cloud first-byte times have (default 0: every request takes the latency)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, --quick 3)")
    p.add_argument("--patches", type=int, default=None, help="random 256x256 patches in batch (default 64, --quick 16)")
    p.add_argument("--readers", default=",".join(READER_NAMES), help=f"subset of {','.join(READER_NAMES)}")
    p.add_argument("--datasets", default=",".join(SETS),
                   help=f"subset of {','.join(ALL_SETS)} (default {','.join(SETS)})")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}")
    p.add_argument("--no-floor", action="store_true", help="skip the floor")
    p.add_argument("--seed", type=int, default=0, help="seed of the window and patch positions (default 0)")
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="where datasets are kept (default bench/.cache)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where the JSON goes (default bench/results)")
    p.add_argument("--server-check", action="store_true",
                   help="instead: how many requests a second moto's server and ours answer (256 bare GETs at once "
                        "through obstore, no latency), then exit")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.patches is None:
        args.patches = 16 if args.quick else 64
    try:
        args.latency_ms = [float(v) for v in str(args.latency_ms).split(",") if v.strip()]
        assert args.latency_ms and min(args.latency_ms) >= 0
    except (ValueError, AssertionError):
        p.error("--latency-ms takes non-negative numbers, comma separated")
    for what, allowed in (("readers", READER_NAMES), ("datasets", ALL_SETS), ("workloads", WORKLOADS)):
        got = [v for v in getattr(args, what).split(",") if v]
        bad = [g for g in got if g not in allowed]
        if bad or not got:
            p.error(f"--{what}: choose from {', '.join(allowed)}" + (f" (not {', '.join(bad)})" if bad else ""))
        setattr(args, what, [a for a in allowed if a in got])
    if args.jitter_ms < 0:
        p.error("--jitter-ms must not be negative")
    if args.repeats < 1 or args.patches < 1:
        p.error("--repeats and --patches must be at least 1")
    if args.repeats < 5 and not args.quick:
        _log(f"warning: --repeats {args.repeats}: shared/BENCHMARKS.md asks for medians of at least 5")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:  # the server process
        conf = json.loads(argv[1])
        _serve(conf["sources"], conf["stats"])
        return 0
    args = parse_args(argv)
    from . import report
    from .datasets import ensure, generate

    specs = make_specs()
    if args.server_check:
        return server_check(specs["chunked"], args.cache)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    vers = report.versions()
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("obstore", "s3fs", "aiobotocore", "botocore", "fsspec"):
        with contextlib.suppress(PackageNotFoundError):
            vers[pkg] = version(pkg)
    doc: dict = {"timestamp": stamp, "argv": argv,
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "machine": report.machine_info(), "versions": vers, "git": report.git_info(ROOT),
                 **report.run_started(), "server": {}, "datasets": {}, "readers": {},
                 "readers_run": args.readers, "results": []}
    t_start = time.perf_counter()
    paths = {}
    for name in args.datasets:  # generated before anything is timed
        path, info = ensure(specs[name], args.cache)
        paths[name] = path
        doc["datasets"][name] = {**info, "describe": specs[name].describe(), "key": f"{name}.zarr"}
    failed = False
    with Server([(paths[n], f"{BUCKET}/{n}.zarr") for n in args.datasets]) as server:
        server.jitter_ms = args.jitter_ms
        doc["server"] = {"endpoint": server.endpoint, "kind": "bench.remote.Server (asyncio, files in memory)",
                         "latency": "added before each answer, per request (GET, HEAD, LIST alike)",
                         "jitter_ms": args.jitter_ms}
        floor = None if args.no_floor else Floor(server.endpoint)
        try:
            for name in args.datasets:
                failed |= _run_dataset(name, specs[name], paths[name], server, floor, args, doc, generate)
        finally:
            if floor is not None:
                floor.close()
    report.close_run(doc, t_start)
    print(f"remote bench {stamp}  commit {report.commit_label(doc['git'])}  "
          f"{doc['machine'].get('affinity')} cores  {report.machine_load(doc)}  ({doc['seconds']} s)")
    for name in args.datasets:
        ds = doc["datasets"][name]
        print(f"  {name}: {ds['describe']}; {ds['stored_bytes'] / 2**20:.1f} MiB stored")
    for latency in args.latency_ms:
        print()
        print(format_tables(doc, latency))
    print()
    print(server_cpu_line(doc))
    out = args.out / f"remote-{stamp}.json"
    report.write_json(doc, out)
    print(f"wrote {out}")
    return 1 if failed else 0


def _run_dataset(name: str, spec: Any, path: Path, server: Server, floor: Floor | None, args: argparse.Namespace,
                 doc: dict, generate: Callable) -> bool:
    """Every latency x workload of one data set; True when a reader returned a wrong result."""
    _log(f"{name}: {spec.describe()}")
    truth = generate(spec, (0,) * len(spec.shape), spec.shape)
    layout = Layout(path, spec)
    url, key = f"s3://{BUCKET}/{name}.zarr", f"{name}.zarr"
    server.latency_ms = 0
    readers: list[Reader] = []
    open_errors: dict[str, str] = {}
    for cls in READERS:
        if cls.name not in args.readers or (cls.only_sharded and spec.shards is None):
            continue
        r = cls()
        try:
            with r.context():
                r.open(url, key, server.endpoint, spec)
            doc["readers"].setdefault(r.name, r.info())
            readers.append(r)
        except Exception as exc:  # noqa: BLE001
            open_errors[r.name] = f"open failed: {type(exc).__name__}: {str(exc)[:300]}"
            _log(f"  {r.name}: {open_errors[r.name]}")
    failed = False
    for latency in args.latency_ms:
        server.latency_ms = latency
        for wname in args.workloads:
            wl = make_workload(wname, spec, args.patches, args.seed)
            entries = [Entry(r.name, (lambda r=r: wl.run(r)), r.context) for r in readers]
            gets = [(f"{key}/{k}", a, b) for k, a, b in layout.minimal_gets(wl.sels)]
            if floor is not None:
                entries.append(Entry("floor", lambda: floor.fetch(gets), contextlib.nullcontext))
            _log(f"  {latency:g} ms  {name}/{wl.describe()}")
            run_workload(entries, wl, truth, server, rounds(args.repeats, wname), gets)
            row = {"dataset": name, "workload": wname, "latency_ms": latency, "describe": wl.describe(),
                   "selections": [[[s.start, s.stop] for s in sel] for sel in wl.sels],
                   "floor_gets": len(gets), "floor_bytes": sum(b - a for _, a, b in gets),
                   "entries": {e.name: summary(e) for e in entries}}
            for n, err in open_errors.items():
                row["entries"][n] = {"error": err, "samples": []}
            doc["results"].append(row)
            failed |= any((e.error or "").startswith("MISMATCH") for e in entries)
            _log("    " + "  ".join(f"{e.name} ERR" if e.error else f"{e.name} {_ms(_median(e.samples, 's'))} ms/"
                                    f"{_median(e.samples, 'requests'):.0f} req" for e in entries))
    for r in readers:
        r.close()
    return failed


# =========================================================================== moto against ours


def server_check(spec: Any, cache: Path, repeats: int = 7) -> int:
    """Requests a second that moto's server (its own process) and ours answer: every chunk object
    of the `chunked` set (256) fetched at once through obstore, no latency, medians."""
    import socket
    import subprocess

    import obstore
    from obstore.store import S3Store

    from .datasets import ensure

    path, _ = ensure(spec, cache)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")
    keys = [f"chunked.zarr/{p.relative_to(path).as_posix()}" for p in files]
    loop = asyncio.new_event_loop()

    def bench(store: Any, cpu_of: Callable[[], float]) -> dict:
        async def all_at_once() -> list:
            return await asyncio.gather(*(obstore.get_range_async(store, k, start=0, end=1 << 40) for k in keys))

        loop.run_until_complete(all_at_once())  # connections made
        walls, cpus = [], []
        for _ in range(repeats):
            c0, t0 = cpu_of(), time.perf_counter()
            got = loop.run_until_complete(all_at_once())
            walls.append(time.perf_counter() - t0)
            cpus.append(cpu_of() - c0)
            assert [len(memoryview(g)) for g in got] == [p.stat().st_size for p in files]
        wall = statistics.median(walls)
        return {"ms": wall * 1e3, "requests_per_s": len(keys) / wall,
                "server_cpu_us": statistics.median(cpus) / len(keys) * 1e6}

    def proc_cpu(pid: int) -> Callable[[], float]:
        tick = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:  # every thread of the process (moto's are many), 10 ms resolution
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick
        return cpu

    out = {}
    with Server([(path, f"{BUCKET}/chunked.zarr")]) as ours:
        store = S3Store(BUCKET, endpoint=ours.endpoint, skip_signature=True, region=REGION,
                        client_options={"allow_http": True})
        out["bench.remote.Server"] = bench(store, proc_cpu(ours.proc.pid))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        store = S3Store(BUCKET, endpoint=endpoint, access_key_id="testing", secret_access_key="testing",
                        region=REGION, client_options={"allow_http": True})
        import http.client

        for _ in range(200):
            try:
                conn = http.client.HTTPConnection(f"127.0.0.1:{port}", timeout=10)
                conn.request("PUT", f"/{BUCKET}")
                conn.getresponse().read()
                break
            except OSError:
                time.sleep(0.1)
        for p, k in zip(files, keys):
            obstore.put(store, k, p.read_bytes())
        out["moto (python -m moto.server)"] = bench(store, proc_cpu(moto.pid))
    finally:
        moto.terminate()
        moto.wait()
        loop.close()
    print(f"{len(keys)} chunk objects ({sum(p.stat().st_size for p in files) / 2**20:.1f} MiB) fetched at once "
          f"through obstore, no added latency, medians of {repeats}:")
    for name, r in out.items():
        print(f"  {name:30s} {r['ms']:7.1f} ms  {r['requests_per_s']:7.0f} requests/s  "
              f"server CPU {r['server_cpu_us']:.0f} us a request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
