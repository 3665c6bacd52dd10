"""ArcFace on one loaded network (``runtimes.ModelSession``): aligned face crops in, unit vectors out."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from facepass.models import EMBEDDING_DIM
from facepass.vision.images import BgrImage
from facepass.vision.runtimes import ModelSession


class ArcFaceRecognizer:
    """ArcFace: aligned crops in, one L2-normalized 512-d vector per crop, one call per batch."""

    def __init__(self, session: ModelSession, path: Path) -> None:
        import onnx

        self.session = session
        graph = onnx.load(str(path), load_external_data=False).graph
        self.input_size = int(graph.input[0].type.tensor_type.shape.dim[2].dim_value or 112)
        # InsightFace's rule: a graph that normalizes its own input wants raw pixels.
        ops = {node.op_type for node in graph.node[:8]}
        self.mean, self.std = (0.0, 1.0) if {"Sub", "Mul"} <= ops else (127.5, 127.5)

    def embed(self, crops: list[BgrImage]) -> npt.NDArray[np.float32]:
        if not crops:
            return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        size = (self.input_size, self.input_size)
        blob = cv2.dnn.blobFromImages(crops, 1.0 / self.std, size, (self.mean,) * 3, swapRB=True)
        raw = self.session.run(np.ascontiguousarray(blob, dtype=np.float32))[0].reshape(len(crops), -1)
        if raw.shape[1] != EMBEDDING_DIM:
            raise RuntimeError(f"recognizer gives {raw.shape[1]}-d embeddings, need {EMBEDDING_DIM}")
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.asarray(raw / np.maximum(norms, 1e-12), dtype=np.float32)
