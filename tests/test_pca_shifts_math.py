"""Math of the PCA basis, coefficients, histograms and shifts against in-memory references."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import entropy
from sklearn.decomposition import PCA

from filterspark.kernels.pca import (
    FilterMoments,
    PCABasis,
    moments,
    pca_direct,
    pca_from_moments,
    project,
    provisional_reference,
    scale_filters,
)
from filterspark.kernels.shifts import (
    EMPTY_BIN,
    bin_edges,
    combine_ranges,
    histogram_counts,
    histogram_counts_2d,
    kl,
    normalised_histogram,
    shift,
    shift_matrix,
)

EPS32 = np.finfo(np.float32).eps


def make_filters(n: int, seed: int, smooth: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """Raw 'trained-looking' 3x3 filters: smoothed noise + noise, a few all-zero rows."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((n, 5, 5))
    sm = gaussian_filter(raw, sigma=(0, smooth, smooth))[:, 1:4, 1:4].reshape(n, 9)
    x = sm + 0.3 * sm.std() * rng.standard_normal((n, 9)) + offset * sm.std()
    x *= rng.lognormal(0.0, 1.0, size=(n, 1)) * 0.05  # per-layer-like magnitudes
    x[rng.choice(n, size=max(3, n // 200), replace=False)] = 0.0
    return x


def published_hist(values: np.ndarray, lo: float, hi: float, bins: int = 70) -> np.ndarray:
    """The published procedure applied to numpy's density output."""
    h = np.histogram(values, bins=bins, range=(lo, hi), density=True)[0]
    h[h == 0] = EPS32
    return h / h.sum()


def splits(n: int, sizes: list[int]) -> list[slice]:
    out, s, k = [], 0, 0
    while s < n:
        e = min(n, s + sizes[k % len(sizes)])
        out.append(slice(s, e))
        s, k = e, k + 1
    return out


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return make_filters(30_000, seed=1)


@pytest.fixture(scope="module")
def scaled(raw: np.ndarray) -> np.ndarray:
    return scale_filters(raw)


# ---------------------------------------------------------------- scaling


def test_scale_filters_rows(raw: np.ndarray, scaled: np.ndarray) -> None:
    zero = ~raw.any(axis=1)
    assert zero.sum() >= 3
    np.testing.assert_array_equal(scaled[zero], 0.0)
    np.testing.assert_array_equal(np.abs(scaled[~zero]).max(axis=1), 1.0)
    np.testing.assert_array_equal(np.sign(scaled), np.sign(raw))
    assert scaled.dtype == np.float64 and scaled is not raw


def test_scale_filters_batch_invariant(raw: np.ndarray, scaled: np.ndarray) -> None:
    parts = [scale_filters(raw[s]) for s in splits(len(raw), [1, 7, 4096, 333])]
    assert np.array_equal(np.concatenate(parts), scaled)
    f32 = raw.astype(np.float32)
    assert np.array_equal(scale_filters(f32[:5]), scale_filters(f32)[:5])


def test_scale_filters_edge_cases() -> None:
    assert scale_filters(np.zeros((0, 9))).shape == (0, 9)
    x = np.array([[0.0] * 9, [np.nan] + [1.0] * 8, [-4.0] + [2.0] * 8])
    out = scale_filters(x)
    np.testing.assert_array_equal(out[0], 0.0)
    assert np.isnan(out[1, 0])
    np.testing.assert_array_equal(out[2], [-1.0] + [0.5] * 8)
    with pytest.raises(ValueError):
        scale_filters(np.zeros((4, 3, 3)))


# ---------------------------------------------------------------- moments


def test_batch_merged_moments_equal_single_pass(scaled: np.ndarray) -> None:
    single = moments(scaled)
    merged = FilterMoments.zeros()
    for s in splits(len(scaled), [1000, 1, 4097, 12]):
        merged = merged + moments(scaled[s])
    assert merged.n == single.n == len(scaled)
    np.testing.assert_allclose(merged.sum, single.sum, rtol=1e-12, atol=1e-12 * np.abs(single.sum).max())
    np.testing.assert_allclose(merged.cross, single.cross, rtol=1e-12)
    np.testing.assert_allclose(merged.covariance(), np.cov(scaled, rowvar=False), rtol=1e-12, atol=1e-15)


def test_merge_with_different_references(scaled: np.ndarray) -> None:
    a, b = scaled[:10_000], scaled[10_000:]
    ma = moments(a, provisional_reference(a[:100]))
    mb = moments(b, np.full(9, 0.25))
    merged = ma.merge(mb)
    np.testing.assert_array_equal(merged.ref, ma.ref)
    np.testing.assert_allclose(merged.covariance(), np.cov(scaled, rowvar=False), rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(merged.mean, scaled.mean(axis=0), rtol=1e-11, atol=1e-15)
    with pytest.raises(ValueError):
        moments(scaled[:1]).covariance()


def test_reference_point_rescues_large_mean() -> None:
    """Filters with a large common offset: shifted moments keep np.cov precision."""
    x = scale_filters(make_filters(200_000, seed=5, offset=5.0))
    cov = np.cov(x, rowvar=False)
    ev_ref = np.linalg.eigvalsh(cov)

    def rel_eig_err(m: FilterMoments) -> float:
        return float(np.max(np.abs(np.linalg.eigvalsh(m.covariance()) - ev_ref) / ev_ref))

    def batched(ref: np.ndarray | None) -> FilterMoments:
        m = FilterMoments.zeros(ref)
        for s in splits(len(x), [4096]):
            m = m + moments(x[s], ref)
        return m

    raw_err = rel_eig_err(batched(None))
    shifted_err = rel_eig_err(batched(provisional_reference(x[:4096])))
    print(f"\nlarge-mean filters, eigenvalue rel. error: ref=0 {raw_err:.2e}, provisional ref {shifted_err:.2e}")
    assert shifted_err < 1e-12
    assert raw_err < 1e-9


# ---------------------------------------------------------------- PCA


def test_pca_matches_sklearn(scaled: np.ndarray) -> None:
    sk = PCA(n_components=9, svd_solver="full").fit(scaled)
    for basis in (pca_direct(scaled), pca_from_moments(moments(scaled))):
        np.testing.assert_allclose(basis.explained_variance_ratio, sk.explained_variance_ratio_, atol=1e-9)
        np.testing.assert_allclose(basis.explained_variance, sk.explained_variance_, rtol=1e-9)
        np.testing.assert_allclose(basis.mean, sk.mean_, rtol=1e-12, atol=1e-15)
        dots = np.abs(np.sum(basis.components * sk.components_, axis=1))
        np.testing.assert_allclose(dots, 1.0, atol=1e-9)
        np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(9), atol=1e-12)
        assert basis.n_filters == len(scaled)
        assert np.isclose(basis.explained_variance_ratio.sum(), 1.0)
        assert np.all(np.diff(basis.explained_variance) <= 0)


def test_sign_rule_deterministic_and_permutation_stable(scaled: np.ndarray) -> None:
    basis = pca_direct(scaled)
    comps = basis.components
    top = np.argmax(np.abs(comps), axis=1)
    assert np.all(comps[np.arange(9), top] > 0)
    perm = np.random.default_rng(3).permutation(len(scaled))
    for other in (
        pca_direct(scaled[perm]),
        pca_from_moments(sum((moments(scaled[perm][s]) for s in splits(len(scaled), [777])), FilterMoments.zeros())),
        pca_direct(-scaled),  # flipping the data does not flip the components
    ):
        np.testing.assert_allclose(other.components, comps, atol=1e-9)
        np.testing.assert_allclose(other.explained_variance_ratio, basis.explained_variance_ratio, atol=1e-12)


def test_pca_degenerate_inputs() -> None:
    basis = pca_direct(np.zeros((10, 9)))
    np.testing.assert_array_equal(basis.explained_variance, 0.0)
    np.testing.assert_array_equal(basis.explained_variance_ratio, 0.0)
    with pytest.raises(ValueError):
        pca_direct(np.zeros((1, 9)))


# ---------------------------------------------------------------- coefficients


def test_project_matches_sklearn_transform(scaled: np.ndarray) -> None:
    basis = pca_direct(scaled)
    sk = PCA(n_components=9, svd_solver="full").fit(scaled)
    sk.components_ = basis.components  # same sign convention
    np.testing.assert_allclose(project(scaled, basis), sk.transform(scaled), atol=1e-12)
    np.testing.assert_allclose(project(scaled, basis), (scaled - basis.mean) @ basis.components.T, atol=1e-13)
    np.testing.assert_array_equal(basis.transform(scaled[:10]), project(scaled[:10], basis))


def test_project_bit_identical_across_batches(scaled: np.ndarray) -> None:
    basis = pca_direct(scaled)
    full = project(scaled, basis)
    for sizes in ([1], [7, 13, 4096], [1024], [29_999]):
        parts = [project(scaled[s], basis) for s in splits(len(scaled), sizes)]
        assert np.array_equal(np.concatenate(parts), full), sizes
    strided = project(scaled[::3], basis)  # non-contiguous input
    assert np.array_equal(strided, full[::3])
    f_order = project(np.asfortranarray(scaled[:500]), basis)
    assert np.array_equal(f_order, full[:500])


# ---------------------------------------------------------------- histograms


def edge_values(lo: float, hi: float, bins: int) -> np.ndarray:
    e = bin_edges(lo, hi, bins)
    near = np.concatenate([e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf)])
    # values whose float index rounds across an edge
    fuzz = e[:, None] + np.array([-3, -2, -1, 1, 2, 3]) * np.spacing(e)[:, None]
    return np.concatenate([near, fuzz.ravel(), [lo - 1, hi + 1, np.nan, np.inf, -np.inf]])


@pytest.mark.parametrize("lo,hi", [(-3.7, 4.1), (0.1, 0.7), (-1e-3, 2.5e-3), (-1.0, 1.0)])
def test_histogram_counts_equal_numpy(lo: float, hi: float) -> None:
    rng = np.random.default_rng(7)
    v = np.concatenate([rng.uniform(lo - 0.5, hi + 0.5, 50_000), edge_values(lo, hi, 70)])
    ref = np.histogram(v, bins=70, range=(lo, hi))[0]
    got = histogram_counts(v, lo, hi)
    assert got.dtype == np.int64 and np.array_equal(got, ref)
    for bins in (1, 3, 70, 256):
        vb = np.concatenate([v, edge_values(lo, hi, bins)])
        assert np.array_equal(histogram_counts(vb, lo, hi, bins), np.histogram(vb, bins=bins, range=(lo, hi))[0])


def test_histogram_counts_2d_and_additivity(scaled: np.ndarray) -> None:
    c = project(scaled, pca_direct(scaled))
    lo, hi = float(c.min()), float(c.max())
    c = np.vstack([c, edge_values(lo, hi, 70)[:, None].repeat(9, axis=1)[:-5]])  # finite edges
    got = histogram_counts_2d(c, lo, hi)
    assert got.shape == (9, 70)
    for i in range(9):
        assert np.array_equal(got[i], np.histogram(c[:, i], bins=70, range=(lo, hi))[0])
    summed = sum(histogram_counts_2d(c[s], lo, hi) for s in splits(len(c), [1000, 3]))
    assert np.array_equal(summed, got)
    assert np.array_equal(histogram_counts_2d(np.zeros((0, 9)), lo, hi), np.zeros((9, 70), np.int64))
    # out-of-range and non-finite values are dropped per column, not per row
    bad = c[:50].copy()
    bad[0, 3], bad[1, 4], bad[2, 5] = np.nan, np.inf, hi + 1
    for i in range(9):
        assert np.array_equal(histogram_counts_2d(bad, lo, hi)[i], np.histogram(bad[:, i], 70, (lo, hi))[0])


def test_histogram_equal_range_and_float32() -> None:
    v = np.full(10, 0.3)
    assert np.array_equal(histogram_counts(v, 0.3, 0.3), np.histogram(v, bins=70, range=(0.3, 0.3))[0])
    assert np.array_equal(
        normalised_histogram(histogram_counts(v, 0.3, 0.3), 0.3, 0.3), published_hist(v, 0.3, 0.3)
    )
    v32 = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    lo, hi = float(v32.min()), float(v32.max())
    assert np.array_equal(
        histogram_counts(v32, lo, hi), np.histogram(v32.astype(np.float64), 70, (lo, hi))[0]
    )
    with pytest.raises(ValueError):
        histogram_counts(v, 1.0, 0.0)


def test_normalised_histogram_equals_published_procedure(scaled: np.ndarray) -> None:
    c = project(scaled, pca_direct(scaled))
    lo, hi = combine_ranges([(c[:100].min(), c[:100].max()), (c[100:].min(), c[100:].max())])
    assert (lo, hi) == (c.min(), c.max())
    counts = histogram_counts_2d(c, lo, hi)
    got = normalised_histogram(counts, lo, hi)
    for i in range(9):
        ref = published_hist(c[:, i], lo, hi)
        assert np.array_equal(got[i], ref), i
        assert np.array_equal(normalised_histogram(counts[i], lo, hi), ref)
    assert (counts == 0).any() and np.all(got > 0)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-14)


def test_normalised_histogram_empty_is_nan() -> None:
    h = normalised_histogram(np.zeros(70, np.int64), -1.0, 1.0)
    assert h.shape == (70,) and np.all(np.isnan(h))
    with pytest.raises(TypeError):
        normalised_histogram(np.zeros(70), -1.0, 1.0)


def test_ranges() -> None:
    assert combine_ranges([(0.5, 1.0), (np.inf, -np.inf), (None, None), (-2.0, 0.0)]) == (-2.0, 1.0)
    with pytest.raises(ValueError):
        combine_ranges([(np.nan, np.nan)])


# ---------------------------------------------------------------- KL and shift


def test_kl_matches_scipy_entropy() -> None:
    rng = np.random.default_rng(11)
    p = rng.dirichlet(np.ones(70), size=9)
    q = rng.dirichlet(np.ones(70) * 0.3, size=9)
    q[q == 0] = EPS32
    q /= q.sum(axis=1, keepdims=True)
    got = kl(p, q)
    ref = entropy(p, q, axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert kl(p[0], p[0]) == 0.0
    assert isinstance(kl(p[0], q[0]), float)
    assert kl(np.array([0.0, 1.0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2), rel=1e-15)
    assert kl(np.array([0.5, 0.5]), np.array([0.0, 1.0])) == np.inf


def _group_hists(groups: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Full pipeline with batches: moments → basis → range → counts → histograms."""
    scaled_g = {k: scale_filters(v) for k, v in groups.items()}
    m = FilterMoments.zeros()
    for x in scaled_g.values():
        for s in splits(len(x), [5000]):
            m = m + moments(x[s])
    basis = pca_from_moments(m)
    coeffs = {k: project(x, basis) for k, x in scaled_g.items()}
    lo, hi = combine_ranges((float(c.min()), float(c.max())) for c in coeffs.values())
    hists = {k: normalised_histogram(histogram_counts_2d(c, lo, hi), lo, hi) for k, c in coeffs.items()}
    return hists, basis.explained_variance_ratio


def test_shift_same_vs_different_populations() -> None:
    groups = {
        "a1": make_filters(20_000, seed=21, smooth=1.0),
        "a2": make_filters(20_000, seed=22, smooth=1.0),
        "b": make_filters(20_000, seed=23, smooth=0.3),  # sharper, less smooth filters
    }
    hists, evr = _group_hists(groups)
    same, per_same = shift(hists["a1"], hists["a2"], evr)
    diff, per_diff = shift(hists["a1"], hists["b"], evr)
    print(f"\nshift same distribution: {same:.4f}; different distributions: {diff:.4f}")
    assert per_same.shape == (9,) and np.isclose(per_same.sum(), same)
    assert same < 0.05
    assert diff > 20 * same and diff > 0.3
    # exact symmetry and pair listing
    back, per_back = shift(hists["a2"], hists["a1"], evr)
    assert back == same and np.array_equal(per_back, per_same)
    rows = shift_matrix(hists, evr)
    assert [(a, b) for a, b, *_ in rows] == [
        ("a1", "a2"), ("a1", "b"), ("a2", "a1"), ("a2", "b"), ("b", "a1"), ("b", "a2")
    ]
    by_pair = {(a, b): (t, p) for a, b, t, p in rows}
    assert by_pair[("a1", "b")][0] == by_pair[("b", "a1")][0] == diff
    assert len(shift_matrix(hists, evr, both_orders=False)) == 3
    with pytest.raises(ValueError):
        shift(hists["a1"], hists["b"][:, :69], evr)


def test_shift_matches_in_memory_reference() -> None:
    """Batched pipeline == sklearn PCA + np.histogram(density) + scipy entropy."""
    groups = {"g1": make_filters(8000, seed=31), "g2": make_filters(6000, seed=32, smooth=0.5)}
    hists, evr = _group_hists(groups)
    allx = scale_filters(np.vstack(list(groups.values())))
    sk = PCA(n_components=9, svd_solver="full").fit(allx)
    top = np.argmax(np.abs(sk.components_), axis=1)  # the documented sign rule, independently
    sk.components_ *= np.sign(sk.components_[np.arange(9), top])[:, None]
    c = {k: sk.transform(scale_filters(v)) for k, v in groups.items()}
    lo = min(v.min() for v in c.values())
    hi = max(v.max() for v in c.values())
    ref_h = {k: np.stack([published_hist(v[:, i], lo, hi) for i in range(9)]) for k, v in c.items()}
    ref = sum(
        sk.explained_variance_ratio_[i]
        * (entropy(ref_h["g1"][i], ref_h["g2"][i]) + entropy(ref_h["g2"][i], ref_h["g1"][i]))
        for i in range(9)
    )
    got, _ = shift(hists["g1"], hists["g2"], evr)
    # sklearn's signs/last bits may move a value across a bin edge: allow tiny slack
    assert got == pytest.approx(ref, rel=1e-6)


def test_shift_with_empty_group_is_nan() -> None:
    h = normalised_histogram(np.zeros((9, 70), np.int64), -1.0, 1.0)
    ok = normalised_histogram(np.ones((9, 70), np.int64), -1.0, 1.0)
    total, per = shift(h, ok, np.full(9, 1 / 9))
    assert np.isnan(total) and np.all(np.isnan(per))


def test_pcabasis_is_plain_data(scaled: np.ndarray) -> None:
    b = pca_direct(scaled[:1000])
    assert isinstance(b, PCABasis)
    assert b.mean.shape == (9,) and b.components.shape == (9, 9)
    assert b.explained_variance.dtype == np.float64
    assert EMPTY_BIN == float(EPS32)
