#!/usr/bin/env python3
"""Run zarr-python's own tests against a candidate codec pipeline and compare with the default.

    python .ci/zarr_suite.py [--pipeline gpuzarr.CodecPipeline] [--workdir DIR] [-k EXPR]

1. Finds the installed zarr-python version, downloads that version's sdist into the work
   directory (once; the tarball is the cache), and extracts only its ``tests/`` folder, so the
   tests run against the INSTALLED zarr (the sdist's ``src/`` is never extracted).
2. Installs what the selected test files import and the current interpreter lacks (printed).
3. Writes a pytest config from the sdist's ``[tool.pytest.ini_options]`` (its warning filters,
   markers, asyncio mode, strict xfail...) minus ``addopts``/``testpaths``/live logging, which
   name plugins (benchmark, coverage, doctest) this run does not use.
4. Preflight: in a fresh interpreter with ``ZARR_CODEC_PIPELINE__PATH`` unset and then set,
   creates, writes and reads an array, and checks which pipeline class the array got.
5. Runs the selected tests twice (default pipeline, then candidate), each with --junitxml; this
   file is also loaded as a pytest plugin (``-p zarr_suite``), which re-checks the configured
   pipeline at session start and counts the pipeline classes the arrays of each test got.
6. Compares per-test outcomes. Exit status: 0 when no test is worse with the candidate than with
   the default (passed/skipped/xfailed by default, failed/error/missing with the candidate) and
   the candidate pipeline was really used; 1 on regressions; 2 when the setup or the guard fails.

Standard library only (plus pip and pytest of the interpreter that runs it).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_WORKDIR = HERE / ".zarr-suite"
DEFAULT_FILES = ["tests/test_indexing.py", "tests/test_codecs", "tests/test_v2.py"]
DEFAULT_PIPELINE = "gpuzarr.CodecPipeline"
ENV_PIPELINE = "ZARR_CODEC_PIPELINE__PATH"
# Read by the plugin half of this file (see the bottom).
ENV_REPORT = "ZARR_SUITE_REPORT"
ENV_EXPECT = "ZARR_SUITE_EXPECT_PIPELINE"

# sdist pytest settings that this run replaces: addopts names plugins that are not installed
# here (pytest-benchmark, doctest modules over src/), testpaths would add src/ and docs/, and
# live INFO logging would flood the log.
DROPPED_PYTEST_OPTIONS = {"addopts", "testpaths", "minversion", "log_cli", "log_cli_level",
                          "required_plugins"}
# Fallback when no TOML parser is available (Python 3.10 without tomli).
FALLBACK_PYTEST_OPTIONS = {
    "asyncio_mode": "auto",
    "asyncio_default_fixture_loop_scope": "function",
    "xfail_strict": True,
    "markers": ["gpu: needs CuPy and a GPU", "slow_hypothesis: slow hypothesis tests",
                "asyncio: asyncio test", "s3: needs a (mock) S3 backend"],
}
# import name -> distribution name, where they differ (others: '_' -> '-').
PIP_NAMES = {
    "pytest_asyncio": "pytest-asyncio",
    "yaml": "pyyaml",
    "upath": "universal-pathlib",
    "google_crc32c": "google-crc32c",
    "pytest_accept": "pytest-accept",
    "cast_value_rs": "cast-value-rs",
}
# Pinned at their installed versions while installing test requirements, so that installing a
# test helper can never change what is being tested.
PINNED = ["zarr", "numpy", "numcodecs", "pytest"]
BAD = {"failed", "error", "missing"}  # candidate outcomes that count against it
BASE_BAD = {"failed", "error"}  # default-run outcomes that excuse the candidate
MAX_LISTED = 150  # regressions listed with their messages; the rest only counted
# Tests that examine zarr-python's own pipeline rather than the array it reads: a candidate
# failing them is reported with the reason, not held against it. Keyed by test function.
WAIVED = {
    "tests/test_codecs/test_sharding.py::test_sharding_partial_shard_read__index_chunk_slice_fails":
        "monkeypatches zarr-python's internal _ShardIndex.get_chunk_slice to return None; a pipeline "
        "that reads shard indexes itself never calls it, and reads the data that is there",
}

PREFLIGHT = r"""
import json, sys, tempfile
import numpy as np
import zarr, zarr.registry
from zarr.storage import LocalStore, MemoryStore
out = {"zarr": zarr.__version__, "zarr_file": zarr.__file__,
       "config_path": zarr.config.get("codec_pipeline.path")}
cls = zarr.registry.get_pipeline_class()
out["registry_class"] = cls.__module__ + "." + cls.__qualname__
got = {}
with tempfile.TemporaryDirectory() as tmp:
    for store in (LocalStore(tmp), MemoryStore()):
        for fmt in (3, 2):
            a = zarr.create_array(store, name=f"v{fmt}", shape=(6,), chunks=(2,), dtype="int32",
                                  fill_value=0, zarr_format=fmt)
            a[:] = np.arange(6, dtype="int32")
            assert list(a[1:5]) == [1, 2, 3, 4], a[:]
            pipe = getattr(a, "_async_array", a).codec_pipeline
            name = type(pipe).__module__ + "." + type(pipe).__qualname__
            got[f"{type(store).__name__} v{fmt}"] = [name, isinstance(pipe, cls)]
out["arrays"] = got
print("PREFLIGHT " + json.dumps(out))
"""


def log(msg: str = "") -> None:
    print(msg, flush=True)


def die(msg: str, code: int = 2) -> None:
    log(f"zarr_suite: ERROR: {msg}")
    sys.exit(code)


# --------------------------------------------------------------------------- sdist and setup


def fetch_sdist(version: str, workdir: Path) -> Path:
    pattern = re.compile(rf"^zarr-{re.escape(version)}\.(tar\.gz|tgz)$", re.IGNORECASE)
    cached = [p for p in workdir.glob("*") if pattern.match(p.name)]
    if cached:
        log(f"sdist: cached {cached[0]}")
        return cached[0]
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".download-") as tmp:
        # --no-binary for zarr only: build requirements (hatchling, hatch-vcs) may come as
        # wheels, which keeps the metadata preparation pip does a few seconds, not ~40 s.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "zarr",
               f"zarr=={version}", "-d", tmp]
        log("sdist: " + " ".join(cmd[2:]))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = [p for p in Path(tmp).iterdir() if pattern.match(p.name)]
        if proc.returncode != 0 or not got:
            die(f"could not download the zarr {version} sdist:\n{proc.stdout[-2000:]}"
                f"\n{proc.stderr[-2000:]}")
        dest = workdir / got[0].name
        shutil.move(str(got[0]), dest)
    log(f"sdist: downloaded {dest}")
    return dest


def extract_tests(sdist: Path, dest: Path) -> str:
    """Extract <top>/tests/ into dest/tests (fresh); return the sdist's pyproject.toml text."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    pyproject = ""
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) != 2:
                continue
            rel = parts[1]
            if rel == "pyproject.toml":
                f = tar.extractfile(m)
                pyproject = f.read().decode("utf-8") if f else ""
            elif rel == "tests" or rel.startswith("tests/"):
                if m.isfile() or m.isdir():
                    m.name = rel
                    members.append(m)
        if not members:
            die(f"{sdist} has no tests/ folder")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Pythons without extraction filters
            tar.extractall(dest, members=members)
    return pyproject


def load_toml(text: str) -> dict | None:
    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            return None
    return tomllib.loads(text)


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[\n" + "".join(f"    {toml_value(x)},\n" for x in v) + "]"
    raise TypeError(f"unsupported pytest option value {v!r}")


def write_pytest_config(pyproject: dict | None, dest: Path) -> tuple[Path, dict]:
    if pyproject is None:
        log("config: no TOML parser here; using a minimal built-in pytest config")
        options = dict(FALLBACK_PYTEST_OPTIONS)
    else:
        options = dict(pyproject.get("tool", {}).get("pytest", {}).get("ini_options", {}))
        dropped = sorted(k for k in options if k in DROPPED_PYTEST_OPTIONS)
        for k in dropped:
            del options[k]
        log(f"config: the sdist's [tool.pytest.ini_options] without {', '.join(dropped)}")
    path = dest / "zarr-suite-pytest.toml"
    lines = ["# generated by .ci/zarr_suite.py from the zarr sdist's pyproject.toml",
             "[tool.pytest.ini_options]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in options.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, options


# --------------------------------------------------------------------------- test requirements


def selected_sources(root: Path, selection: list[str]) -> list[Path]:
    files: set[Path] = set()
    tests = root / "tests"
    for sel in selection:
        p = (root / sel.split("::", 1)[0]).resolve()
        if p.is_dir():
            files.update(p.rglob("*.py"))
        elif p.is_file():
            files.add(p)
        else:
            die(f"{sel} is not in the sdist's tests")
        # conftest.py and __init__.py of every folder from tests/ down to the selection
        d = p if p.is_dir() else p.parent
        while True:
            files.update(f for f in (d / "conftest.py", d / "__init__.py") if f.exists())
            if d == tests or tests not in d.parents:
                break
            d = d.parent
    return sorted(files)


def _guarded(node: ast.AST) -> bool:
    """An `if TYPE_CHECKING:` block, or a try whose handlers catch an import failure."""
    if isinstance(node, ast.If):
        return "TYPE_CHECKING" in ast.unparse(node.test)
    if isinstance(node, ast.Try):
        names = " ".join(ast.unparse(h.type) if h.type else "BaseException"
                         for h in node.handlers)
        return any(n in names for n in ("ImportError", "ModuleNotFoundError", "Exception"))
    return False


def imported_modules(path: Path) -> tuple[set[str], bool]:
    """Top-level names of the unguarded absolute imports of a file; whether it has async defs."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    has_async = False

    def visit(node: ast.AST, guarded: bool) -> None:
        nonlocal has_async
        if isinstance(node, ast.AsyncFunctionDef):
            has_async = True
        if not guarded:
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        if isinstance(node, ast.Try) and _guarded(node):
            for child in node.body:
                visit(child, True)
            for rest in (node.handlers, node.orelse, node.finalbody):
                for child in rest:
                    visit(child, guarded)
            return
        if isinstance(node, ast.If) and _guarded(node):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found, has_async


def test_requirements(root: Path, selection: list[str], options: dict) -> tuple[list[str], list[str]]:
    """(third-party modules the selected tests need, pip names of those missing here)."""
    local = {p.stem for p in (root / "tests").rglob("*.py")}
    local |= {p.name for p in (root / "tests").rglob("*") if p.is_dir()}
    local |= {"tests", "zarr", "_pytest", "__future__"}
    needed: set[str] = {"pytest"}
    any_async = False
    for f in selected_sources(root, selection):
        mods, has_async = imported_modules(f)
        any_async |= has_async
        needed |= {m for m in mods if m not in local and m not in sys.stdlib_module_names}
    if any_async or "asyncio_mode" in options:
        needed.add("pytest_asyncio")  # a plugin: never imported by the tests themselves
    missing = sorted(m for m in needed if importlib.util.find_spec(m) is None)
    return sorted(needed), [PIP_NAMES.get(m, m.replace("_", "-")) for m in missing]


def install(packages: list[str], workdir: Path) -> None:
    pins = []
    for dist in PINNED:
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    constraints = workdir / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "-c", str(constraints), *packages]
    log(f"install: {' '.join(packages)} (holding {', '.join(pins)})")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        die(f"pip install failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    importlib.invalidate_caches()
    got = []
    for p in packages:
        try:
            got.append(f"{p}=={importlib.metadata.version(p)}")
        except importlib.metadata.PackageNotFoundError:
            got.append(p)
    log(f"install: installed {', '.join(got)}")


# --------------------------------------------------------------------------- running


def child_env(pipeline: str | None, report: Path | None, root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(ENV_PIPELINE, None)
    for k in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", ENV_REPORT, ENV_EXPECT):
        env.pop(k, None)
    if pipeline is not None:
        env[ENV_PIPELINE] = pipeline
        env[ENV_EXPECT] = pipeline
    if report is not None:
        env[ENV_REPORT] = str(report)
    # Only this file's folder is added (for `-p zarr_suite`); nothing of the sdist but tests/
    # exists on disk, so `import zarr` can only find the installed zarr.
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and not Path(p).resolve().is_relative_to(root)]
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *keep])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("HYPOTHESIS_PROFILE", "ci")  # derandomized: both runs draw the same examples
    return env


def preflight(label: str, pipeline: str | None, root: Path) -> dict:
    env = child_env(pipeline, None, root)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", PREFLIGHT], cwd=tmp, env=env,
                              capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PREFLIGHT ")), None)
    if proc.returncode != 0 or line is None:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        die(f"preflight ({label}, {ENV_PIPELINE}={pipeline or '<unset>'}) failed: zarr could "
            f"not create/read an array:\n{tail}")
    info = json.loads(line[len("PREFLIGHT "):])
    if Path(info["zarr_file"]).resolve().is_relative_to(root):
        die(f"preflight ({label}) imported zarr from the sdist: {info['zarr_file']}")
    if pipeline is not None and info["config_path"] != pipeline:
        die(f"preflight ({label}): zarr ignored {ENV_PIPELINE}={pipeline}: "
            f"codec_pipeline.path is {info['config_path']!r}")
    local = {k: v for k, v in info["arrays"].items() if k.startswith("LocalStore")}
    if not all(ok for _, ok in local.values()):
        die(f"preflight ({label}): arrays in a LocalStore did not get the configured "
            f"{info['registry_class']}: {local}")
    info["array_pipeline"] = next(iter(local.values()))[0]
    others = sorted({f"{k}: {n}" for k, (n, ok) in info["arrays"].items() if not ok})
    log(f"preflight {label}: codec_pipeline.path={info['config_path']} -> LocalStore arrays "
        f"get {info['array_pipeline']} (zarr {info['zarr']} from "
        f"{Path(info['zarr_file']).parent})")
    if others:
        log(f"preflight {label}: but {'; '.join(others)} (a fallback of the pipeline)")
    return info


def run_pytest(label: str, pipeline: str | None, root: Path, config: Path, out: Path,
               selection: list[str], kexpr: str | None, timeout: float) -> dict:
    junit, report, logf = out / f"{label}.xml", out / f"{label}-pipelines.json", out / f"{label}.log"
    for p in (junit, report, logf):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-c", str(config), "--rootdir", str(root),
           "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "zarr_suite",
           "--junitxml", str(junit), "-q", "-rfE", "--tb=short", "--color=no", *selection]
    if kexpr:
        cmd += ["-k", kexpr]
    log(f"run {label}: {ENV_PIPELINE}={pipeline or '<unset>'} pytest ... "
        f"{' '.join(selection)}{' -k ' + repr(kexpr) if kexpr else ''}")
    t0 = time.monotonic()
    with open(logf, "w") as fh:
        try:
            rc = subprocess.run(cmd, cwd=root, env=child_env(pipeline, report, root),
                                stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            die(f"pytest ({label}) ran past {timeout:.0f}s; see {logf}")
    secs = time.monotonic() - t0
    text = logf.read_text(errors="replace").strip().splitlines()
    summary = text[-1] if text else ""
    log(f"run {label}: exit {rc} in {secs:.1f}s: {summary.strip('= ')}  (log: {logf})")
    if rc not in (0, 1) or not junit.exists():
        tail = "\n".join(text[-25:])
        die(f"pytest ({label}) did not complete (exit {rc}):\n{tail}")
    pipes = json.loads(report.read_text()) if report.exists() else None
    return {"rc": rc, "seconds": secs, "junit": junit, "log": logf, "pipelines": pipes,
            "outcomes": parse_junit(junit, root)}


def node_id(root: Path, classname: str, name: str) -> str:
    """pytest's node id from junit's dotted classname (tests.test_x.TestY) and name."""
    if not classname:  # a collection error: the module is in name
        classname, name = name, ""
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        if root.joinpath(*parts[:i - 1], parts[i - 1] + ".py").is_file():
            return "::".join(["/".join(parts[:i]) + ".py", *parts[i:], *([name] if name else [])])
    return "::".join([classname, *([name] if name else [])])


def parse_junit(path: Path, root: Path) -> dict[str, tuple[str, str]]:
    rank = {"passed": 0, "xfailed": 0, "skipped": 0, "xpassed(strict)": 1, "failed": 2,
            "error": 3}
    res: dict[str, tuple[str, str]] = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        key = node_id(root, tc.get("classname", ""), tc.get("name", ""))
        outcome, msg = "passed", ""
        for child in tc:
            m = (child.get("message") or "") + "\n" + (child.text or "")
            if child.tag == "error":
                o = "error"
            elif child.tag == "failure":
                o = "xpassed(strict)" if m.lstrip().startswith("[XPASS(strict)]") else "failed"
            elif child.tag == "skipped":
                o = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
            else:
                continue
            if rank[o] >= rank[outcome]:
                outcome, msg = o, m.strip()
        if key in res and rank[res[key][0]] > rank[outcome]:
            continue
        res[key] = (outcome, msg)
    return res


def counts(outcomes: dict[str, tuple[str, str]]) -> str:
    c: dict[str, int] = {}
    for o, _ in outcomes.values():
        c[o] = c.get(o, 0) + 1
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed(strict)"]
    return ", ".join(f"{c[o]} {o}" for o in order if o in c) or "no tests"


def first_lines(msg: str, n: int = 2) -> str:
    lines = [ln.rstrip() for ln in msg.splitlines() if ln.strip()]
    return "\n".join("      " + ln[:200] for ln in lines[:n])


def pipeline_usage(run: dict, expected_cls: str) -> tuple[int, int, list[str]]:
    """(tests whose arrays got the expected class, tests with arrays at all, other tests)."""
    pipes = run["pipelines"] or {}
    per_test = {t: c for t, c in pipes.get("per_test", {}).items() if not t.startswith("<")}
    with_expected = [t for t, c in per_test.items() if expected_cls in c]
    other = sorted(t for t, c in per_test.items() if any(k != expected_cls for k in c))
    return len(with_expected), len(per_test), other


def compare(bo: dict, co: dict) -> tuple[list, list, list, list]:
    """Per-test outcomes of the default (bo) and candidate (co) runs -> (regressions,
    failing in both, fixed by the candidate, other changes)."""
    regressions, known, improved, changed = [], [], [], []
    for key in sorted(set(bo) | set(co)):
        b = bo.get(key, ("missing", ""))[0]
        c, cmsg = co.get(key, ("missing", "not run by the candidate (collection error?)"))
        waived = WAIVED.get(key.split("[")[0])
        if c in BAD and b not in BASE_BAD and waived:
            changed.append((key, b, f"{c}, waived: {waived}"))
        elif c in BAD and b not in BASE_BAD:  # incl. a collection error only the candidate has
            regressions.append((key, b, c, cmsg))
        elif c in BAD:
            known.append((key, b, c))
        elif b in BASE_BAD:
            improved.append((key, b, c))
        elif b != c:
            changed.append((key, b, c))
    return regressions, known, improved, changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                    help=f"candidate codec_pipeline.path (default {DEFAULT_PIPELINE})")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                    help="sdist cache and run folder (default .ci/.zarr-suite)")
    ap.add_argument("-k", dest="kexpr", help="pytest -k expression, applied to both runs")
    ap.add_argument("--files", nargs="+", default=DEFAULT_FILES, metavar="PATH",
                    help=f"test paths inside the sdist (default {' '.join(DEFAULT_FILES)})")
    ap.add_argument("--run-timeout", type=float, default=1800, metavar="SECONDS",
                    help="limit for each of the two pytest runs (default 1800)")
    ap.add_argument("--no-install", action="store_true",
                    help="fail instead of installing missing test requirements")
    args = ap.parse_args(argv)
    t_start = time.monotonic()

    try:
        version = importlib.metadata.version("zarr")
    except importlib.metadata.PackageNotFoundError:
        die("zarr-python is not installed in this interpreter")
    log(f"zarr_suite: zarr {version} on Python {sys.version.split()[0]} ({sys.executable}); "
        f"candidate {args.pipeline}")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    sdist = fetch_sdist(version, workdir)
    root = workdir / f"zarr-{version}"
    pyproject_text = extract_tests(sdist, root)
    config, options = write_pytest_config(load_toml(pyproject_text) if pyproject_text else None,
                                          root)

    needed, missing = test_requirements(root, args.files, options)
    log(f"install: the selected tests need {', '.join(needed)} (besides zarr and the stdlib)")
    if missing:
        if args.no_install:
            die(f"missing test requirements: {' '.join(missing)}")
        install(missing, workdir)
    else:
        log("install: nothing to install, all present")

    base_info = preflight("default", None, root)
    cand_info = preflight("candidate", args.pipeline, root)
    if (cand_info["array_pipeline"] == base_info["array_pipeline"]
            and args.pipeline != base_info["config_path"]):
        die(f"the candidate {args.pipeline} gives arrays the default pipeline "
            f"{base_info['array_pipeline']}: it is not being used")

    out = workdir / "results" / f"zarr-{version}-py{sys.version_info[0]}.{sys.version_info[1]}"
    out.mkdir(parents=True, exist_ok=True)
    base = run_pytest("default", None, root, config, out, args.files, args.kexpr,
                      args.run_timeout)
    cand = run_pytest("candidate", args.pipeline, root, config, out, args.files, args.kexpr,
                      args.run_timeout)

    bo, co = base["outcomes"], cand["outcomes"]
    problems: list[str] = []
    regressions, known, improved, changed = compare(bo, co)
    base_collect = [k for k, (o, m) in bo.items() if o == "error" and "collection failure" in m]
    if not bo:
        problems.append(f"the default run ran no tests; see {base['log']}")
    if base_collect:
        problems.append(f"the default run has collection errors (setup problem): "
                        f"{', '.join(base_collect)}; see {base['log']}")

    used, with_arrays, other = pipeline_usage(cand, cand_info["array_pipeline"])
    base_used, base_arrays, _ = pipeline_usage(base, base_info["array_pipeline"])

    log("")
    log(f"== zarr {version} tests ({' '.join(args.files)}), Python {sys.version.split()[0]}")
    log(f"default   ({base_info['array_pipeline']}): {counts(bo)}  [{base['seconds']:.1f}s]")
    log(f"candidate ({args.pipeline}): {counts(co)}  [{cand['seconds']:.1f}s]")
    if cand["pipelines"] is None:
        problems.append("the candidate run wrote no pipeline report (plugin not loaded?)")
    else:
        log(f"pipeline use: {used} of the {with_arrays} candidate-run tests that created arrays "
            f"gave them {cand_info['array_pipeline']} (default run: {base_used} of "
            f"{base_arrays} got {base_info['array_pipeline']})")
        if other:
            log(f"  {len(other)} candidate-run tests also created arrays with another pipeline "
                f"(tests that set codec_pipeline.path themselves, or a fallback): "
                + ", ".join(other[:8]) + (" ..." if len(other) > 8 else ""))
        if with_arrays and not used:
            problems.append(f"no test's arrays got the candidate pipeline "
                            f"{cand_info['array_pipeline']}")
        elif not with_arrays:
            log("  (no selected test created an array; the preflight alone checked the pipeline)")
    fallbacks = (cand["pipelines"] or {}).get("fallbacks")
    if fallbacks is not None:
        log(f"gpuzarr.CodecPipeline reads handed to zarr-python's pipeline: {sum(fallbacks.values())}"
            + "".join(f"\n  {n:5d} x {reason}" for reason, n in sorted(fallbacks.items(), key=lambda kv: -kv[1])))
    if known:
        log(f"failing with the default pipeline too (not held against the candidate): "
            f"{len(known)}")
        for key, b, c in known[:20]:
            log(f"  {key}: default {b}, candidate {c}")
    if improved:
        log(f"failing by default, not with the candidate: {len(improved)}")
        for key, b, c in improved[:20]:
            log(f"  {key}: default {b}, candidate {c}")
    if changed:
        log(f"other outcome changes (not regressions): {len(changed)}")
        for key, b, c in changed[:20]:
            log(f"  {key}: default {b}, candidate {c}")
    if regressions:
        log(f"REGRESSIONS (pass/skip/xfail by default, {'/'.join(sorted(BAD))} with the "
            f"candidate): {len(regressions)}")
        for key, b, c, msg in regressions[:MAX_LISTED]:
            log(f"  {key}: default {b}, candidate {c}")
            if msg:
                log(first_lines(msg))
        if len(regressions) > MAX_LISTED:
            log(f"  ... and {len(regressions) - MAX_LISTED} more")
        tally: dict[str, int] = {}
        for *_, msg in regressions:
            first = next((ln.strip() for ln in msg.splitlines() if ln.strip()), "(no message)")
            tally[first[:160]] = tally.get(first[:160], 0) + 1
        log("  most common first lines:")
        for first, n in sorted(tally.items(), key=lambda kv: -kv[1])[:10]:
            log(f"    {n:4d} x {first}")
        log(f"  full output: {cand['log']}")
    for p in problems:
        log(f"PROBLEM: {p}")
    verdict = "FAIL" if regressions or problems else "OK"
    log(f"zarr_suite: {verdict}: {len(regressions)} regressions; "
        f"total {time.monotonic() - t_start:.1f}s")
    if problems:
        return 2
    return 1 if regressions else 0


# --------------------------------------------------------------------------- pytest plugin half
# Loaded in the pytest runs above with `-p zarr_suite` (this folder is put on PYTHONPATH).
# Inactive unless ZARR_SUITE_REPORT is set.

_current_test = "<collection>"
_per_test: dict[str, dict[str, int]] = {}


def pytest_sessionstart(session) -> None:  # noqa: ANN001
    if not os.environ.get(ENV_REPORT):
        return
    import zarr
    import zarr.core.array
    import zarr.registry

    expected = os.environ.get(ENV_EXPECT)
    if expected:
        import pytest

        path = zarr.config.get("codec_pipeline.path")
        if path != expected:
            pytest.exit(f"zarr_suite: codec_pipeline.path is {path!r}, not {expected!r}", 3)
        try:
            zarr.registry.get_pipeline_class()
        except Exception as e:  # noqa: BLE001
            pytest.exit(f"zarr_suite: pipeline {expected!r} does not resolve: {e!r}", 3)

    original = getattr(zarr.core.array, "create_codec_pipeline", None)
    if original is None:
        return

    def create_codec_pipeline(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        pipe = original(*args, **kwargs)
        name = type(pipe).__module__ + "." + type(pipe).__qualname__
        counts = _per_test.setdefault(_current_test, {})
        counts[name] = counts.get(name, 0) + 1
        return pipe

    zarr.core.array.create_codec_pipeline = create_codec_pipeline


def pytest_runtest_logstart(nodeid, location) -> None:  # noqa: ANN001
    global _current_test
    _current_test = nodeid


def pytest_runtest_logfinish(nodeid, location) -> None:  # noqa: ANN001
    global _current_test
    _current_test = "<between tests>"


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ANN001
    report = os.environ.get(ENV_REPORT)
    if not report:
        return
    totals: dict[str, int] = {}
    for c in _per_test.values():
        for k, v in c.items():
            totals[k] = totals.get(k, 0) + v
    gpuzarr_pipeline = sys.modules.get("gpuzarr.zarr_pipeline")  # its fallbacks, by reason
    fallbacks = dict(gpuzarr_pipeline.FALLBACKS) if gpuzarr_pipeline is not None else None
    Path(report).write_text(json.dumps({"totals": totals, "per_test": _per_test, "fallbacks": fallbacks},
                                       indent=1))


if __name__ == "__main__":
    sys.exit(main())
