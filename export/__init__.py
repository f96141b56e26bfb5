"""The deployable model: bundle format and the torch-free engine that runs it."""
import os

# OpenMP workers (faiss, and cv2/onnxruntime where they use libgomp) must sleep between calls instead of
# spinning: on a 2-core edge PC spinning workers starve each other (measured: faiss kNN 11 ms -> 83 ms
# under load). libgomp reads this once, when the first library using it is loaded, so it is set here,
# before any of them is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
