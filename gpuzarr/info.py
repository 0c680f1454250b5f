"""`gpuzarr info`: what an array or group holds and how it is stored."""

from __future__ import annotations

from .array import Array
from .group import Group
from .store import CannotListError


def describe(node: Array | Group, name: str = "", count_chunks: bool = True) -> list[str]:
    """Lines describing `node` (recursively for groups)."""
    if isinstance(node, Group):
        lines = [f"{name or '/'}  group  zarr v{node.zarr_format}  attrs={len(node.attrs)}"]
        try:
            children = node.keys()
        except CannotListError:
            return lines + ["  members     unknown: this store cannot list directories and the group has no "
                            "consolidated metadata"]
        for child in children:
            sub = describe(node[child], f"{name}/{child}" if name else child, count_chunks)
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
        lines.append(f"  stored      {_stored(node)}")
    return lines


def _stored(node: Array) -> str:
    """The stored-chunks line; a store that cannot list says so rather than "0 of N"."""
    try:
        stored, nbytes = stored_chunks(node)
    except CannotListError:
        return f"unknown of {_grid_size(node)} chunk objects: this store cannot list files to count them"
    ratio = f"{node.nbytes / nbytes:.2f}x" if nbytes else "n/a"
    return f"{stored} of {_grid_size(node)} chunk objects, {nbytes} bytes, compression ratio {ratio}"


def _grid_size(node: Array) -> int:
    total = 1
    for n in node.meta.grid_shape:
        total *= n
    return total


def stored_chunks(node: Array) -> tuple[int, int]:
    """(number of stored chunk/shard objects, their total bytes), listing the store once;
    CannotListError where the store cannot list. Only names of chunks inside the grid count
    (not a README beside them, a hidden file, or a key past the grid)."""
    meta = node.meta
    files = node.store.find("", "zarr.json" if meta.zarr_format == 3 else ".zarray")
    grid, ndim = meta.grid_shape, len(meta.shape)
    count = nbytes = 0
    for rel, size in files.items():
        coords = meta.key_encoding.coords(rel, ndim)
        if coords is not None and all(c < n for c, n in zip(coords, grid)):
            count += 1
            nbytes += size
    return count, nbytes


