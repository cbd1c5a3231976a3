"""The extraction job on the new formats: Keras, TFLite, model folders, ONNX graph inputs."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file

from filterspark.sources.catalog import read_catalog
from filterspark.pipelines.extract import ExtractOptions, run_extraction
from filterspark.delta.warehouse import table_path
from format_writers import small_state_dict, write_keras3, write_keras_h5, write_small_tflite

N_SMALL_3X3 = 4 * 3 + 8 * 1 + 6 * 3 + 6 * 5


def test_new_formats_through_the_job(spark, tmp_path) -> None:
    sd = small_state_dict(1)
    write_keras_h5(tmp_path / "small.h5", sd)
    write_keras3(tmp_path / "small.keras", sd)
    (tmp_path / "small_int8.tflite").write_bytes(write_small_tflite(sd, "int8")[0])
    data = write_small_tflite(sd, "float32")[0]
    (tmp_path / "cut.tflite").write_bytes(data[: len(data) // 3])
    unet = tmp_path / "pipe" / "unet"
    unet.mkdir(parents=True)
    save_file(sd, str(unet / "diffusion_pytorch_model.safetensors"))
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "_diffusers_version": "0.31.0"}))
    big = tmp_path / "big_folder"
    big.mkdir()
    save_file(sd, str(big / "model.safetensors"))
    (big / "config.json").write_text(json.dumps({"architectures": ["SmallNet"]}))
    (big / "tokenizer.json").write_bytes(b" " * 300_000)  # the folder, not its weights, exceeds the limit
    nodes = [helper.make_node("Conv", ["x", "w_fixed"], ["a"], name="fixed", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w_runtime"], ["y"], name="dynamic")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6]),
         helper.make_tensor_value_info("w_runtime", TensorProto.FLOAT, [3, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w_fixed")])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "dyn.onnx"))
    names = {"keras-h5": "small.h5", "keras3": "small.keras", "tflite-int8": "small_int8.tflite",
             "tflite-cut": "cut.tflite", "unet": "pipe/unet", "big-folder": "big_folder", "onnx-input": "dyn.onnx"}
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("name,path\n" + "".join(f"{n},{p}\n" for n, p in names.items()))

    warehouse = str(tmp_path / "wh")
    report = run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse, max_model_bytes=200_000))
    assert report.ok == 5 and report.failed == 2
    models = {r["name"]: r for r in spark.read.format("delta").load(table_path(warehouse, "filterdb", "models")).collect()}
    assert {n: models[n]["format"] for n in ("keras-h5", "keras3", "tflite-int8", "unet", "onnx-input")} == {
        "keras-h5": "keras", "keras3": "keras", "tflite-int8": "tflite", "unet": "huggingface", "onnx-input": "onnx"}
    for n in ("keras-h5", "keras3", "tflite-int8", "unet"):
        assert models[n]["status"] == "ok" and models[n]["filters_3x3"] == N_SMALL_3X3, n
    assert models["unet"]["metadata"]["class_name"] == "UNet2DModel" and models["unet"]["producer"] == "diffusers 0.31.0"
    assert "truncated" in models["tflite-cut"]["error"] or "corrupt tflite" in models["tflite-cut"]["error"]
    assert models["big-folder"]["status"] == "failed" and "too large" in models["big-folder"]["error"]
    assert models["big-folder"]["file_size"] > 300_000
    assert models["onnx-input"]["status"] == "ok" and "'w_runtime'" in models["onnx-input"]["error"]

    layers = spark.read.format("delta").load(table_path(warehouse, "filterdb", "layers"))
    by = {(r["model_id"], r["layer_name"]): r for r in layers.collect()}
    dyn = by[(models["onnx-input"]["model_id"], "dynamic")]
    assert dyn["n_filters"] is None and dyn["dtype"] is None and dyn["out_channels"] == 3
    int8 = [r for (m, _), r in by.items() if m == models["tflite-int8"]["model_id"]]
    assert sorted(r["dtype"] for r in int8) == ["int8 (dequantized)"] * 4 + ["uint8 (dequantized)"]
    filters = spark.read.format("delta").load(table_path(warehouse, "filterdb", "filters"))
    counts = {r["model_id"]: r["count"] for r in filters.groupBy("model_id").count().collect()}
    assert counts[models["keras3"]["model_id"]] == counts[models["unet"]["model_id"]] == N_SMALL_3X3
    assert counts[models["onnx-input"]["model_id"]] == 8
