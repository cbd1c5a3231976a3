"""``filterspark catalog DIR --out FILE [--append]`` on a made-up folder tree."""
from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from filterspark.sources.catalog import read_catalog
from filterspark.sources.catalog_scan import scan_folder
from filterspark.cli import main
from filterspark.sources.loaders import load_model
from format_writers import small_state_dict, write_keras3, write_keras_h5, write_small_tflite

CARD = """---
license: apache-2.0
library_name: timm
pipeline_tag: image-classification
datasets:
- imagenet-1k
- imagenet-21k
tags: [vision]
---
# A model card
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """hub/ (Hugging Face cache), pipe/ (diffusers), loose/ (files), junk."""
    sd = small_state_dict()
    root = tmp_path_factory.mktemp("tree")
    # Hugging Face cache: models--org--net/{blobs,refs,snapshots/<sha>}; snapshot files link to blobs
    repo = root / "hub" / "models--acme--tiny-net"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    (repo / "snapshots" / "old999").mkdir()  # an older snapshot, not the one refs/main names
    save_file(sd, str(blobs / "aaa"))
    (blobs / "bbb").write_text(json.dumps({"architectures": ["TinyNet"], "model_type": "tiny"}))
    (blobs / "ccc").write_text(CARD)
    for name, blob in (("model.safetensors", "aaa"), ("config.json", "bbb"), ("README.md", "ccc")):
        (snap / name).symlink_to(os.path.join("..", "..", "blobs", blob))
    (root / "hub" / ".locks").mkdir()
    data_repo = root / "hub" / "datasets--acme--pictures"
    (data_repo / "snapshots" / "fff").mkdir(parents=True)
    torch.save(sd, data_repo / "snapshots" / "fff" / "looks_like_a_checkpoint.pt")  # datasets are not models
    # diffusers pipeline: one model per component
    pipe = root / "pipe"
    for comp in ("unet", "vae"):
        (pipe / comp).mkdir(parents=True)
        save_file(sd, str(pipe / comp / "diffusion_pytorch_model.safetensors"))
        (pipe / comp / "config.json").write_text(json.dumps({"_class_name": f"{comp.upper()}Model"}))
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / "scheduler_config.json").write_text("{}")
    (pipe / "model_index.json").write_text("{}")
    (pipe / "README.md").write_text("---\npipeline_tag: text-to-image\nlicense: mit\n---\n")
    # loose files, two sharing a stem
    loose = root / "loose"
    loose.mkdir()
    torch.save(sd, loose / "net.pt")
    (loose / "net.tflite").write_bytes(write_small_tflite(sd)[0])
    write_keras3(loose / "other.keras", sd)
    write_keras_h5(loose / "weights.h5", sd, weights_only=True)
    # not checkpoints
    (loose / "notes.txt").write_text("hello")
    (loose / "labels.json").write_text("[]")
    (loose / "raw.bin").write_bytes(os.urandom(256))  # no pickle/zip magic: e.g. ONNX external data
    (root / "saved").mkdir()
    (root / "saved" / "saved_model.pb").write_bytes(b"\x08\x01")
    (root / "saved" / "variables").mkdir()
    return root


EXPECTED = {
    "acme/tiny-net": ("huggingface", {"task": "image-classification", "training_dataset": "imagenet-1k,imagenet-21k",
                                      "library_name": "timm", "license": "apache-2.0", "architectures": "TinyNet",
                                      "model_type": "tiny"}),
    "pipe/unet": ("huggingface", {"task": "text-to-image", "license": "mit", "class_name": "UNETModel"}),
    "pipe/vae": ("huggingface", {"task": "text-to-image", "license": "mit", "class_name": "VAEModel"}),
    "loose/net.pt": ("pytorch", {}),
    "loose/net.tflite": ("tflite", {}),
    "loose/other": ("keras", {}),
    "loose/weights": ("keras", {}),
}
META = ("task", "training_dataset", "library_name", "license", "architectures", "model_type", "class_name")


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_catalog_from_folder(tree, tmp_path, capsys) -> None:
    out = tmp_path / "catalog.csv"
    assert main(["catalog", str(tree), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {r["name"]: r for r in _rows(out)}
    assert set(rows) == set(EXPECTED)
    for name, (fmt, meta) in EXPECTED.items():
        assert rows[name]["format"] == fmt, name
        assert {k: v for k, v in rows[name].items() if k in META and v} == meta, name
    assert rows["acme/tiny-net"]["path"].endswith(os.path.join("snapshots", "0123abc"))
    # skipped and counted: notes.txt, labels.json, raw.bin, the SavedModel folder, the dataset repo
    assert "skipped (no supported checkpoint): 5" in printed and "SavedModel" in printed
    entries = read_catalog(out)  # a valid catalog; every row loads
    assert len(entries) == len(EXPECTED)
    for entry in entries:
        model = load_model(entry.path, entry.format)
        assert sum(l.n_kernels for l in model.layers if l.kernel_shape == (3, 3)) == 4 * 3 + 8 + 18 + 30


def test_append_is_idempotent(tree, tmp_path) -> None:
    out = tmp_path / "catalog.csv"
    assert main(["catalog", str(tree / "loose"), "--out", str(out)]) == 0
    first = _rows(out)
    assert {r["name"] for r in first} == {"net.pt", "net.tflite", "other", "weights"}
    before = out.read_bytes()
    assert main(["catalog", str(tree / "loose"), "--out", str(out), "--append"]) == 0
    assert out.read_bytes() == before  # nothing new: untouched
    assert main(["catalog", str(tree), "--out", str(out), "--append"]) == 0
    rows = _rows(out)
    assert rows[: len(first)] == [{**r, **{k: "" for k in rows[0] if k not in r}} for r in first]
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)) == len(first) + 3  # + acme/tiny-net, pipe/unet, pipe/vae
    paths = {os.path.normpath(os.path.join(tmp_path, r["path"])) for r in rows}
    assert len(paths) == len(rows)  # the loose files were not added a second time
    again = out.read_bytes()
    assert main(["catalog", str(tree), "--out", str(out), "--append"]) == 0
    assert out.read_bytes() == again


def test_scan_of_one_cache_repo(tree) -> None:
    report = scan_folder(tree / "hub" / "models--acme--tiny-net")
    assert [(r["name"], r["format"]) for r in report.rows] == [("acme/tiny-net", "huggingface")]


def test_json_lines_catalog(tree, tmp_path) -> None:
    out = tmp_path / "catalog.jsonl"
    assert main(["catalog", str(tree / "loose"), "--out", str(out)]) == 0
    assert {e.name for e in read_catalog(out)} == {"net.pt", "net.tflite", "other", "weights"}
    before = out.read_bytes()
    assert main(["catalog", str(tree / "loose"), "--out", str(out), "--append"]) == 0
    assert out.read_bytes() == before
