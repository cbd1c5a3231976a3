"""GPU check: the extraction task body on CUDA vs CPU, and the GPU-marked tests.

Runs where Spark may be missing (a bare GPU machine with torch): it times what an
extraction task does per model — load the checkpoint onto the device, compute every
3x3 layer's quality metrics there, and bring the filters back to host memory as the
rows to stream — on ``cuda:0`` and on the CPU, over a generated zoo of random-init
ResNet/VGG-like state_dicts, and prints filters/s for each and their ratio. When
pyspark and pyarrow are importable it times ``extraction.extract_model`` itself
(Arrow batches included).

    python benchmarks/gpu_check.py [--models 6] [--width 256] [--repeat 2]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402


def make_model(width: int, depth: int, seed: int) -> nn.Module:
    """A VGG/ResNet-like stack of 3x3 convs (plus 1x1 shortcuts) at the given width."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, width // 4, 3)]
    channels = width // 4
    for i in range(depth):
        out = min(width, channels * 2) if i % 3 == 2 else channels
        layers += [nn.Conv2d(channels, out, 3), nn.Conv2d(out, out, 1)]
        channels = out
    return nn.Sequential(*layers)


def generate_zoo(folder: Path, models: int, width: int) -> list[Path]:
    from safetensors.torch import save_file

    paths = []
    for i in range(models):
        state = {k: v.contiguous() for k, v in make_model(width, 8 + i % 4, seed=i).state_dict().items()}
        path = folder / (f"m{i}.safetensors" if i % 2 else f"m{i}.pt")
        save_file(state, str(path)) if i % 2 else torch.save(state, path)
        paths.append(path)
    return paths


def task_body_without_spark(path: Path, device: str) -> int:
    """Load → per-layer quality on ``device`` → filters to host memory; returns 3x3 count."""
    from filterspark.sources.loaders import load_model
    from filterspark.kernels.quality import layer_quality

    loaded = load_model(str(path), None, device=device)
    count = 0
    for layer in loaded.layers:
        if layer.kernel_shape == (3, 3):
            layer_quality(layer.weight)
            rows = layer.weight.detach().reshape(-1, 9).to("cpu", torch.float32).numpy()
            count += rows.shape[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return count


def task_body_with_spark_modules(path: Path, device: str) -> int:
    from filterspark.sources.catalog import CatalogEntry
    from filterspark.pipelines.extract_task import extract_model

    result = extract_model(CatalogEntry(name=path.stem, path=str(path)), device=device)
    assert result.summary["status"] == "ok", result.summary.get("error")
    count = sum(batch.num_rows for batch in result.filter_batches())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return count


def time_device(paths: list[Path], device: str, repeat: int, body) -> tuple[float, int]:
    body(paths[0], device)  # warm-up: CUDA context, kernels, file cache
    best = float("inf")
    filters = 0
    for _ in range(repeat):
        start = time.perf_counter()
        filters = sum(body(p, device) for p in paths)
        best = min(best, time.perf_counter() - start)
    return best, filters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)

    full = all(importlib.util.find_spec(m) for m in ("pyspark", "pyarrow"))
    body = task_body_with_spark_modules if full else task_body_without_spark
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}, "
          f"devices: {torch.cuda.device_count()}, cpu threads: {torch.get_num_threads()}")
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name(0)}")
    print(f"timing: {'extraction.extract_model (Arrow batches included)' if full else 'load + layer_quality + rows to host (no pyspark/pyarrow here)'}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate_zoo(Path(tmp), args.models, args.width)
        size = sum(os.path.getsize(p) for p in paths)
        print(f"zoo: {len(paths)} checkpoints, {size / 1e6:.0f} MB")
        results = {}
        for device in ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else []):
            seconds, filters = time_device(paths, device, args.repeat, body)
            results[device] = filters / seconds
            print(f"{device:7s} {filters:>12,} filters  {seconds:7.2f} s  {filters / seconds:>14,.0f} filters/s")
        if "cuda:0" in results:
            print(f"ratio gpu/cpu: {results['cuda:0'] / results['cpu']:.2f}x")
        else:
            print("no CUDA device: GPU timing not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
