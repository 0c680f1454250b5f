"""Node names never lead out of the store root: consolidated metadata whose keys are not paths
below the group is refused when the group is opened (MetadataError naming the file and the key),
and a caller's name that is not such a path is a KeyError (`group[...]`) or a ValueError
(`gpuzarr.open(..., path=...)`). The rules are the Zarr v3 spec's node names, as zarr-python
applies them to paths: no empty segment, none made of periods only ('.', '..'), '\\' as '/'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

import gpuzarr
from gpuzarr import MetadataError

pytestmark = pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part:UserWarning")
BAD_PATHS = ["..", "../secret", "../../secret", "a/../../secret", "./a", "a/.", "a//b", "...", "..\\secret",
             "a\\..\\..\\secret"]


def _secret(tmp_path: Path, zarr_format: int) -> Path:
    """An array beside the store, two levels above its root: what a '..' key would reach."""
    secret = zarr.create_array(tmp_path / "secret", shape=(4,), chunks=(4,), dtype="i4", zarr_format=zarr_format)
    secret[:] = 42
    return tmp_path / "secret"


def _group(tmp_path: Path, zarr_format: int) -> Path:
    """tmp/store/g: members x (array) and sub/deeper/y (array two groups down), consolidated."""
    root = tmp_path / "store" / "g"
    g = zarr.open_group(root, mode="w", zarr_format=zarr_format)
    g.create_array("x", shape=(2,), chunks=(2,), dtype="i4")[:] = [1, 2]
    g.create_group("sub").create_group("deeper").create_array("y", shape=(3,), chunks=(3,), dtype="u1")[:] = 7
    zarr.consolidate_metadata(root)
    return root


def _add_consolidated_key(group: Path, zarr_format: int, key: str, doc_dir: Path) -> None:
    """Write `key` into the group's consolidated metadata, pointing at `doc_dir`'s metadata."""
    if zarr_format == 2:
        zmeta = json.loads((group / ".zmetadata").read_text())
        zmeta["metadata"][f"{key}/.zarray"] = json.loads((doc_dir / ".zarray").read_text())
        (group / ".zmetadata").write_text(json.dumps(zmeta))
    else:
        doc = json.loads((group / "zarr.json").read_text())
        doc["consolidated_metadata"]["metadata"][key] = json.loads((doc_dir / "zarr.json").read_text())
        (group / "zarr.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("key", BAD_PATHS + ["/abs", "a/"])
def test_consolidated_key_outside_the_group_is_refused_at_open(tmp_path, zarr_format, key):
    """As reported: '../../secret.zarr/.zarray' in .zmetadata showed '..' in keys() and
    group['../../secret.zarr'] read the array outside the root."""
    secret = _secret(tmp_path, zarr_format)
    root = _group(tmp_path, zarr_format)
    _add_consolidated_key(root, zarr_format, key, secret)
    meta_file = ".zmetadata" if zarr_format == 2 else "zarr.json"
    with pytest.raises(MetadataError, match=rf"g/{meta_file}: consolidated metadata key '.*' is not a path below "
                                            rf"the group \((an absolute path|an empty path segment|a '\.+' path "
                                            rf"segment)\)") as ei:
        gpuzarr.open(str(root), device="cpu")
    assert repr(key)[1:-1] in str(ei.value)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_subgroups_own_consolidated_metadata_is_checked_too(tmp_path, zarr_format):
    """sub/deeper is a group with consolidated metadata of its own, opened through a root that
    has none: opening it (by path, through sub, or while walking members) refuses the key."""
    secret = _secret(tmp_path, zarr_format)
    root = tmp_path / "store" / "g"
    g = zarr.open_group(root, mode="w", zarr_format=zarr_format)
    g.create_group("sub").create_group("deeper").create_array("y", shape=(3,), chunks=(3,), dtype="u1")
    zarr.consolidate_metadata(root / "sub" / "deeper")
    _add_consolidated_key(root / "sub" / "deeper", zarr_format, "../../../../secret", secret)
    group = gpuzarr.open(str(root), device="cpu")
    meta_file = ".zmetadata" if zarr_format == 2 else "zarr.json"
    match = rf"sub/deeper/{meta_file}: consolidated metadata key '\.\./\.\./\.\./\.\./secret"
    for open_deeper in (lambda: group["sub/deeper"], lambda: group["sub"]["deeper"],
                        lambda: dict(group["sub"].members()), lambda: "deeper" in group["sub"]):
        with pytest.raises(MetadataError, match=match):
            open_deeper()


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("consolidated", [True, False])
def test_a_callers_name_outside_the_group_is_a_key_error(tmp_path, zarr_format, consolidated):
    _secret(tmp_path, zarr_format)
    root = _group(tmp_path, zarr_format)
    if not consolidated:
        (root / ".zmetadata").unlink(missing_ok=True)
        if zarr_format == 3:
            doc = json.loads((root / "zarr.json").read_text())
            doc.pop("consolidated_metadata", None)
            (root / "zarr.json").write_text(json.dumps(doc))
    group = gpuzarr.open(str(root), device="cpu")
    assert (group.meta.consolidated is not None) == consolidated
    deeper = group["sub"]["deeper"]
    for bad in BAD_PATHS:
        for node, name in ((group, bad), (group, f"sub/deeper/{bad}"), (deeper, bad), (deeper, f"y/{bad}")):
            with pytest.raises(KeyError, match=r"is not a node path below .* \((an empty path segment|a '\.+' "
                                               r"path segment|an absolute path)\)"):
                node[name]
            assert name not in node
    assert group.keys() == ["sub", "x"] and deeper.keys() == ["y"]
    assert [name for name, _ in group.members()] == ["sub", "x"]
    assert group["/x/"].shape == (2,) and "sub/deeper/y" in group and "/sub/deeper/" in group
    np.testing.assert_array_equal(group["sub/deeper"]["y"][...], [7, 7, 7])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_with_a_path_outside_the_root_is_a_value_error(tmp_path, zarr_format):
    _secret(tmp_path, zarr_format)
    root = _group(tmp_path, zarr_format)
    for bad in BAD_PATHS:
        with pytest.raises(ValueError, match=r"is not a node path below .*: a node path is names joined by '/'"):
            gpuzarr.open(str(root.parent), path=f"g/{bad}", device="cpu")
    np.testing.assert_array_equal(gpuzarr.open(str(root.parent), path="/g/x/", device="cpu")[...], [1, 2])


def test_member_names_that_are_not_str_are_a_type_error(tmp_path):
    group = gpuzarr.open(str(_group(tmp_path, 3)), device="cpu")
    for name in (0, None, b"x", ("x",)):
        with pytest.raises(TypeError, match=r"group member names are str, not \w+"):
            group[name]
        assert name not in group
