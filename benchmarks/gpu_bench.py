"""Per-task extraction speed on the GPU vs the CPU (the code every Spark task runs).

For each device: every model of a catalog (the demo zoo by default) plus a few large
synthetic checkpoints goes through ``extract_model`` (load + layer metrics on the
device) and ``filter_batches`` (the Arrow rows Spark receives), after one warm-up
pass. Prints filters/s per device and phase, checks that the GPU gives exactly the
CPU's filter rows and the same metrics (1e-7 relative), and writes ``gpu_bench.json``.

    python benchmarks/gpu_bench.py [--catalog CSV | --zoo DIR] [--big N] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filterspark.sources.catalog import CatalogEntry, read_catalog  # noqa: E402
from filterspark.pipelines.extract_task import extract_model  # noqa: E402


def big_checkpoints(folder: Path, n: int) -> list[CatalogEntry]:
    """``n`` wide stacks of 3x3 convs (2.8M filters, 96 MiB each), float32 state_dicts."""
    entries = []
    widths = [64, 128, 256, 512, 1024, 1024, 1024]
    for k in range(n):
        gen = torch.Generator().manual_seed(k)
        state = {}
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            state[f"features.{i}.weight"] = torch.randn(b, a, 3, 3, generator=gen) * 0.05
            state[f"features.{i}.bias"] = torch.zeros(b)
        path = folder / f"big{k}.pt"
        torch.save(state, path)
        entries.append(CatalogEntry(name=f"big{k}", path=str(path), format="pytorch"))
    return entries


def run(entries: list[CatalogEntry], device: str) -> dict:
    """Extract every entry on ``device``; phase timings, filter count and the results."""
    load_s = rows_s = 0.0
    filters = 0
    results = {}
    for entry in entries:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = extract_model(entry, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        batches = list(result.filter_batches())
        t2 = time.perf_counter()
        load_s += t1 - t0
        rows_s += t2 - t1
        filters += sum(b.num_rows for b in batches)
        results[entry.name] = (result.summary, result.layers, batches)
        result.loaded = None
    total = load_s + rows_s
    return {
        "device": device,
        "models": len(entries),
        "filters": filters,
        "load_and_metrics_s": round(load_s, 3),
        "arrow_rows_s": round(rows_s, 3),
        "total_s": round(total, 3),
        "filters_per_s": round(filters / total) if total else None,
        "filters_per_s_load_and_metrics": round(filters / load_s) if load_s else None,
        "_results": results,
    }


def compare(cpu: dict, gpu: dict) -> list[str]:
    """Differences between the CPU and GPU results (empty when they agree)."""
    problems = []
    for name, (summary, layers, batches) in cpu["_results"].items():
        g_summary, g_layers, g_batches = gpu["_results"][name]
        if summary["status"] != g_summary["status"]:
            problems.append(f"{name}: status {summary['status']} vs {g_summary['status']}")
            continue
        if [b.to_pydict() for b in batches] != [b.to_pydict() for b in g_batches]:
            problems.append(f"{name}: filter rows differ")
        for lc, lg in zip(layers, g_layers):
            for key, value in lc.items():
                other = lg.get(key)
                if isinstance(value, float) and isinstance(other, float):
                    if not (math.isclose(value, other, rel_tol=1e-7, abs_tol=1e-10) or (math.isnan(value) and math.isnan(other))):
                        problems.append(f"{name} layer {lc['layer_index']} {key}: {value!r} vs {other!r}")
                elif value != other:
                    problems.append(f"{name} layer {lc['layer_index']} {key}: {value!r} vs {other!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", help="catalog to extract (default: the demo zoo)")
    parser.add_argument("--zoo", default=None, help="where to build the demo zoo (default: a temp dir)")
    parser.add_argument("--big", type=int, default=2, help="large synthetic checkpoints added (default 2)")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_bench.json")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    catalog = args.catalog
    if not catalog:
        from filterspark.demo.zoo import build_demo_zoo

        t0 = time.perf_counter()
        catalog = build_demo_zoo(args.zoo or tmp / "zoo")
        print(f"demo zoo built in {time.perf_counter() - t0:.1f} s", flush=True)
    small = read_catalog(catalog)
    big = big_checkpoints(tmp, args.big)

    devices = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }
    print(json.dumps(info), flush=True)
    report = {"info": info, "runs": [], "agreement": {}}
    for label, entries in (("demo zoo", small), ("large synthetic", big)):
        runs = {}
        for device in devices:
            run(entries[:1], device)  # warm-up: CUDA context, kernels, allocator, page cache
            runs[device] = run(entries, device)
            row = {k: v for k, v in runs[device].items() if not k.startswith("_")}
            row["set"] = label
            report["runs"].append(row)
            print(
                f"{label:16s} {device:7s} {row['models']:3d} models {row['filters']:>10,} filters "
                f"{row['total_s']:8.2f} s  {row['filters_per_s']:>12,} filters/s "
                f"(load+metrics {row['load_and_metrics_s']:.2f} s, arrow rows {row['arrow_rows_s']:.2f} s)",
                flush=True,
            )
        if "cuda:0" in runs:
            problems = compare(runs["cpu"], runs["cuda:0"])
            report["agreement"][label] = problems[:20] or "identical filters, metrics within 1e-7"
            print(f"{label}: GPU vs CPU: {report['agreement'][label]}", flush=True)
    if not torch.cuda.is_available():
        print("CUDA is not available: CPU numbers only", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=2))
    bad = [v for v in report["agreement"].values() if isinstance(v, list)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
