"""Groups: members are opened lazily, from consolidated metadata when the group has it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from .metadata import GroupMetadata
from .store import CannotListError, Store


class Group:
    def __init__(self, meta: GroupMetadata, store: Store, device: Any = "auto", settings: Any = None):
        self.meta = meta
        self.store = store
        self._device = device
        self._settings = settings

    def __repr__(self) -> str:
        return f"<gpuzarr.Group {self.store.url!r} zarr_format={self.meta.zarr_format}>"

    @property
    def attrs(self) -> dict:
        return self.meta.attributes

    @property
    def zarr_format(self) -> int:
        return self.meta.zarr_format

    def __getitem__(self, name: str) -> Any:
        """The array or group at `name`, a member or a deeper path ('scans/scan0'); leading and
        trailing '/' are ignored. A name that is not a str raises TypeError; one that is not a
        path below this group (a '..', '.' or empty segment) raises KeyError, as a missing one does."""
        from .api import open_node

        if not isinstance(name, str):
            raise TypeError(f"group member names are str, not {type(name).__name__} ({name!r})")
        name = name.strip("/")
        if not name:
            raise KeyError("empty member name")
        try:
            store = self.store.child(name)
        except ValueError as exc:
            raise KeyError(str(exc)) from None
        docs = self._consolidated_docs(name)
        try:
            node = open_node(store, self._device, docs, self._settings)
        except FileNotFoundError:
            raise KeyError(f"{self.store.path(name)}: no array or group named {name!r}") from None
        cm = self.meta.consolidated
        if isinstance(node, Group) and cm is not None:  # a subgroup sees its part of our consolidated metadata
            prefix = name + "/"
            node.meta = replace(node.meta, consolidated={k[len(prefix):]: v for k, v in cm.items()
                                                         if k.startswith(prefix)})
        return node

    def _consolidated_docs(self, name: str) -> dict | None:
        """The member's metadata documents from consolidated metadata, keyed like store files."""
        cm = self.meta.consolidated
        if cm is None:
            return None
        if self.meta.zarr_format == 3:
            return {"zarr.json": cm[name]} if name in cm else None
        docs = {f: cm[f"{name}/{f}"] for f in (".zarray", ".zgroup", ".zattrs") if f"{name}/{f}" in cm}
        return docs if (".zarray" in docs or ".zgroup" in docs) else None

    def keys(self) -> list[str]:
        """Member names, from consolidated metadata, else from listing the store: a store that
        cannot list (HTTP) raises CannotListError rather than showing no members."""
        cm = self.meta.consolidated
        if cm is not None:
            if self.meta.zarr_format == 2:  # keys are files: "a/.zarray", "a/b/.zgroup"; ".zattrs" is ours
                return sorted({k.split("/")[0] for k in cm if "/" in k})
            return sorted({k.split("/")[0] for k in cm})
        from .api import has_node

        marker = "zarr.json" if self.meta.zarr_format == 3 else ".zgroup"
        try:
            names = self.store.list_dirs("", marker)
        except CannotListError as exc:
            raise CannotListError(f"cannot list the members of this group: {exc.args[0]}; open them by name "
                                  f"(group['name']) or consolidate the group's metadata", "", exc) from exc
        return [n for n in names if has_node(self.store.child(n), self.meta.zarr_format)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __contains__(self, name: object) -> bool:
        """Whether `name` opens a member; False for a name that cannot be one (not a str, or not
        a path below this group)."""
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.keys())

    def members(self) -> Iterator[tuple[str, Any]]:
        for name in self.keys():
            yield name, self[name]
