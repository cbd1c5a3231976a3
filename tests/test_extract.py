"""Extraction job: formats, exactness, idempotence, incremental runs, failure isolation."""
from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from filterspark.sources.catalog import CatalogError, model_id_for, read_catalog
from filterspark.pipelines.extract import ExtractOptions, run_extraction
from filterspark.delta.warehouse import table_path

FORMAT_FILES = {
    "tiny-pt": ("state_dict.pt", "pytorch"),
    "tiny-ckpt": ("checkpoint.pth", None),
    "tiny-script": ("scripted.ts", "torchscript"),
    "tiny-safetensors": ("weights.safetensors", None),
    "tiny-onnx": ("model.onnx", "onnx"),
}


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 12, 3, padding=1, groups=3)
        self.c3 = nn.Conv2d(12, 12, 3, padding=1, groups=12)  # depthwise
        self.c4 = nn.Conv2d(12, 8, 1)
        self.c5 = nn.Conv2d(8, 4, 5, padding=2)

    def forward(self, x):
        return self.c5(self.c4(torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))))


class NoConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


class Boom:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def save_every_format(model: nn.Module, folder: Path) -> None:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "state_dict.pt")
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {"lr": 0.1}}, folder / "checkpoint.pth")
    torch.jit.script(model).save(str(folder / "scripted.ts"))
    save_file(state, str(folder / "weights.safetensors"))
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(folder / "model.onnx"), dynamo=False, opset_version=17)


def write_catalog(path: Path, rows: list[dict]) -> Path:
    columns = ["name", "path", "format", "task", "visual_category", "family", "variant"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One tiny model in every format, plus broken and unsafe files, and a catalog."""
    folder = tmp_path_factory.mktemp("tinyzoo")
    torch.manual_seed(7)
    model = TinyNet().eval()
    save_every_format(model, folder)
    torch.save(NoConvNet().state_dict(), folder / "noconv.pt")
    good = (folder / "state_dict.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(good[: len(good) // 2])
    (folder / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    marker = folder / "pwned.txt"
    (folder / "evil.pt").write_bytes(pickle.dumps({"w": Boom(str(marker))}))
    # ONNX whose external data points outside its own directory.
    outside = folder / "ext"
    outside.mkdir()
    proto = onnx.load(str(folder / "model.onnx"))
    onnx.save_model(proto, str(outside / "escape.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    proto = onnx.load(str(outside / "escape.onnx"), load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../state_dict.pt"
    onnx.save_model(proto, str(outside / "escape.onnx"))

    rows = [
        {"name": name, "path": file, "format": fmt or "", "task": "classification",
         "visual_category": "handwriting", "family": "tinynet", "variant": "trained"}
        for name, (file, fmt) in FORMAT_FILES.items()
    ]
    bad = {
        "missing": "does-not-exist.pt",
        "truncated": "truncated.pt",
        "random-bytes": "random.bin",
        "unsafe-pickle": "evil.pt",
        "onnx-escape": "ext/escape.onnx",
    }
    rows += [{"name": n, "path": p, "task": "broken", "variant": "broken"} for n, p in bad.items()]
    rows.append({"name": "no-conv", "path": "noconv.pt", "task": "regression", "variant": "noconv"})
    catalog = write_catalog(folder / "catalog.csv", rows)
    return {"folder": folder, "model": model, "catalog": catalog, "marker": marker, "bad": bad}


@pytest.fixture(scope="module")
def extracted(spark, zoo, tmp_path_factory):
    warehouse = str(tmp_path_factory.mktemp("wh_extract"))
    report = run_extraction(spark, read_catalog(zoo["catalog"]), ExtractOptions(warehouse=warehouse))
    return {"warehouse": warehouse, "report": report}


def read_table(spark, warehouse: str, name: str):
    return spark.read.format("delta").load(table_path(warehouse, "filterdb", name))


def table_version(spark, warehouse: str, name: str) -> int:
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, table_path(warehouse, "filterdb", name)).history(1).collect()[0].version


# --- catalog ------------------------------------------------------------------------------------


def test_catalog_validation(tmp_path):
    (tmp_path / "nopath.csv").write_text("name,task\na,x\n")
    with pytest.raises(CatalogError, match="missing required column.*path"):
        read_catalog(tmp_path / "nopath.csv")
    (tmp_path / "dup.csv").write_text("name,path\na,x.pt\nb,y.pt\na,z.pt\n")
    with pytest.raises(CatalogError, match="duplicate model name 'a'"):
        read_catalog(tmp_path / "dup.csv")
    (tmp_path / "empty.csv").write_text("name,path\n")
    with pytest.raises(CatalogError, match="no models"):
        read_catalog(tmp_path / "empty.csv")
    with pytest.raises(CatalogError, match="not found"):
        read_catalog(tmp_path / "nothing.csv")


def test_catalog_json_lines_keeps_extra_columns(tmp_path):
    lines = [
        {"name": "m1", "path": "sub/m1.pt", "task": "denoising", "lr": 0.01, "allow_pickle": True},
        {"name": "m2", "path": "/abs/m2.onnx", "format": "onnx", "epochs": 3},
    ]
    (tmp_path / "cat.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
    m1, m2 = read_catalog(tmp_path / "cat.jsonl")
    assert m1.path == str(tmp_path / "sub" / "m1.pt") and m2.path == "/abs/m2.onnx"
    assert m1.known["task"] == "denoising" and m1.extra == {"lr": "0.01"} and m1.allow_pickle
    assert m2.format == "onnx" and m2.extra == {"epochs": "3"} and not m2.allow_pickle
    assert m1.model_id == model_id_for("m1") > 0


# --- formats and exactness ------------------------------------------------------------------------


def test_every_format_yields_exact_filters(spark, zoo, extracted):
    weights = conv_weights(zoo["model"])
    expected = np.concatenate([w.reshape(-1, 9).numpy() for w in weights if w.shape[2:] == (3, 3)])
    filters = read_table(spark, extracted["warehouse"], "filters")
    for name in FORMAT_FILES:
        rows = (
            filters.where(f"model_id = {model_id_for(name)}")
            .orderBy("layer_index", "filter_index")
            .select(*[f"w{i}" for i in range(9)])
            .toPandas()
            .to_numpy()
        )
        assert rows.shape == expected.shape, name  # 6*1 + 12*2 + 12*1 = 42 kernels
        assert np.array_equal(rows, expected), name  # bit-exact float32


def test_every_format_yields_exact_kernels(spark, zoo, extracted):
    """The 5x5 layer (4 x 8 kernels) reaches ``kernels`` bit-exact from every format, ONNX included;
    the 3x3 and 1x1 layers do not."""
    (c5,) = [w for w in conv_weights(zoo["model"]) if w.shape[2:] == (5, 5)]
    expected = c5.reshape(-1, 25).numpy()
    kernels = read_table(spark, extracted["warehouse"], "kernels")
    for name in FORMAT_FILES:
        rows = kernels.where(f"model_id = {model_id_for(name)}").orderBy("layer_index", "filter_index").toPandas()
        assert set(rows.k) == {5} and set(rows.layer_index) == {4} and list(rows.filter_index) == list(range(32)), name
        assert np.array_equal(np.stack(rows.weights.to_numpy()), expected), name
        assert set(rows.task) == {"classification"} and set(rows.conv_depth_norm) == {1.0}, name
    assert kernels.count() == 32 * len(FORMAT_FILES)
    assert extracted["report"].kernels_written == 32 * len(FORMAT_FILES)


def test_same_model_in_every_format_gives_identical_rows(spark, extracted):
    filters = read_table(spark, extracted["warehouse"], "filters")
    cols = ["layer_index", "filter_index", *[f"w{i}" for i in range(9)], "conv_depth", "conv_depth_norm", "task"]
    frames = [
        filters.where(f"model_id = {model_id_for(name)}").select(*cols).orderBy("layer_index", "filter_index").toPandas()
        for name in FORMAT_FILES
    ]
    for frame in frames[1:]:
        assert frame.equals(frames[0])


def test_models_and_layers_rows(spark, extracted):
    models = {r.name: r for r in read_table(spark, extracted["warehouse"], "models").collect()}
    row = models["tiny-script"]
    assert row.status == "ok" and row.format == "torchscript" and row.device == "cpu"
    assert row.conv_layers == 5 and row.conv_levels == 5
    assert row.kernel_shape_counts == {"3x3": 42, "1x1": 96, "5x5": 32}
    assert row.filters_3x3 == 42 and row.total_filters == 74 and row.share_3x3 == pytest.approx(42 / 74)
    assert row.metadata == {"variant": "trained"} and row.family == "tinynet"
    assert len(row.checksum) == 64 and row.file_size > 0
    assert models["tiny-onnx"].producer.startswith("pytorch") and models["tiny-onnx"].opset == 17
    layers = read_table(spark, extracted["warehouse"], "layers").where(f"model_id = {model_id_for('tiny-script')}")
    by_index = {r.layer_index: r for r in layers.collect()}
    assert [by_index[i].groups for i in range(5)] == [1, 3, 12, 1, 1]
    assert [by_index[i].conv_depth for i in range(5)] == [0, 1, 2, 3, 4]
    assert by_index[4].conv_depth_norm == 1.0 and by_index[2].conv_depth_norm == 0.5
    assert by_index[2].in_channels == 12 and by_index[2].n_filters == 12
    assert by_index[3].sparsity is None and by_index[0].variance_entropy is not None


# --- failure isolation -----------------------------------------------------------------------------


def test_bad_inputs_are_isolated_and_reported(spark, zoo, extracted):
    report = extracted["report"]
    assert report.ok == len(FORMAT_FILES) + 1 and report.failed == len(zoo["bad"])
    models = {r.name: r for r in read_table(spark, extracted["warehouse"], "models").collect()}
    reasons = {name: models[name].error for name in zoo["bad"]}
    assert all(models[name].status == "failed" for name in zoo["bad"])
    assert all(reason and "\n" not in reason for reason in reasons.values())
    assert "not found" in reasons["missing"]
    assert "allow_pickle" in reasons["unsafe-pickle"]
    assert "outside" in reasons["onnx-escape"] or "refus" in reasons["onnx-escape"]
    assert not zoo["marker"].exists(), "unpickling ran code"
    failed_ids = [model_id_for(n) for n in zoo["bad"]]
    filters = read_table(spark, extracted["warehouse"], "filters")
    assert filters.where(f"model_id IN ({','.join(map(str, failed_ids))})").count() == 0
    noconv = models["no-conv"]
    assert noconv.status == "ok" and noconv.filters_3x3 == 0 and noconv.conv_layers == 0
    assert report.filters_written == 42 * len(FORMAT_FILES)


# --- idempotence, append, replace -------------------------------------------------------------------


def test_rerun_append_and_replace(spark, zoo, tmp_path):
    folder = tmp_path / "inc"
    shutil.copytree(zoo["folder"], folder, ignore=shutil.ignore_patterns("ext", "evil.pt"))
    names = ["tiny-pt", "tiny-onnx"]
    rows = [{"name": n, "path": FORMAT_FILES[n][0], "task": "classification"} for n in names]
    catalog = write_catalog(folder / "catalog.csv", rows)
    warehouse = str(tmp_path / "wh")
    options = ExtractOptions(warehouse=warehouse)

    first = run_extraction(spark, read_catalog(catalog), options)
    assert first.extracted == 2 and first.ok == 2
    versions = {t: table_version(spark, warehouse, t) for t in ("models", "layers", "filters", "kernels")}
    before = read_table(spark, warehouse, "filters").toPandas().sort_values(["model_id", "layer_index", "filter_index"])

    again = run_extraction(spark, read_catalog(catalog), options)
    assert again.extracted == 0 and again.skipped == 2
    assert {t: table_version(spark, warehouse, t) for t in versions} == versions, "re-run committed something"

    # Append: one new catalog row is extracted, the others are untouched.
    rows.append({"name": "tiny-safetensors", "path": "weights.safetensors", "task": "classification"})
    write_catalog(catalog, rows)
    appended = run_extraction(spark, read_catalog(catalog), options)
    assert appended.extracted == 1 and appended.skipped == 2
    filters = read_table(spark, warehouse, "filters")
    assert filters.count() == 3 * 42
    assert {t: table_version(spark, warehouse, t) for t in versions} == {t: v + 1 for t, v in versions.items()}

    # Replace: a changed file (new checksum) replaces exactly that model's rows, one commit per table.
    torch.manual_seed(99)
    other = TinyNet()
    torch.save(other.state_dict(), folder / "state_dict.pt")
    versions = {t: table_version(spark, warehouse, t) for t in versions}
    replaced = run_extraction(spark, read_catalog(catalog), options)
    assert replaced.extracted == 1 and replaced.skipped == 2
    assert {t: table_version(spark, warehouse, t) for t in versions} == {t: v + 1 for t, v in versions.items()}
    filters = read_table(spark, warehouse, "filters")
    assert filters.count() == 3 * 42
    kernels = read_table(spark, warehouse, "kernels")
    assert kernels.count() == 3 * 32
    new_kernels = kernels.where(f"model_id = {model_id_for('tiny-pt')}").orderBy("filter_index").toPandas()
    (c5,) = [w for w in conv_weights(other) if w.shape[2:] == (5, 5)]
    assert np.array_equal(np.stack(new_kernels.weights.to_numpy()), c5.reshape(-1, 25).numpy())
    new_rows = (
        filters.where(f"model_id = {model_id_for('tiny-pt')}").orderBy("layer_index", "filter_index")
        .select(*[f"w{i}" for i in range(9)]).toPandas().to_numpy()
    )
    expected = np.concatenate([w.reshape(-1, 9).numpy() for w in conv_weights(other) if w.shape[2:] == (3, 3)])
    assert np.array_equal(new_rows, expected)
    untouched = (
        filters.where(f"model_id = {model_id_for('tiny-onnx')}").toPandas()
        .sort_values(["model_id", "layer_index", "filter_index"]).reset_index(drop=True)
    )
    old_onnx = before[before.model_id == model_id_for("tiny-onnx")].reset_index(drop=True)
    assert untouched.equals(old_onnx)
    models = read_table(spark, warehouse, "models")
    assert models.count() == 3 and models.where("status = 'ok'").count() == 3


def test_catalog_metadata_change_rewrites_denormalised_columns(spark, zoo, tmp_path):
    rows = [{"name": "meta-model", "path": str(zoo["folder"] / "state_dict.pt"), "task": "classification"}]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    warehouse = str(tmp_path / "wh")
    run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse))
    rows[0]["task"] = "denoising"
    write_catalog(catalog, rows)
    report = run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse))
    assert report.extracted == 1
    tasks = {r.task for r in read_table(spark, warehouse, "filters").select("task").distinct().collect()}
    assert tasks == {"denoising"}


# --- registration and the sql command ---------------------------------------------------------------


def test_tables_registered_by_name_and_sql_cli(spark, extracted, capsys):
    from filterspark.cli import main

    warehouse = extracted["warehouse"]
    assert main(["sql", "--warehouse", warehouse, "--format", "json",
                 "SELECT name, filters_3x3 FROM filterdb.models WHERE status = 'ok' ORDER BY name"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert {"name": "tiny-pt", "filters_3x3": 42} in lines and len(lines) == len(FORMAT_FILES) + 1
    assert main(["sql", "--warehouse", warehouse, "--format", "csv",
                 "SELECT task, count(*) AS n FROM filterdb.filters GROUP BY task"]) == 0
    assert capsys.readouterr().out.splitlines() == ["task,n", f"classification,{42 * len(FORMAT_FILES)}"]
    assert main(["sql", "--warehouse", warehouse, "SELECT count(*) AS n FROM filterdb.layers"]) == 0
    assert "(1 row)" in capsys.readouterr().out


def test_registering_another_warehouse_drops_names_it_lacks(spark, extracted, tmp_path):
    """Names left from a previously registered warehouse must not answer for the next one."""
    from filterspark.delta.registry import register_tables
    from filterspark.delta.tables import ensure_table

    other = str(tmp_path / "other")
    ensure_table(spark, other, "filterdb", "models")
    try:
        assert register_tables(spark, other, "filterdb") == ["models"]
        names = {t.name for t in spark.catalog.listTables("filterdb")}
        assert "models" in names and "filters" not in names and "layers" not in names
        assert spark.sql("SELECT count(*) AS n FROM filterdb.models").first().n == 0
    finally:
        register_tables(spark, extracted["warehouse"], "filterdb")
    assert spark.sql("SELECT count(*) AS n FROM filterdb.filters").first().n == 42 * len(FORMAT_FILES)


def test_local_defaults_match_conf_file():
    from filterspark.engine.session import DELTA_SETTINGS, LOCAL_DEFAULTS

    conf = {}
    for line in (Path(__file__).resolve().parents[1] / "conf" / "local.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split(None, 1)
            conf[key] = value.strip()
    for key, value in {**LOCAL_DEFAULTS, **DELTA_SETTINGS}.items():
        assert conf[key] == value, key


def test_driver_jvm_options_follow_the_sessions_life():
    """One CLI command's local JVM starts fast (C1 only); a notebook's or library
    session's keeps the JVM's compiler; a cluster's, or the user's own, are left alone."""
    from filterspark.engine.session import LONG_LIVED_JVM_OPTIONS, SHORT_LIVED_JVM_OPTIONS, configure_builder

    class Recorder:
        def __init__(self):
            self.conf = {}

        def config(self, key, value):
            self.conf[key] = value
            return self

    def options(**kwargs):
        return configure_builder(Recorder(), **kwargs).conf.get("spark.driver.defaultJavaOptions")

    assert options(master="local[2]") == SHORT_LIVED_JVM_OPTIONS
    assert options(master="local[2]", short_lived=False) == LONG_LIVED_JVM_OPTIONS
    assert options(master="spark://host:7077", short_lived=False) is None
    assert options(master="local[2]", short_lived=False, preset={"spark.driver.defaultJavaOptions": "-Xss4m"}) is None


def test_crash_before_commit_record_recovers_without_duplicates(spark, zoo, tmp_path, monkeypatch):
    """A job dying after writing filters but before its ``models`` commit record leaves no
    visible model, and the next run replaces the orphaned rows instead of duplicating them."""
    import filterspark.pipelines.writes as writes

    rows = [{"name": "crashy", "path": str(zoo["folder"] / "scripted.ts"), "task": "classification"}]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    warehouse = str(tmp_path / "wh")

    def crash(*args, **kwargs):
        raise RuntimeError("simulated driver crash")

    monkeypatch.setattr(writes, "commit_models", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse))
    assert read_table(spark, warehouse, "models").count() == 0
    ok_filters = read_table(spark, warehouse, "filters").join(
        read_table(spark, warehouse, "models").where("status = 'ok'"), "model_id", "left_semi"
    )
    assert ok_filters.count() == 0  # readers that join on models see no partial model

    monkeypatch.undo()
    report = run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse))
    assert report.extracted == 1 and report.ok == 1
    filters = read_table(spark, warehouse, "filters")
    assert filters.count() == 42
    assert filters.select("layer_index", "filter_index").distinct().count() == 42
    kernels = read_table(spark, warehouse, "kernels")
    assert kernels.count() == 32 and kernels.select("filter_index").distinct().count() == 32


# --- how filter rows reach Delta: executor-written files vs Spark's writer ----------------------------


def _sorted_frame(df, keys):
    return df.toPandas().sort_values(keys).reset_index(drop=True)


def test_files_and_spark_write_paths_give_identical_tables(spark, zoo, extracted, tmp_path):
    """The direct path (Parquet files by the tasks, one Delta commit) and Spark's writer
    produce the same rows in all three tables; the direct files carry statistics Delta
    uses (data skipping, counts from the log) and the commit shows as a WRITE."""
    assert extracted["report"].write == "files" and extracted["report"].write_reason == ""
    warehouse = str(tmp_path / "wh_spark")
    report = run_extraction(spark, read_catalog(zoo["catalog"]), ExtractOptions(warehouse=warehouse, write="spark"))
    assert report.write == "spark" and report.ok == extracted["report"].ok
    keys = {"filters": ["model_id", "layer_index", "filter_index"], "layers": ["model_id", "layer_index"],
            "models": ["model_id"], "kernels": ["model_id", "layer_index", "filter_index"]}
    volatile = ["extracted_at", "extraction_seconds"]
    for name, key in keys.items():
        mine = _sorted_frame(read_table(spark, extracted["warehouse"], name).drop(*volatile), key)
        theirs = _sorted_frame(read_table(spark, warehouse, name).drop(*volatile), key)
        assert list(mine.columns) == list(theirs.columns), name
        assert mine.equals(theirs), name

    filters = read_table(spark, extracted["warehouse"], "filters")
    assert filters.count() == 42 * len(FORMAT_FILES)
    everything = set(filters.inputFiles())
    assert len(everything) == len(FORMAT_FILES)  # one file per model, in its partition directory
    assert all(f"/model_id={model_id_for(n)}/" in " ".join(everything) for n in FORMAT_FILES)
    assert filters.where("task = 'no-such-task'").inputFiles() == []  # skipped by the files' statistics
    assert set(filters.where("task = 'classification'").inputFiles()) == everything
    assert filters.where("w0 > 1000").inputFiles() == []
    from delta.tables import DeltaTable

    last = DeltaTable.forPath(spark, table_path(extracted["warehouse"], "filterdb", "filters")).history(1).collect()[0]
    assert last.operation == "WRITE" and "model_id IN" in last.operationParameters["predicate"]


def test_plan_tasks_balances_bytes():
    from filterspark.pipelines.extract import plan_tasks

    jobs = [(f"m{i}", size) for i, size in enumerate([100, 90, 10, 10, 10, 10, 10, 10, 30, None])]
    groups = plan_tasks(jobs, cores=1)
    assert len(groups) == 4 and sorted(p for g in groups for p in g) == sorted(p for p, _ in jobs)
    sizes = dict(jobs)
    loads = [sum(sizes[p] or 0 for p in g) for g in groups]
    assert loads == sorted(loads, reverse=True) and max(loads) == 100  # the largest model alone
    assert len(plan_tasks(jobs, cores=8)) == 10  # never more tasks than models
    assert len(plan_tasks(jobs, cores=1, models_per_task=5)) == 2
    assert plan_tasks([], cores=2) == []


def test_failed_filters_commit_leaves_no_files_and_recovers(spark, zoo, tmp_path, monkeypatch):
    from filterspark.delta import jvm

    rows = [{"name": n, "path": str(zoo["folder"] / FORMAT_FILES[n][0]), "task": "classification"}
            for n in ("tiny-pt", "tiny-safetensors")]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    warehouse = str(tmp_path / "wh")

    def refuse(*args, **kwargs):
        raise RuntimeError("simulated commit failure")

    monkeypatch.setattr(jvm, "replace_files", refuse)
    with pytest.raises(RuntimeError, match="simulated commit"):
        run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse))
    root = Path(table_path(warehouse, "filterdb", "filters"))
    assert [p for p in root.rglob("*.parquet")] == []  # the tasks' files were deleted
    assert list(Path(table_path(warehouse, "filterdb", "kernels")).rglob("*.parquet")) == []  # theirs too
    assert read_table(spark, warehouse, "filters").count() == 0
    monkeypatch.undo()
    report = run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse))
    assert report.ok == 2 and read_table(spark, warehouse, "filters").count() == 84

    # An error after the commit landed keeps the committed files.
    real = jvm.replace_files

    def commit_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("simulated error after the commit")

    monkeypatch.setattr(jvm, "replace_files", commit_then_fail)
    with pytest.raises(RuntimeError, match="after the commit"):
        run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse, force=True))
    monkeypatch.undo()
    rows = read_table(spark, warehouse, "filters").select("model_id", "w4").collect()  # reads every file
    assert len(rows) == 84 and len(list(root.rglob("*.parquet"))) == 4  # 2 replaced (still on disk) + 2 committed


def test_tables_the_tasks_cannot_write_fall_back_to_spark(spark, zoo, tmp_path):
    """Column mapping (Parquet names differ from column names) makes the executors' files
    unusable: auto takes Spark's writer and says why, ``write='files'`` refuses. Layer rows
    under a deletion vector are rewritten by Spark, not on the driver."""
    rows = [{"name": "cm-model", "path": str(zoo["folder"] / "state_dict.pt"), "task": "classification"}]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    warehouse = str(tmp_path / "wh")
    from filterspark.delta.tables import ensure_tables

    paths = {n: t.location for n, t in ensure_tables(spark, warehouse, "filterdb").items()}
    spark.sql(
        f"ALTER TABLE delta.`{paths['filters']}` SET TBLPROPERTIES ('delta.minReaderVersion' = '2', "
        "'delta.minWriterVersion' = '5', 'delta.columnMapping.mode' = 'name')"
    )
    with pytest.raises(ValueError, match="column mapping"):
        run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse, write="files"))
    report = run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse))
    assert report.write == "spark" and "column mapping" in report.write_reason and report.ok == 1
    assert read_table(spark, warehouse, "filters").count() == 42

    spark.sql(f"ALTER TABLE delta.`{paths['layers']}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    spark.sql(f"DELETE FROM delta.`{paths['layers']}` WHERE layer_index = 0")
    assert read_table(spark, warehouse, "layers").count() == 4
    from filterspark.delta.jvm import rewrite_rows
    from filterspark.delta.warehouse import Warehouse

    layers = read_table(spark, warehouse, "layers")
    assert rewrite_rows(spark, Warehouse(warehouse).table("layers"), "model_id", [model_id_for("cm-model")],
                        layers.limit(0).toArrow(), "t") is None  # a file with a deletion vector
    report = run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse, force=True))
    layers = read_table(spark, warehouse, "layers")
    assert layers.count() == 5 and layers.select("layer_index").distinct().count() == 5


def test_driver_rewrite_keeps_rows_spark_wrote(spark, zoo, tmp_path):
    """Rows written by Spark (INT96 timestamps, Parquet maps) survive the driver-side
    rewrite of ``models`` and ``layers`` unchanged when other models are replaced."""
    names = ["tiny-pt", "tiny-onnx", "tiny-safetensors"]
    rows = [{"name": n, "path": str(zoo["folder"] / FORMAT_FILES[n][0]), "task": "classification",
             "family": "tinynet", "variant": "trained"} for n in names]
    warehouse = str(tmp_path / "wh")
    first = write_catalog(tmp_path / "first.csv", rows[:2])
    assert run_extraction(spark, read_catalog(first), ExtractOptions(warehouse=warehouse, write="spark")).ok == 2
    keep = model_id_for("tiny-pt")
    before = {t: read_table(spark, warehouse, t).where(f"model_id = {keep}").collect() for t in ("models", "layers")}

    second = write_catalog(tmp_path / "second.csv", rows[1:])
    report = run_extraction(spark, read_catalog(second), ExtractOptions(warehouse=warehouse, force=True))
    assert report.write == "files" and report.ok == 2
    for table, old_rows in before.items():
        assert read_table(spark, warehouse, table).where(f"model_id = {keep}").collect() == old_rows, table
    models = read_table(spark, warehouse, "models")
    assert models.count() == 3 and models.select("model_id").distinct().count() == 3
    assert read_table(spark, warehouse, "layers").count() == 3 * 5
    assert {r.metadata["variant"] for r in models.collect()} == {"trained"}


def test_without_deltas_transaction_api_spark_writes(spark, zoo, tmp_path, monkeypatch):
    """A runtime whose Delta build lacks open-source Delta's transaction classes (e.g. a
    vendor's own) gets Spark's writer, with the reason in the report."""
    from filterspark.delta import jvm

    monkeypatch.setattr(jvm, "unavailable_reason", lambda spark: "open-source Delta's transaction classes are not on the driver's JVM")
    rows = [{"name": "api-model", "path": str(zoo["folder"] / "state_dict.pt"), "task": "classification"}]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    report = run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=str(tmp_path / "wh")))
    assert report.write == "spark" and "transaction classes" in report.write_reason and report.ok == 1
    assert read_table(spark, str(tmp_path / "wh"), "filters").count() == 42


@pytest.mark.parametrize("leftover", ["_delta_log", "notes.txt"])
def test_table_location_with_foreign_files_fails_clearly(spark, tmp_path, leftover):
    """A half-created table (another job's ``_delta_log`` without its first commit, or its
    first files) is retried; what never becomes a Delta table fails with a clear message."""
    from filterspark.delta.tables import TableBeingCreated, ensure_table

    location = Path(table_path(str(tmp_path), "filterdb", "models"))
    location.mkdir(parents=True)
    if leftover == "_delta_log":
        (location / leftover).mkdir()
    else:
        (location / leftover).write_text("not a table")
    with pytest.raises(TableBeingCreated, match="not empty and not a Delta table"):
        ensure_table(spark, str(tmp_path), "filterdb", "models")
