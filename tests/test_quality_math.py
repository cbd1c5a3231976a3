"""filterspark.kernels.quality against an independent numpy implementation of the published formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from filterspark.kernels import quality as Q
from filterspark.kernels.quality import LayerQuality, QualityThresholds, layer_quality, model_quality
from quality_reference import ref_entropy, ref_metrics, ref_th  # tests/ is on sys.path

TOL = 1e-6
METRICS = (
    "sparsity",
    "variance_entropy",
    "variance_entropy_norm",
    "variance_entropy_clean",
    "variance_entropy_clean_norm",
)


def assert_matches_ref(weight: torch.Tensor, tol: float = TOL) -> LayerQuality:
    q = layer_quality(weight)
    ref = ref_metrics(weight.detach().double().cpu().numpy())
    assert q.n_filters == weight.shape[0] * weight.shape[1]
    assert q.nonfinite_count == 0
    for k in METRICS:
        got, want = getattr(q, k), ref[k]
        if math.isnan(want):
            assert math.isnan(got), k
        else:
            assert got == pytest.approx(want, rel=tol, abs=tol), k
    return q


def gauss(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- trained weights


@pytest.fixture(scope="module")
def trained_convs() -> list[torch.Tensor]:
    """Tiny CNN (incl. a depthwise layer) trained ~1-2 s on sklearn digits; returns its conv weights."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: OpenMP threads only spin (40x slower on a busy box)
    try:
        for _ in range(120):
            idx = torch.randint(0, len(x), (128,), generator=g)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.5, f"training did not work (acc={acc:.2f})"
    return [m.weight.detach().clone() for m in model if isinstance(m, nn.Conv2d)]


def test_trained_weights_match_reference(trained_convs: list[torch.Tensor]) -> None:
    qs = [assert_matches_ref(w) for w in trained_convs]
    assert [q.n_filters for q in qs] == [8, 128, 16]
    # training moved at least one layer away from the random level
    assert min(q.variance_entropy_norm for q in qs) < QualityThresholds().random_entropy_norm


# --------------------------------------------------------------------------- TH(n)


def test_random_entropy_level() -> None:
    for n in (1, 2, 3, 9, 16, 100, 4096, 10**7):
        assert Q.random_entropy_level(n) == pytest.approx(ref_th(n), rel=1e-12)
    assert Q.random_entropy_level(2) < 0 < Q.random_entropy_level(3)  # fit not positive for n <= 2
    assert Q.random_entropy_level(10**9) == pytest.approx(1.2618047 - 0.31050834, abs=1e-6)
    assert Q.random_entropy_level(10**9) < math.log10(9)
    with pytest.raises(ValueError):
        Q.random_entropy_level(0)


# --------------------------------------------------------------------------- random layers


@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (64, 32, 3, 3), (10, 7, 3, 3), (5, 1, 3, 3)])
def test_gaussian_layers_match_reference(shape: tuple[int, ...]) -> None:
    w = gauss(shape, seed=sum(shape))
    w[0] *= 1e-4  # one near-zero filter so clean != raw
    assert_matches_ref(w)


# Measured (200 seeds, i.i.d. N(0,1), float32) min..max of the normalised entropy
# (means over 400 seeds: n=8 1.31, n=16 1.13, n=24 1.07, n=32 1.05, n=48 1.025, n=64 1.016):
#   n=16: 1.013..1.201   n=64: 0.998..1.033   n=256: 0.9975..1.0066
#   n=1024: 1.0013..1.0033   n=8192: 1.0027..1.0031
RANDOM_BAND = {16: (0.97, 1.30), 64: (0.97, 1.06), 256: (0.98, 1.02), 1024: (0.99, 1.015), 8192: (0.995, 1.01)}


@pytest.mark.parametrize("n", sorted(RANDOM_BAND))
def test_iid_gaussian_is_random_level(n: int) -> None:
    lo, hi = RANDOM_BAND[n]
    for seed in range(3):
        q = layer_quality(gauss((n, 1, 3, 3), seed))
        assert lo <= q.variance_entropy_norm <= hi
        # below random_min_filters TH(n) is too low to tell random from trained: no flag
        assert q.degenerate_random == (n >= QualityThresholds().random_min_filters)
        assert not q.degenerate_low_variety and not q.degenerate_sparse
        assert q.sparsity == 0.0


def _iid_norms(n: int, seeds: int) -> np.ndarray:
    return np.array([layer_quality(gauss((n, 1, 3, 3), 100 + s)).variance_entropy_norm for s in range(seeds)])


def test_random_level_justifies_the_random_defaults() -> None:
    """The README's numbers: TH(n) underestimates i.i.d. layers below 32 filters (so no
    random flag there); from 32 on they sit within ~5 % of 1 and above the 0.98 default."""
    t = QualityThresholds()
    means = {n: _iid_norms(n, 40).mean() for n in (8, 16, 24)}
    assert means[8] > 1.2 and means[16] > 1.1 and means[24] > 1.05
    for n in (32, 48, 64, 128, 512):
        v = _iid_norms(n, 40)
        assert 0.99 < v.mean() < 1.06, n
        assert v.min() >= t.random_entropy_norm, n  # every draw flagged
    # the published pretrained ResNet-18 (torchconvquality README): highest raw entropy
    # 0.9162 at n = 128*64 = 8192 -> normalised 0.96 < 0.98: not called random
    assert 0.9162 / Q.random_entropy_level(8192) < t.random_entropy_norm


def _k_patterns(n: int, k: int) -> torch.Tensor:
    """n filters, each +-1 times one of k orthonormal 3x3 patterns, balanced so the
    centred covariance has exactly k equal non-zero eigenvalues: H = log10(k)."""
    basis = torch.linalg.qr(gauss((9, 9), k).reshape(9, 9).double())[0][:k]
    idx = torch.arange(n)
    sign = torch.where((idx // k) % 2 == 0, 1.0, -1.0).double()
    return (sign[:, None] * basis[idx % k]).reshape(n, 1, 3, 3)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_pattern_layers_and_the_low_variety_default(k: int) -> None:
    t = QualityThresholds()
    for n in (96, 384, 3072):  # n / k blocks even: exactly balanced signs
        q = assert_matches_ref(_k_patterns(n, k))
        assert q.variance_entropy == pytest.approx(math.log10(k), abs=1e-9)
        assert q.variance_entropy_norm == pytest.approx(math.log10(k) / Q.random_entropy_level(n), abs=1e-9)
        # one or two patterns: low variety; three equal patterns (0.50-0.53): not
        assert q.degenerate_low_variety == (k <= 2), (n, k)
        assert not q.degenerate_random and not q.degenerate_sparse


def test_random_min_filters() -> None:
    w = gauss((16, 1, 3, 3), 4)
    q = layer_quality(w)
    assert q.variance_entropy_norm > 1.0 and not q.degenerate_random  # 16 < 32
    assert layer_quality(w, QualityThresholds(random_min_filters=16)).degenerate_random
    assert not layer_quality(w, QualityThresholds(random_min_filters=17)).degenerate_random
    rep = torch.zeros(8, 1, 3, 3)  # low variety is judged at any size with a defined norm
    rep[:, 0, 1, 1] = torch.linspace(1.0, 2.0, 8)
    assert layer_quality(rep).degenerate_low_variety


# --------------------------------------------------------------------------- constructed cases


def test_all_zero_layer() -> None:
    q = assert_matches_ref(torch.zeros(8, 4, 3, 3))
    assert q.sparsity == 1.0
    assert q.variance_entropy == 0.0 and q.variance_entropy_norm == 0.0
    assert q.variance_entropy_clean == 0.0 and math.isnan(q.variance_entropy_clean_norm)
    assert q.degenerate_sparse and not q.degenerate_low_variety and not q.degenerate_random
    assert Q.sparsity(torch.zeros(2, 2, 3, 3)) == 1.0


@pytest.mark.parametrize("scaled", [False, True])
def test_replicated_filters_are_low_variety(scaled: bool) -> None:
    f = gauss((1, 1, 3, 3), 7)
    w = f.repeat(64, 8, 1, 1)
    if scaled:  # filters a_i * f: still one direction
        w = w * torch.linspace(0.5, 2.0, 64).view(-1, 1, 1, 1)
    q = assert_matches_ref(w)
    assert abs(q.variance_entropy) < 1e-9 and abs(q.variance_entropy_norm) < 1e-9
    assert q.sparsity == 0.0
    assert q.degenerate_low_variety and not q.degenerate_random and not q.degenerate_sparse


def test_mostly_zeroed_layer_is_sparse() -> None:
    w = gauss((100, 10, 3, 3), 3)
    w[:90] = 0.0  # 90 % of the 1000 filters
    q = assert_matches_ref(w)
    assert q.sparsity == pytest.approx(0.9)
    assert q.degenerate_sparse
    assert not q.degenerate_low_variety  # clean entropy: the living filters are random
    assert q.variance_entropy_clean_norm > 0.95


def test_sparsity_threshold_is_strict_and_relative() -> None:
    w = torch.zeros(4, 1, 3, 3, dtype=torch.float64)
    w[0, 0, 1, 1] = -2.0  # peak |w| = 2 -> t = 0.02
    w[1, 0, 0, 0] = 0.02  # == t: not sparse (strict <)
    w[2, 0, 2, 2] = 0.0199  # < t: sparse
    w[3] = 0.019  # every weight < t: sparse
    assert Q.sparsity(w) == 0.5
    assert Q.sparsity(w, threshold=0.001) == 0.0
    assert Q.sparsity(w * 1e-30) == 0.5  # scale-free
    assert_matches_ref(w)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_layers(n: int) -> None:
    q = assert_matches_ref(gauss((n, 1, 3, 3), n))
    assert q.n_filters == n and q.sparsity == 0.0
    if n < 3:  # H == 0 (one filter: no variance; two: rank 1); TH(n) <= 0 -> undefined norm
        assert abs(q.variance_entropy) < 1e-12
        assert math.isnan(q.variance_entropy_norm) and math.isnan(q.variance_entropy_clean_norm)
        assert not (q.degenerate_random or q.degenerate_low_variety or q.degenerate_sparse)
    else:
        assert math.isfinite(q.variance_entropy_norm)
    assert Q.variance_entropy(gauss((1, 1, 3, 3), 0)) == 0.0


def test_clean_with_fewer_than_two_living_filters() -> None:
    w = torch.zeros(10, 1, 3, 3)
    w[0] = gauss((1, 3, 3), 1)
    q = assert_matches_ref(w)
    assert q.sparsity == 0.9
    assert q.variance_entropy_clean == 0.0 and math.isnan(q.variance_entropy_clean_norm)
    assert not q.degenerate_low_variety and q.degenerate_sparse


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_layer(bad: float) -> None:
    w = gauss((16, 4, 3, 3), 5)
    w[3, 1, 0, 2] = bad
    w[7, 0, 1, 1] = float("nan")
    q = layer_quality(w)
    assert q.nonfinite_count == 2 and q.n_filters == 64
    assert all(math.isnan(getattr(q, k)) for k in METRICS)
    assert not (q.degenerate_random or q.degenerate_sparse or q.degenerate_low_variety)
    fns = (Q.sparsity, Q.variance_entropy, Q.variance_entropy_norm,
           Q.variance_entropy_clean, Q.variance_entropy_clean_norm)
    assert all(math.isnan(fn(w)) for fn in fns)


def test_nonfinite_count_with_overflowing_sum() -> None:
    w = torch.full((4, 1, 3, 3), 1e308, dtype=torch.float64)  # finite, but the sum overflows
    assert layer_quality(w).nonfinite_count == 0


@pytest.mark.parametrize(("c_in", "c_out", "groups"), [(32, 32, 32), (16, 48, 4)])  # depthwise, grouped
def test_grouped_and_depthwise_shapes(c_in: int, c_out: int, groups: int) -> None:
    torch.manual_seed(c_out)
    w = torch.nn.Conv2d(c_in, c_out, 3, groups=groups).weight
    assert tuple(w.shape) == (c_out, c_in // groups, 3, 3)
    q = assert_matches_ref(w)
    assert q.n_filters == c_out * (c_in // groups)


def test_bad_shape_raises() -> None:
    with pytest.raises(ValueError):
        layer_quality(torch.zeros(9))
    with pytest.raises(ValueError):
        layer_quality(torch.zeros(4, 3, 3))


# --------------------------------------------------------------------------- dtypes, device, numerics


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(dtype: torch.dtype, trained_convs: list[torch.Tensor]) -> None:
    for w in [trained_convs[1], gauss((64, 16, 3, 3), 11)]:
        wd = w.to(dtype)
        before = wd.clone()
        q = assert_matches_ref(wd, tol=1e-9)  # exact on the dtype's own values
        assert torch.equal(wd, before)  # input never modified (float64 is not copied by .to)
        q32 = layer_quality(w.float())
        assert q.variance_entropy_norm == pytest.approx(q32.variance_entropy_norm, abs=1e-2)


def _cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3000, 9, generator=g, dtype=torch.float64)
    f = torch.randn(1, 9, generator=g, dtype=torch.float64)
    return {
        "gaussian": x,
        "graded_1e-6": x * torch.logspace(0, -6, 9, dtype=torch.float64),
        "offset_1e3": x + 1e3,
        "near_rank1": torch.randn(3000, 1, generator=g, dtype=torch.float64) * f + 1e-9 * x,
        "replicated_plus_noise": f + 1e-7 * x,
        "half": x.half().double(),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_gram_eigen_agrees_with_svd(name: str) -> None:
    x = _cases()[name]
    ev = Q._variances(x).flip(0)  # descending, like svdvals; up to a common factor
    s2 = torch.linalg.svdvals(x - x.mean(0)) ** 2
    assert (ev / ev.sum() - s2 / s2.sum()).abs().max().item() < 1e-9
    h_eig = Q._entropy_from_variances(ev)
    h_svd = Q._entropy_from_variances(s2)
    assert abs(h_eig - h_svd) <= 1e-9 * max(1.0, abs(h_svd))
    assert h_eig == pytest.approx(ref_entropy(x.numpy()), abs=1e-9)


def test_standalone_functions_agree(trained_convs: list[torch.Tensor]) -> None:
    w = trained_convs[1].clone()
    w.view(-1, 9)[:20] *= 1e-3
    q = layer_quality(w)
    assert Q.sparsity(w) == q.sparsity == 20 / 128
    assert Q.variance_entropy(w) == q.variance_entropy
    assert Q.variance_entropy_norm(w) == q.variance_entropy_norm
    assert Q.variance_entropy_clean(w) == q.variance_entropy_clean
    assert Q.variance_entropy_clean_norm(w) == q.variance_entropy_clean_norm
    assert q.variance_entropy_clean != q.variance_entropy
    assert_matches_ref(w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(trained_convs: list[torch.Tensor]) -> None:
    for w in [*trained_convs, gauss((512, 256, 3, 3), 1)]:
        a, b = layer_quality(w).as_dict(), layer_quality(w.cuda()).as_dict()
        for k, v in a.items():
            if isinstance(v, float) and not math.isnan(v):
                assert b[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
            else:
                assert b[k] == v or (math.isnan(v) and math.isnan(b[k])), k


# --------------------------------------------------------------------------- thresholds and roll-up


def test_thresholds_from_dict() -> None:
    t = QualityThresholds.from_dict({"sparse_share": 0.2, "random_entropy_norm": None})
    assert t.sparse_share == 0.2 and t.random_entropy_norm == QualityThresholds().random_entropy_norm
    assert QualityThresholds.from_dict(None) == QualityThresholds()
    with pytest.raises(KeyError):
        QualityThresholds.from_dict({"sparse_shar": 0.2})
    w = gauss((100, 1, 3, 3), 0)
    w[:30] = 0
    assert not layer_quality(w).degenerate_sparse
    assert layer_quality(w, t).degenerate_sparse
    assert layer_quality(w, QualityThresholds(sparsity_threshold=0.5)).sparsity > 0.3
    # int fields stay int (the CLI passes floats); a fraction is refused
    m = QualityThresholds.from_dict({"random_min_filters": 16.0})
    assert m.random_min_filters == 16 and isinstance(m.random_min_filters, int)
    with pytest.raises(ValueError):
        QualityThresholds.from_dict({"random_min_filters": 2.5})


def test_as_row_turns_undefined_metrics_into_none() -> None:
    tiny = layer_quality(gauss((2, 1, 3, 3), 0))  # n = 2: normalised entropies undefined
    row = tiny.as_row()
    assert row["variance_entropy_norm"] is None and row["variance_entropy_clean_norm"] is None
    assert row["variance_entropy"] == tiny.variance_entropy and row["n_filters"] == 2
    w = gauss((8, 2, 3, 3), 1)
    w[1, 1, 1, 1] = float("nan")
    bad = layer_quality(w).as_row()
    assert bad["nonfinite_count"] == 1 and all(bad[k] is None for k in METRICS)
    assert bad["degenerate_random"] is False and list(bad) == list(layer_quality(w).as_dict())


def test_model_quality_rollup(trained_convs: list[torch.Tensor]) -> None:
    rep = gauss((1, 1, 3, 3), 1).repeat(32, 4, 1, 1)
    nan = gauss((8, 2, 3, 3), 2)
    nan[0, 0, 0, 0] = float("nan")
    mostly_zero = gauss((50, 2, 3, 3), 3)
    mostly_zero[:40] = 0
    weights = [trained_convs[1], torch.zeros(4, 4, 3, 3), gauss((64, 8, 3, 3), 4), rep, nan, mostly_zero]
    layers = [layer_quality(w) for w in weights]
    m = model_quality(layers)
    json.dumps(m, allow_nan=False)  # plain JSON-able values
    assert m["n_layers_3x3"] == 6 and m["n_layers_evaluated"] == 5 and m["nonfinite_layers"] == 1
    ok = [q for q in layers if q.nonfinite_count == 0]
    assert m["mean_sparsity"] == pytest.approx(np.mean([q.sparsity for q in ok]))
    assert m["max_sparsity"] == 1.0
    norms = [q.variance_entropy_norm for q in ok]
    assert m["mean_variance_entropy_norm"] == pytest.approx(np.mean(norms))
    assert m["min_variance_entropy_norm"] == pytest.approx(min(norms))
    assert m["share_sparse"] == pytest.approx(2 / 5)  # zeros, mostly_zero
    assert m["share_low_variety"] == pytest.approx(1 / 5)  # replicated
    assert m["share_random"] == pytest.approx(sum(q.degenerate_random for q in ok) / 5)
    assert m["share_degenerate"] == pytest.approx(sum(q.is_degenerate for q in ok) / 5)
    # zeros (sparsity 1.0, margin 1.0) and replicated (clean norm 0, margin 1.0) tie on
    # one flag and severity 1.0 -> lowest index wins
    assert m["worst_layer_index"] == 1 and m["worst_layer_reason"] == "sparse"
    assert layers[1].as_dict()["degenerate_sparse"] is True


def test_model_quality_edge_cases() -> None:
    empty = model_quality([])
    assert empty["n_layers_3x3"] == 0 and empty["mean_sparsity"] is None
    assert empty["worst_layer_index"] is None
    structured = gauss((256, 1, 3, 3), 0) * torch.logspace(0, -1, 9).view(1, 1, 3, 3)  # anisotropic
    healthy = model_quality([layer_quality(structured)])
    assert healthy["share_degenerate"] == 0.0 and healthy["worst_layer_index"] is None
    w = gauss((8, 2, 3, 3), 2)
    w[0, 0, 0, 0] = float("inf")
    only_bad = model_quality([layer_quality(w)])
    assert only_bad["nonfinite_layers"] == 1 and only_bad["mean_variance_entropy_norm"] is None
    json.dumps(only_bad, allow_nan=False)


# --------------------------------------------------------------------------- k x k layers


def _level(k: int):
    """TH_k(n) written from docs/definitions.md with the table's constants."""
    from filterspark.kernels.random_level import RANDOM_LEVEL_FITS

    big_l, kk, x0, b = RANDOM_LEVEL_FITS[k]
    return lambda n: big_l / (1.0 + np.exp(-kk * (np.log2(n) - x0))) + b


@pytest.mark.parametrize("shape", [(32, 1, 5, 5), (16, 8, 5, 5), (64, 1, 7, 7), (12, 6, 7, 7), (40, 2, 2, 2)])
def test_kxk_layers_match_reference(shape: tuple[int, ...]) -> None:
    """Sparsity and entropies over k*k weights, normalised by the random level of k (depthwise included)."""
    k = shape[2]
    w = gauss(shape, seed=sum(shape))
    w[0] *= 1e-4
    q = layer_quality(w)
    ref = ref_metrics(w.double().numpy(), width=k * k, th=_level(k))
    for name in METRICS:
        assert getattr(q, name) == pytest.approx(ref[name], rel=TOL, abs=TOL), name
    assert q.sparsity > 0 and q.variance_entropy_clean != q.variance_entropy


def test_every_selectable_size_has_a_random_level() -> None:
    from filterspark.kernels.random_level import has_random_level
    from filterspark.kernels.shapes import ALL_KERNEL_SIZES

    for k in (3, *ALL_KERNEL_SIZES):
        assert has_random_level(k)
        big = Q.random_entropy_level(1 << 20, k)  # saturates just below log10(k*k)
        assert 0.97 * math.log10(k * k) < big < 1.005 * math.log10(k * k), k
        levels = [Q.random_entropy_level(n, k) for n in (64, 256, 1024, 4096)]
        assert levels == sorted(levels), k
    # no constants (k > 11) or not square: raw metrics only, the normalised ones undefined
    for shape in [(64, 1, 13, 13), (64, 1, 7, 1)]:
        q = layer_quality(gauss(shape, 1))
        assert not math.isnan(q.variance_entropy) and q.sparsity == 0.0
        assert math.isnan(q.variance_entropy_norm) and not q.degenerate_random
    with pytest.raises(ValueError, match="13x13"):
        Q.random_entropy_level(64, 13)


def test_simulated_random_level_reproduces_the_published_3x3_fit() -> None:
    """The simulation behind the k x k table, run for k = 3 (docs/definitions.md, Random
    level): the published curve describes its minima about as well as its own fit does
    (RMS within 2x), and from 16 filters on lies within two of its residual RMS of the
    simulated curve. The four constants themselves are strongly correlated (standard
    errors up to 0.7), so the curves are compared, not the constants."""
    from filterspark.kernels.random_level import PUBLISHED_3X3, logistic_level
    from filterspark.kernels.random_level_fit import fit_random_level

    fit = fit_random_level(3)
    assert fit.residual_rms < 0.012
    assert fit.residual_rms_of(PUBLISHED_3X3) <= 2 * fit.residual_rms
    x = np.log2(np.array(fit.sizes))
    gap = np.abs(logistic_level(x, PUBLISHED_3X3) - logistic_level(x, fit.fit))
    assert gap[np.array(fit.sizes) >= 16].max() <= 2 * fit.residual_rms
    print(f"\nk=3 simulated {fit.fit}, residual RMS {fit.residual_rms:.4f}; published RMS "
          f"{fit.residual_rms_of(PUBLISHED_3X3):.4f}, largest gap from n=16 {gap[np.array(fit.sizes) >= 16].max():.4f}")


@pytest.mark.parametrize(("k", "c_in", "c_out", "groups"), [(5, 16, 32, 1), (5, 64, 64, 64), (7, 32, 32, 1), (7, 96, 96, 96)])
def test_untrained_kxk_layers_score_about_one(k: int, c_in: int, c_out: int, groups: int) -> None:
    """Default-initialised (untrained) 5x5 and 7x7 torch layers, depthwise included, sit at
    the random level of their k: normalised entropy about 1, flagged random."""
    torch.manual_seed(k * c_out)
    w = torch.nn.Conv2d(c_in, c_out, k, groups=groups).weight
    q = layer_quality(w)
    assert 0.98 <= q.variance_entropy_norm <= 1.06, q.variance_entropy_norm
    assert q.degenerate_random and not q.degenerate_low_variety and not q.degenerate_sparse
