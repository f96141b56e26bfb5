import numpy as np

from linesight.trainer.coreset import greedy_coreset


def exact_greedy(x: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """Reference k-center greedy on the full-dimensional data (small inputs only: tests)."""
    picks = [start]
    mind = np.linalg.norm(x - x[start], axis=1)
    for _ in range(n - 1):
        i = int(mind.argmax())
        picks.append(i)
        mind = np.minimum(mind, np.linalg.norm(x - x[i], axis=1))
    return np.asarray(picks)


def covering_radius(x: np.ndarray, centers: np.ndarray) -> float:
    """Largest distance from any row of x to its nearest center (what k-center minimises)."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centers, dtype=np.float32))
    d, _ = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return float(np.sqrt(max(d.max(), 0.0)))


def _data(n=3000, d=48, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((30, d)) * 4
    x = centers[rng.integers(0, 30, n)] + rng.standard_normal((n, d)) * rng.uniform(0.1, 1.5, (n, 1))
    return x.astype(np.float32)


def test_unprojected_single_chunk_equals_exact_greedy():
    x = _data(800)
    ours = greedy_coreset(x, 60, projection_dim=0, chunk_size=10_000, seed=1)
    ref = exact_greedy(x, 60, start=int(ours[0]))
    assert list(ours) == list(ref)


def test_chunked_projected_coreset_covers_nearly_as_well_as_exact_greedy():
    x = _data()
    n = 150
    exact = covering_radius(x, x[exact_greedy(x, n)])
    approx_idx = greedy_coreset(x, n, projection_dim=32, chunk_size=512, seed=0)
    approx = covering_radius(x, x[approx_idx])
    rand = covering_radius(x, x[np.random.default_rng(0).choice(len(x), n, replace=False)])
    assert len(np.unique(approx_idx)) == n
    assert approx <= 1.5 * exact, (approx, exact)
    assert approx < rand, (approx, rand)


def test_sizes_and_edge_cases():
    x = _data(100)
    assert len(greedy_coreset(x, 100)) == 100
    assert len(greedy_coreset(x, 500)) == 100
    assert len(np.unique(greedy_coreset(x, 37, chunk_size=16))) == 37
