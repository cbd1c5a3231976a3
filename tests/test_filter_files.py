"""Executor-side Parquet files of extraction's direct write: layout, row groups, and the
Delta statistics Delta trusts for skipping and counts (no Spark here)."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filterspark.pipelines.extract_task import filter_batch
from filterspark.delta.parquet_files import (
    ColumnStats,
    PartitionFileWriter,
    committed_paths,
    tagged_files,
    write_partition,
)
from filterspark.delta.schemas import FILTERS


def batches(model_id: int, sizes: list[int], meta=("classification", None, "mnist", "cnn"), seed: int = 0):
    rng = np.random.default_rng(seed)
    for layer, n in enumerate(sizes):
        weights = rng.standard_normal((n, 9)).astype(np.float32)
        yield filter_batch(model_id, layer, 0, weights, list(meta), layer, layer / max(len(sizes) - 1, 1))


def read_back(root, actions) -> pa.Table:
    tables = [pq.read_table(os.path.join(root, p)) for p in sorted(committed_paths(actions))]
    return pa.concat_tables(tables)


def test_files_hold_the_rows_in_spark_layout_with_exact_stats(tmp_path):
    sizes = [7, 300, 50, 1000, 3]
    source = pa.Table.from_batches(list(batches(42, sizes)))
    actions = write_partition(str(tmp_path), {"model_id": 42}, batches(42, sizes), "00003-run1")
    # 1360 rows in files of at most 1000 rows (set below) - here one file: defaults are large.
    assert len(actions) == 1
    add = json.loads(actions[0])["add"]
    assert add["path"].startswith("model_id=42/part-00003-run1-") and add["path"].endswith(".c000.snappy.parquet")
    assert add["partitionValues"] == {"model_id": "42"} and add["dataChange"] is True
    assert add["size"] == os.path.getsize(tmp_path / add["path"])
    back = read_back(tmp_path, actions)
    expected_columns = [f.name for f in FILTERS.fields if f.name != "model_id"]
    assert back.column_names == expected_columns  # partition column not stored
    assert back.equals(source.drop_columns(["model_id"]))
    stats = json.loads(add["stats"])
    assert stats["numRecords"] == 1360
    assert stats["nullCount"]["visual_category"] == 1360 and stats["nullCount"]["w0"] == 0
    assert "visual_category" not in stats["minValues"]  # all null: no min/max
    assert stats["minValues"]["task"] == stats["maxValues"]["task"] == "classification"
    for c in ["w0", "w8", "conv_depth_norm", "layer_index", "filter_index"]:
        column = source.column(c).to_numpy()
        assert stats["minValues"][c] == float(column.min()) and stats["maxValues"][c] == float(column.max())
    assert np.float32(stats["minValues"]["w3"]) == source.column("w3").to_numpy().min()  # round-trips exactly


def test_row_groups_and_file_splits(tmp_path):
    writer = PartitionFileWriter(str(tmp_path), {"model_id": 5}, "t", row_group_rows=256, file_rows=1000)
    for batch in batches(5, [100, 900, 300, 2000]):
        writer.write(batch)
    actions = writer.close()
    counts = [json.loads(json.loads(a)["add"]["stats"])["numRecords"] for a in actions]
    assert counts == [1000, 1000, 1000, 300]
    for action in actions:
        meta = pq.ParquetFile(tmp_path / json.loads(action)["add"]["path"]).metadata
        assert all(meta.row_group(i).num_rows <= 256 for i in range(meta.num_row_groups))
    back = read_back(tmp_path, actions)
    assert back.num_rows == 3300
    # files are written in order: layer/filter order survives the split
    ordered = sorted(actions, key=lambda a: json.loads(a)["add"]["path"])
    assert sum(pq.read_metadata(tmp_path / json.loads(a)["add"]["path"]).num_rows for a in ordered) == 3300


def test_batch_of_another_partition_is_refused_and_abort_cleans_up(tmp_path):
    def bad():
        yield from batches(1, [10])
        yield from batches(2, [10])

    with pytest.raises(ValueError, match="outside partition model_id=1"):
        write_partition(str(tmp_path), {"model_id": 1}, bad(), "tag")
    assert tagged_files(str(tmp_path), ["model_id=1"], "tag") == []


def test_abort_deletes_written_files(tmp_path):
    writer = PartitionFileWriter(str(tmp_path), {"model_id": 9}, "run7", row_group_rows=10, file_rows=20)
    for batch in batches(9, [55]):
        writer.write(batch)
    assert len(tagged_files(str(tmp_path), ["model_id=9"], "run7")) == 3
    writer.abort()
    assert tagged_files(str(tmp_path), ["model_id=9", "model_id=10"], "run7") == []


def test_no_rows_no_file(tmp_path):
    assert write_partition(str(tmp_path), {"model_id": 3}, iter(()), "x") == []
    assert not (tmp_path / "model_id=3").exists()


def test_column_stats_leave_out_what_they_cannot_state_exactly():
    floats = ColumnStats()
    floats.update(pa.array([1.5, -2.0], pa.float32()))
    floats.update(pa.array([None, 4.0], pa.float32()))
    assert (floats.low, floats.high, floats.nulls, floats.exact) == (-2.0, 4.0, 1, True)
    floats.update(pa.array([np.nan], pa.float32()))
    assert not floats.exact
    infinite = ColumnStats()
    infinite.update(pa.array([1.0, np.inf]))
    assert not infinite.exact
    text = ColumnStats()
    text.update(pa.array(["b", "a", None]))
    assert (text.low, text.high, text.nulls) == ("a", "b", 1)
    text.update(pa.array(["x" * 33]))
    assert not text.exact
    empty = ColumnStats()
    empty.update(pa.nulls(3, pa.string()))
    assert (empty.low, empty.nulls, empty.exact) == (None, 3, True)


def test_balanced_groups_and_scan_file_groups():
    from filterspark.kernels.balance import balanced_groups
    from filterspark.engine.scans import TASK_BYTES, plan_file_groups

    groups = balanced_groups([("a", 10), ("b", 9), ("c", 1), ("d", 1), ("e", 5), ("f", 0)], 3)
    assert groups == [["a"], ["b"], ["e", "c", "d", "f"]]  # heaviest first onto the lightest group
    assert balanced_groups([("x", 3)], 4) == [["x"]] and balanced_groups([], 2) == []

    files = [(f"/t/model_id={i}/f.parquet", i, TASK_BYTES // 2) for i in range(10)]
    planned = plan_file_groups(files, parallelism=2)
    assert len(planned) == 5 and all(len(g) == 2 for g in planned)  # ~TASK_BYTES per task
    assert sorted(p for g in planned for p in g) == sorted((p, m) for p, m, _ in files)
    assert len(plan_file_groups(files[:3], parallelism=8)) == 3 and plan_file_groups([], 2) == []
