"""Quality columns end to end: the demo zoo extracted with Spark and checked against numpy on
the weights read back from ``filters``; flags per zoo variant; the model roll-up; the
``filterspark quality`` command and the README's SQL; NaN/Inf weights through extraction."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from filterspark.kernels.quality import QualityThresholds, layer_quality
from filterspark.outputs.quality_report import WORST_MODELS_SQL
from quality_reference import ref_metrics  # tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("sparsity", "variance_entropy", "variance_entropy_norm", "variance_entropy_clean",
           "variance_entropy_clean_norm")
FLAGS = ("degenerate_random", "degenerate_sparse", "degenerate_low_variety")
W = [f"w{i}" for i in range(9)]


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


@pytest.fixture(scope="module")
def zoo(spark, demo_warehouse) -> dict:
    """The extracted demo zoo as pandas frames: 3x3 layers (with model name and variant),
    models, and each 3x3 layer's n x 9 weights rebuilt from ``filters``."""
    from filterspark.delta.registry import register_tables

    wh, db = demo_warehouse["warehouse"], demo_warehouse["database"]
    register_tables(spark, wh, db)
    models = spark.sql(f"SELECT *, metadata['variant'] AS variant FROM {db}.models").toPandas()
    layers = spark.sql(
        f"SELECT l.*, m.name, m.task, m.metadata['variant'] AS variant FROM {db}.layers l "
        f"JOIN {db}.models m USING (model_id)"
    ).toPandas()
    filters = spark.table(f"{db}.filters").select("model_id", "layer_index", "filter_index", *W).toPandas()
    filters = filters.sort_values(["model_id", "layer_index", "filter_index"])
    weights = {}
    for (mid, li), g in filters.groupby(["model_id", "layer_index"], sort=False):
        assert g["filter_index"].tolist() == list(range(len(g)))  # complete, in order
        weights[(int(mid), int(li))] = g[W].to_numpy(np.float64)
    l3 = layers[(layers.kernel_h == 3) & (layers.kernel_w == 3)].sort_values(["name", "layer_index"])
    return {"warehouse": wh, "database": db, "models": models, "layers": layers, "l3": l3, "weights": weights}


# --------------------------------------------------------------------------- metrics vs numpy


def test_every_3x3_layer_equals_numpy_on_weights_read_back_from_filters(zoo):
    l3, weights = zoo["l3"], zoo["weights"]
    assert set(weights) == {(int(r.model_id), int(r.layer_index)) for r in l3.itertuples()}
    assert len(l3) >= 60 and set(l3.variant) == {"trained", "untrained", "sparse", "replicated"}
    for r in l3.itertuples():
        f = weights[(int(r.model_id), int(r.layer_index))]
        assert f.shape == (r.n_filters, 9), r.name
        ref = ref_metrics(f)
        mine = layer_quality(torch.from_numpy(f).reshape(-1, 1, 3, 3))  # the pure function, same weights
        assert r.nonfinite_count == 0
        for k in METRICS:
            got, want = _nan(getattr(r, k)), ref[k]
            where = f"{r.name} layer {r.layer_index} {k}"
            if math.isnan(want):
                assert math.isnan(got), where
                continue
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6), where
            assert got == pytest.approx(getattr(mine, k), rel=1e-12, abs=1e-12), where
        for k in FLAGS:
            assert bool(getattr(r, k)) == getattr(mine, k), (r.name, r.layer_index, k)
    # 1x1 layers carry no quality metrics; the k x k ones do (tests/test_kernels.py checks them)
    ones = zoo["layers"][(zoo["layers"].kernel_h == 1) & (zoo["layers"].kernel_w == 1)]
    assert len(ones) > 0 and ones[list(METRICS)].isna().all().all()
    kxk = zoo["layers"][(zoo["layers"].kernel_h == zoo["layers"].kernel_w) & (zoo["layers"].kernel_h > 3)]
    assert len(kxk) == 7 and kxk[list(METRICS)].notna().all().all()


def test_model_rollup_equals_its_layers(zoo):
    t = QualityThresholds()
    for m in zoo["models"][zoo["models"].status == "ok"].itertuples():
        ls = zoo["l3"][zoo["l3"].model_id == m.model_id]
        assert m.layers_3x3 == len(ls), m.name
        if not len(ls):
            continue
        assert m.nonfinite_layers == 0
        assert m.mean_variance_entropy_norm == pytest.approx(ls.variance_entropy_norm.mean(), abs=1e-12)
        assert m.min_variance_entropy_norm == pytest.approx(ls.variance_entropy_norm.min(), abs=1e-12)
        assert m.mean_variance_entropy_clean_norm == pytest.approx(ls.variance_entropy_clean_norm.mean(), abs=1e-12)
        assert m.mean_sparsity == pytest.approx(ls.sparsity.mean(), abs=1e-12)
        for kind in ("random", "sparse", "low_variety"):
            assert getattr(m, f"share_{kind}") == pytest.approx(ls[f"degenerate_{kind}"].mean(), abs=1e-12)
        any_flag = ls[list(FLAGS)].any(axis=1)
        assert m.share_degenerate == pytest.approx(any_flag.mean(), abs=1e-12)
        if any_flag.any():
            worst = ls[ls.layer_index == m.worst_layer_index].iloc[0]
            assert worst[list(FLAGS)].any() and m.worst_layer_reason in ("random", "sparse", "low_variety")
            assert bool(worst[f"degenerate_{m.worst_layer_reason}"])
        else:
            assert pd_isna(m.worst_layer_index) and m.worst_layer_reason is None
    assert t.random_min_filters == 32  # the README table below is for the defaults


def pd_isna(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


# --------------------------------------------------------------------------- flags per variant


def _first_3x3(ls):
    return ls.layer_index == ls.layer_index.min()


def test_flags_per_variant(zoo, capsys):
    t = QualityThresholds()
    l3, models = zoo["l3"], zoo["models"]
    for name, ls in l3.groupby("name"):
        variant = ls.variant.iloc[0]
        derived = ls[~_first_3x3(ls)]  # the zoo leaves each model's first 3x3 layer as trained
        if variant == "untrained":
            big = ls[ls.n_filters >= t.random_min_filters]
            assert len(big) >= 3 and big.degenerate_random.all(), name
            assert not ls.degenerate_sparse.any() and not ls.degenerate_low_variety.any(), name
            assert (ls[ls.n_filters < t.random_min_filters].variance_entropy_norm > 1.0).all(), name
        elif variant == "replicated":
            assert derived.degenerate_low_variety.all(), name
            assert not ls.degenerate_sparse.any(), name
            assert (derived.variance_entropy_clean_norm < t.low_variety_entropy_norm).all()
        elif variant == "sparse":
            assert derived.degenerate_sparse.all(), name
            assert derived.sparsity.between(0.85, 0.95).all(), name
            assert not ls.degenerate_random.any(), name
        else:
            assert variant == "trained"
            assert (ls.sparsity < 0.05).all() and not ls.degenerate_sparse.any(), name
            assert not ls.degenerate_low_variety.any(), name
    for variant, share_col, floor in [("untrained", "share_random", 0.75), ("replicated", "share_low_variety", 0.75),
                                      ("sparse", "share_sparse", 0.75)]:
        assert (models[models.variant == variant][share_col] >= floor).all(), variant
    trained = l3[l3.variant == "trained"]
    flagged = trained[list(FLAGS)].any(axis=1)
    assert flagged.mean() <= 0.1, trained[flagged][["name", "layer_index", "variance_entropy_norm"]]
    rolled_up = models[(models.variant == "trained") & (models.layers_3x3 > 0)]  # the roll-up is over 3x3 layers
    clean_models = rolled_up[rolled_up.share_degenerate == 0]
    assert len(clean_models) >= 0.8 * len(rolled_up)
    with capsys.disabled():
        print("\n" + kind_table(l3))


def _kind(r, t: QualityThresholds) -> str | None:
    """Row label of the README table: what the layer is, and whether TH(n) is reliable for it."""
    size = f"{t.random_min_filters} filters or more" if r.n_filters >= t.random_min_filters else \
        f"fewer than {t.random_min_filters} filters"
    if r.variant == "untrained":
        return f"untrained, {size}"
    if r.variant in ("sparse", "replicated"):  # only the layers the zoo zeroed / replicated
        return None if r.first else ("zeroed 90 % (sparse variant)" if r.variant == "sparse" else "replicated (2 patterns)")
    if r.n_filters < t.random_min_filters:
        return f"trained, {size}"
    kinds = {"classification": "classifiers", "autoencoding": "autoencoders"}
    return f"trained {kinds.get(r.task, 'denoise/inpaint')}, {size}"


def kind_table(l3) -> str:
    """The README's table: per kind of layer, mean and range of the metrics and flag shares."""
    t = QualityThresholds()
    l3 = l3.assign(first=l3.groupby("name").layer_index.transform("min") == l3.layer_index)
    l3 = l3.assign(kind=[_kind(r, t) for r in l3.itertuples()]).dropna(subset=["kind"])
    # the same network saved in several formats counts once
    l3 = l3.assign(h=l3.variance_entropy.round(9)).drop_duplicates(["variant", "task", "layer_index", "n_filters", "h"])
    lines = ["| layers | count | normalised entropy: mean (min-max) | clean normalised: mean (min-max) "
             "| sparsity: mean (max) | random | sparse | low-variety |", "|---|---|---|---|---|---|---|---|"]
    order = ["untrained", "trained classifiers", "trained autoencoders", "trained denoise", "trained,", "zeroed", "replicated"]
    rank = {k: (next(i for i, o in enumerate(order) if k.startswith(o)), "fewer" in k) for k in set(l3.kind)}
    for kind, v in sorted(l3.groupby("kind"), key=lambda kv: rank[kv[0]]):
        e, c, s = v.variance_entropy_norm, v.variance_entropy_clean_norm, v.sparsity
        lines.append(
            f"| {kind} | {len(v)} | {e.mean():.2f} ({e.min():.2f}-{e.max():.2f}) | {c.mean():.2f} "
            f"({c.min():.2f}-{c.max():.2f}) | {s.mean():.2f} ({s.max():.2f}) | {v.degenerate_random.mean():.0%} "
            f"| {v.degenerate_sparse.mean():.0%} | {v.degenerate_low_variety.mean():.0%} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI and README SQL


def test_quality_cli_one_model(zoo, capsys):
    from filterspark.cli import main

    wh = zoo["warehouse"]
    assert main(["quality", "--warehouse", wh, "--model", "digits-cnn-replicated"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("digits-cnn-replicated: 4 3x3 layers, normalised entropy mean")
    assert "low-variety 75%" in out[0] and "worst layer 1 (low_variety)" in out[0]
    assert out[1].split() == ["layer", "name", "shape", "n", "sparsity", "entropy", "entropy_norm", "clean_norm", "flags"]
    body = out[3:7]
    assert [line.split()[0] for line in body] == ["0", "1", "2", "3"] and out[7] == "(4 rows)"
    assert body[0].split()[2:4] == ["8x1", "8"] and body[3].split()[2:4] == ["32x16", "512"]
    assert all(line.endswith("low_variety") for line in body[1:]) and "low_variety" not in body[0]

    assert main(["quality", "--warehouse", wh, "--model", "digits-sepcnn", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ls = zoo["l3"][zoo["l3"].name == "digits-sepcnn"]
    assert [r["layer"] for r in rows] == ls.layer_index.tolist()
    assert [r["shape"] for r in rows] == ["16x1", "16x16/16", "32x32/32"]  # depthwise shows its groups
    assert [r["entropy_norm"] for r in rows] == pytest.approx(ls.variance_entropy_norm.tolist(), abs=5e-4 + 1e-9)
    assert all(r["flags"] == "" for r in rows)

    assert main(["quality", "--warehouse", wh, "--model", "no-such-model"]) == 2
    assert "no model named 'no-such-model'" in capsys.readouterr().err


def _readme_sql_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("<!-- section: quality"):text.index("<!-- end section: quality")]
    return [b.strip() for b in re.findall(r"```sql\n(.*?)```", section, re.S)]


def _readme_worst_models_sql() -> str:
    worst = [b for b in _readme_sql_blocks() if "share_degenerate" in b and "ORDER BY" in b]
    assert len(worst) == 1, "README quality section must show exactly one worst-models query"
    return worst[0]


def test_quality_cli_ranking_and_readme_sql(spark, zoo, capsys):
    from filterspark.cli import main

    wh = zoo["warehouse"]
    readme_sql = _readme_worst_models_sql()
    assert readme_sql == WORST_MODELS_SQL.format(db="filterdb")  # the README cannot drift
    assert main(["quality", "--warehouse", wh, "--format", "json", "--limit", "0"]) == 0
    ranking = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in ranking] == [r.name for r in spark.sql(readme_sql).collect()]

    models = zoo["models"].set_index("name")
    ok = models[(models.status == "ok") & (models.layers_3x3 > 0)]
    assert sorted(r["name"] for r in ranking) == sorted(ok.index)
    keys = [(r["nonfinite"], r["degenerate"], r["random"] + r["sparse"] + r["low_variety"]) for r in ranking]
    assert keys == sorted(keys, reverse=True)
    pos = {r["name"]: i for i, r in enumerate(ranking)}
    derived = [n for n in ok.index if ok.variant[n] != "trained"]
    healthy = [n for n in ok.index if ok.variant[n] == "trained" and ok.share_degenerate[n] == 0]
    assert max(pos[n] for n in derived) < min(pos[n] for n in healthy)
    top = ranking[0]
    assert top["degenerate"] == 1.0 and top["worst_layer"] and top["worst_reason"] in ("random", "low_variety")

    # every other query of the README section runs on the demo zoo too
    others = [q.strip() for b in _readme_sql_blocks() for q in b.split(";") if q.strip() and q.strip() != readme_sql]
    assert len(others) >= 2
    for q in others:
        assert spark.sql(q).count() > 0, q

    assert main(["quality", "--warehouse", wh, "--limit", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "task", "layers"] and table[-1] == "(3 rows)"
    assert [line.split()[0] for line in table[2:5]] == [r["name"] for r in ranking[:3]]


# --------------------------------------------------------------------------- NaN / Inf end to end


def test_nonfinite_weights_end_to_end(spark, tmp_path, capsys):
    """A checkpoint with NaN and Inf weights in one layer: the layer reports them and gets
    NULL metrics and no flags, the model roll-up is over the other layers only, and SQL
    aggregates over ``layers`` stay finite."""
    from filterspark.sources.catalog import read_catalog
    from filterspark.cli import main
    from filterspark.pipelines.extract import ExtractOptions, run_extraction
    from filterspark.demo.models import PlainCNN

    torch.manual_seed(0)
    sd = PlainCNN(1, 10).state_dict()
    sd["features.5.weight"][2, 3, 1, 1] = float("nan")
    sd["features.5.weight"][7, 0, 0, 2] = float("inf")
    torch.save(sd, tmp_path / "broken.pt")
    with (tmp_path / "catalog.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["name", "path", "task"], ["broken", "broken.pt", "classification"]])
    wh, db = str(tmp_path / "warehouse"), "qualitynan"  # own database: filterdb stays on the demo zoo
    run_extraction(spark, read_catalog(tmp_path / "catalog.csv"), ExtractOptions(warehouse=wh, database=db))

    m = spark.sql(f"SELECT * FROM {db}.models").collect()[0]
    assert m.status == "ok" and m.layers_3x3 == 4 and m.nonfinite_layers == 1
    layers = {r.layer_index: r for r in spark.sql(f"SELECT * FROM {db}.layers").collect()}
    bad = layers[2]
    assert bad.layer_name == "features.5" and bad.nonfinite_count == 2
    assert all(getattr(bad, k) is None for k in METRICS)  # NULL, not NaN
    assert not any(getattr(bad, k) for k in FLAGS)
    good = [layers[i] for i in (0, 1, 3)]
    assert all(getattr(r, k) is not None and math.isfinite(getattr(r, k)) for r in good for k in METRICS)
    assert m.mean_variance_entropy_norm == pytest.approx(np.mean([r.variance_entropy_norm for r in good]), abs=1e-12)
    assert m.mean_sparsity == pytest.approx(np.mean([r.sparsity for r in good]), abs=1e-12)
    assert m.share_random == pytest.approx(sum(r.degenerate_random for r in good) / 3, abs=1e-12)
    assert m.share_random > 0  # random init: layers 1 and 3 (>= 32 filters) are flagged
    # the filters table keeps the stored values, NaN and Inf included
    any_nan = " OR ".join(f"isnan({w})" for w in W)
    any_inf = " OR ".join(f"abs({w}) = CAST('Infinity' AS DOUBLE)" for w in W)
    counts = spark.sql(
        f"SELECT sum(CASE WHEN {any_nan} THEN 1 ELSE 0 END) AS nan, sum(CASE WHEN {any_inf} THEN 1 ELSE 0 END) AS inf "
        f"FROM {db}.filters WHERE layer_index = 2"
    ).collect()[0]
    assert (counts.nan, counts.inf) == (1, 1)
    agg = spark.sql(f"SELECT avg(variance_entropy_norm) AS a, max(sparsity) AS s FROM {db}.layers").collect()[0]
    assert math.isfinite(agg.a) and math.isfinite(agg.s)

    ranking = spark.sql(WORST_MODELS_SQL.format(db=db)).collect()
    assert ranking[0].name == "broken" and ranking[0].nonfinite == 1 and math.isfinite(ranking[0].mean_entropy_norm)
    assert main(["quality", "--warehouse", wh, "--database", db, "--model", "broken"]) == 0
    out = capsys.readouterr().out
    assert "non-finite layers 1" in out
    line = next(l for l in out.splitlines() if l.startswith("2 "))
    assert line.split()[1:4] == ["features.5", "16x16", "256"] and line.endswith("nonfinite(2)")
