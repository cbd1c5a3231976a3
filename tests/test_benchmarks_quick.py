"""The benchmark scripts' ``--quick`` modes: tiny data, agreement checks only.

Each script runs as its own process, as a user runs it, and starts its own Spark through
the project's ``build_session`` (never in this test process, which shares one session).
A script exits 1 when its contenders disagree (explained-variance ratios, shift
matrices, histogram counts, extracted rows), so exit code 0 is the assertion. The PCA
and analysis scripts reuse the data ``make_filters.py --quick`` generated.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TIMEOUT_S = int(os.environ.get("FILTERSPARK_BENCH_QUICK_TIMEOUT", "900"))

pytestmark = pytest.mark.slow


def run_script(script: str, *args: str) -> str:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("PYSPARK_GATEWAY_PORT", None)  # never attach to this process's JVM
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *args],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=BENCHMARKS.parent,
    )
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
    assert done.returncode == 0, f"{script} --quick exited {done.returncode}:\n{tail}"
    assert "all checks passed" in done.stdout and "[FAIL]" not in done.stdout, tail
    return done.stdout


@pytest.fixture(scope="module")
def quick_data(tmp_path_factory) -> Path:
    """``make_filters.py --quick``: 20k synthetic filters as Delta + Parquet (its checks pass)."""
    out = tmp_path_factory.mktemp("bench") / "data"
    stdout = run_script("make_filters.py", "--out", str(out))
    assert "20,000 filters" in stdout
    return out


def test_make_filters_quick(quick_data: Path) -> None:
    assert (quick_data / "manifest.json").is_file()
    assert any((quick_data / "parquet" / "filters").glob("*.parquet"))


def test_replicate_quick(quick_data: Path, tmp_path: Path) -> None:
    """``--replicate-from``: K copies with new model ids, each a different kernel symmetry;
    the script's own checks (rows per model as planned) pass."""
    import json

    import numpy as np

    out = tmp_path / "x3"
    run_script("make_filters.py", "--replicate-from", str(quick_data), "--copies", "3", "--out", str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    source = json.loads((quick_data / "manifest.json").read_text())
    assert manifest["n_filters"] == 3 * source["n_filters"] and manifest["n_models"] == 3 * source["n_models"]
    assert len({m["model_id"] for m in manifest["models"]}) == manifest["n_models"]
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from make_filters import dihedral_permutations
    finally:
        sys.path.remove(str(BENCHMARKS))
    perms = dihedral_permutations()
    assert len({tuple(p) for p in perms}) == 8 and perms[0] == list(range(9))
    assert np.array(perms[1]).reshape(3, 3).tolist() == np.rot90(np.arange(9).reshape(3, 3)).tolist()


def test_pca_quick_agrees(quick_data: Path) -> None:
    stdout = run_script("pca.py", "--data", str(quick_data))
    assert "ours vs mllib: explained-variance ratios agree" in stdout
    assert "ours vs in-memory: explained-variance ratios agree" in stdout


def test_analyze_quick_agrees(quick_data: Path) -> None:
    stdout = run_script("analyze.py", "--data", str(quick_data))
    assert "shifts agree" in stdout and "histogram counts agree" in stdout


def test_regroup_quick_agrees(quick_data: Path) -> None:
    stdout = run_script("regroup.py", "--data", str(quick_data))
    assert "[ok] shifts --by task equals the run's" in stdout and "[ok] the incremental run read 1 model" in stdout


def test_extract_quick_agrees() -> None:
    stdout = run_script("extract.py")
    assert "same weights, filter indices and depths per layer" in stdout


def test_whole_process_quick_agrees() -> None:
    """Fresh processes: spark-submit extract.py vs the floor process, analyze.py, one
    ``filterspark sql`` query and a bare count; rows agree and every tree was measured."""
    out = run_script("whole_process.py")
    table = [line for line in out.splitlines() if line.startswith("| ")][1:]
    assert len(table) == 5 and all(float(row.split("|")[4]) > 0 for row in table), out


def test_projection_separates_fixed_and_per_filter_cost() -> None:
    """The 1.4B projection's arithmetic, from two synthetic timings t = a + n / (cores * r)."""
    import importlib.util

    saved_path, saved_modules = list(sys.path), set(sys.modules)
    try:  # the script puts benchmarks/ on sys.path for its helpers: undo that afterwards
        spec = importlib.util.spec_from_file_location("bench_analyze", BENCHMARKS / "analyze.py")
        analyze = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(analyze)
    finally:
        sys.path[:] = saved_path
        for name in ("benchlib", "make_filters"):
            if name not in saved_modules:
                sys.modules.pop(name, None)
    fixed, per_core, cores = 30.0, 250_000.0, 2
    t = lambda n: fixed + n / (cores * per_core)  # noqa: E731
    proj = analyze.projection(2_000_000, t(2_000_000), 20_000_000, t(20_000_000), cores)
    assert abs(proj["fixed_s"] - fixed) < 1e-6 and abs(proj["per_core"] - per_core) < 1e-3
    assert abs(proj["projected_s"] - (fixed + 1.4e9 / (per_core * 64))) < 1e-6
    manifest = {"n_filters": 100, "models": [{"model_id": i, "n_filters": 10} for i in range(10)]}
    where, n_small = analyze.subset_where(manifest)
    assert n_small == 10 and where.startswith("model_id IN (")
