"""Nearest-neighbour search over a bank: exact, IVF over stored centroids, or HNSW over a stored graph (no faiss
pickle). Fit checks an index with these same functions, so the engine runs what was measured."""
from __future__ import annotations

import faiss
import numpy as np


def make_index(bank: np.ndarray, centroids: np.ndarray | None = None, nprobe: int = 1, *,
               graph: np.ndarray | None = None, hnsw_m: int = 32, ef_search: int = 32, entry_point: int = 0
               ) -> tuple[faiss.Index, faiss.IndexFlatL2 | None, faiss.IndexFlatL2 | None]:
    """(index, exact fallback, quantizer) over a bank: exact search, IVF over stored centroids, or HNSW over a
    stored graph. Fit measures an index's error with this same function, so the engine runs what was checked."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    if graph is not None:
        return hnsw_index(bank, graph, hnsw_m, ef_search, entry_point), None, None
    flat = faiss.IndexFlatL2(bank.shape[1])
    flat.add(bank)
    if centroids is None:
        return flat, None, None
    quantizer = faiss.IndexFlatL2(bank.shape[1])
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    ivf = faiss.IndexIVFFlat(quantizer, bank.shape[1], centroids.shape[0])
    ivf.is_trained = True
    ivf.add(bank)
    ivf.nprobe = min(nprobe, centroids.shape[0])
    return ivf, flat, quantizer


def hnsw_graph(index: faiss.IndexHNSWFlat) -> np.ndarray:
    """A built HNSW index's graph as one int32 array: each row's level, then every row's neighbour lists. Stored
    in the bundle because faiss builds the graph in parallel, so a rebuild at load would differ from the checked
    one."""
    g = index.hnsw
    return np.concatenate([faiss.vector_to_array(g.levels), faiss.vector_to_array(g.neighbors)]).astype(np.int32)


def hnsw_index(bank: np.ndarray, graph: np.ndarray, m: int, ef_search: int, entry_point: int) -> faiss.IndexHNSWFlat:
    """The HNSW index of hnsw_graph(), rebuilt without a search; ValueError when the graph does not fit the bank."""
    n = bank.shape[0]
    index = faiss.IndexHNSWFlat(bank.shape[1], m)
    g = index.hnsw
    levels = graph[:n]
    if graph.ndim != 1 or len(graph) < n or levels.min(initial=1) < 1 \
            or levels.max(initial=1) >= g.cum_nneighbor_per_level.size():
        raise ValueError(f"HNSW graph of {graph.shape} does not describe {n} rows with M {m}")
    per_level = np.array([g.cum_nb_neighbors(i) for i in range(g.cum_nneighbor_per_level.size())], np.uint64)
    offsets = np.concatenate([[0], np.cumsum(per_level[levels])]).astype(np.uint64)
    neighbors = graph[n:]
    if offsets[-1] != len(neighbors) or neighbors.min(initial=0) < -1 or neighbors.max(initial=0) >= n \
            or not 0 <= entry_point < n or levels[entry_point] != levels.max():
        raise ValueError(f"HNSW graph does not describe {n} rows with M {m} and entry point {entry_point}")
    faiss.copy_array_to_vector(np.ascontiguousarray(levels), g.levels)
    faiss.copy_array_to_vector(offsets, g.offsets)
    faiss.copy_array_to_vector(np.ascontiguousarray(neighbors), g.neighbors)
    g.entry_point, g.max_level, g.efSearch = entry_point, int(levels.max()) - 1, ef_search
    index.storage.add(bank)
    index.ntotal = n
    return index


#: HNSW: per image (or tile), its REFINE_TOP highest patch scores are searched again with REFINE_EF x efSearch.
#: The image score is the max patch score, and a narrow search errs most on exactly those far patches. Measured
#: on a 76.7k x 384 bank, 199 magnetic_tile test frames, efSearch 16: alone 24 frames off by > 1 % (worst 27 %);
#: refined 16 x 8: worst 0.003 %, for 8 % more time (8 x 16 and 16 x 4 still left one frame off by 5 % / 2.3 %).
REFINE_TOP, REFINE_EF = 16, 8


def top_per_group(score: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n highest scores of every group (all of a smaller group)."""
    order = np.lexsort((-score, groups))
    g = groups[order]
    rank = np.arange(len(g)) - np.searchsorted(g, g, side="left")
    return order[rank < n]


def knn_search(index: faiss.Index, exact: faiss.IndexFlatL2 | None, x: np.ndarray, k: int,
               groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float32 queries -> L2 distances (N, k) and bank rows (N, k); an approximate index's queries whose
    probed lists held fewer than k rows are searched exactly (a missing neighbour must not read as distance 0).
    `groups` (image of each query): HNSW refines each image's top patches (REFINE_TOP)."""
    dist, idx = index.search(x, k)
    if exact is not None:
        short = np.nonzero(idx[:, -1] < 0)[0]
        if len(short):
            dist[short], idx[short] = exact.search(x[short], k)
    if groups is not None and isinstance(index, faiss.IndexHNSWFlat):
        top = top_per_group(dist.mean(axis=1), groups, REFINE_TOP)
        params = faiss.SearchParametersHNSW()
        params.efSearch = index.hnsw.efSearch * REFINE_EF
        d2, i2 = index.search(np.ascontiguousarray(x[top]), k, params=params)
        closer = d2.mean(axis=1) < dist[top].mean(axis=1)
        dist[top[closer]], idx[top[closer]] = d2[closer], i2[closer]
    return np.sqrt(np.maximum(dist, 0.0)), idx
