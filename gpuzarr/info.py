"""`gpuzarr info`: what an array or group holds and how it is stored."""

from __future__ import annotations

from typing import Any

from .array import Array
from .group import Group


def describe(node: Array | Group, name: str = "", count_chunks: bool = True) -> list[str]:
    """Lines describing `node` (recursively for groups)."""
    if isinstance(node, Group):
        lines = [f"{name or '/'}  group  zarr v{node.zarr_format}  attrs={len(node.attrs)}"]
        for child, member in node.members():
            sub = describe(member, f"{name}/{child}" if name else child, count_chunks)
            lines += ["  " + line for line in sub]
        return lines
    m = node.meta
    lines = [
        f"{name or '/'}  array  zarr v{m.zarr_format}",
        f"  shape       {m.shape}",
        f"  dtype       {node.dtype} ({m.data_type.name})",
        f"  chunks      {node.chunks}",
        f"  shards      {node.shards}",
        f"  fill_value  {m.fill_value!r}",
        f"  codecs      {' -> '.join(m.chain.describe())}",
    ]
    if m.dimension_names:
        lines.append(f"  dim names   {list(m.dimension_names)}")
    if count_chunks:
        stored, nbytes = stored_chunks(node)
        ratio = f"{node.nbytes / nbytes:.2f}x" if nbytes else "n/a"
        lines.append(f"  stored      {stored} of {_grid_size(node)} chunk objects, {nbytes} bytes, "
                     f"compression ratio {ratio}")
    return lines


def _grid_size(node: Array) -> int:
    total = 1
    for n in node.meta.grid_shape:
        total *= n
    return total


def stored_chunks(node: Array) -> tuple[int, int]:
    """(number of stored chunk/shard objects, their total bytes), listing the store once."""
    store = node.store
    try:
        found: dict[str, Any] = store.fs.find(store.root, detail=True)
    except FileNotFoundError:
        return 0, 0
    prefix = store.root.rstrip("/") + "/"
    files = {p[len(prefix):] if p.startswith(prefix) else p: info for p, info in found.items()}
    # chunks under a sub-directory holding its own metadata belong to another node
    nodes = {rel.rsplit("/", 1)[0] for rel in files if "/" in rel and rel.rsplit("/", 1)[-1] in _META}
    count = nbytes = 0
    for rel, info in files.items():
        parts = rel.split("/")
        if parts[-1] in _META or any("/".join(parts[:i]) in nodes for i in range(1, len(parts))):
            continue
        count += 1
        nbytes += int(info.get("size") or 0)
    return count, nbytes


_META = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}
