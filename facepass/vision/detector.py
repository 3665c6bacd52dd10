"""SCRFD face detection over a batch of photos in one model call.

The decoding (anchor centres, score threshold, distance-to-box, NMS at 0.4) is
InsightFace's ``SCRFD.detect`` step for step, so that one photo gives the same
boxes as InsightFace's class; what is added is the batch: every photo is
letterboxed (scaled to fit, top-left, zero-padded) into the same
``det_size x det_size`` input, the inputs are stacked, and the network runs
once for all of them. With ``fit`` (the CPU fast path) the input keeps the
photo's aspect ratio instead (sides rounded up to 32): a 3:2 photo is
640x448 rather than 640x640, and photos of one input size share a call.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from facepass.vision.images import BgrImage
from facepass.vision.runtimes import Array, ModelSession

INPUT_MEAN = 127.5
INPUT_STD = 128.0
NMS_THRESH = 0.4


@dataclass(frozen=True, slots=True)
class Detections:
    """One photo's faces, best score first: boxes (n, 5: x1 y1 x2 y2 score), landmarks (n, 5, 2)."""

    boxes: npt.NDArray[np.float32]
    landmarks: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


class ScrfdDetector:
    """An SCRFD network with keypoints (9 outputs: scores, boxes, landmarks at strides 8, 16, 32)."""

    def __init__(self, session: ModelSession, det_size: int, det_thresh: float, fit: bool = False) -> None:
        self.session = session
        self.det_size = det_size
        self.det_thresh = det_thresh
        # fit: the input keeps the photo's aspect (the letterboxed size rounded up to the
        # coarsest stride) instead of the padded square: less padding to convolve.
        self.fit = fit
        self.strides = (8, 16, 32)
        self.anchors_per_cell = 2
        self._centres: dict[tuple[int, int, int], npt.NDArray[np.float32]] = {}

    def _scaled_size(self, image: BgrImage) -> tuple[int, int]:
        """(width, height) of the photo scaled into the square input (InsightFace's arithmetic)."""
        size = self.det_size
        h, w = image.shape[:2]
        if h / w > 1.0:
            return int(size / (h / w)), size
        return size, int(size * (h / w))

    def input_size(self, image: BgrImage) -> tuple[int, int]:
        """(width, height) of the network input for this photo."""
        if not self.fit:
            return self.det_size, self.det_size
        step = self.strides[-1]
        new_w, new_h = self._scaled_size(image)
        return max(step, -(-new_w // step) * step), max(step, -(-new_h // step) * step)

    def letterbox(self, image: BgrImage, size: tuple[int, int]) -> tuple[BgrImage, float]:
        """The photo scaled into the input, top-left, zero-padded; and its scale."""
        new_w, new_h = self._scaled_size(image)
        canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        canvas[:new_h, :new_w, :] = cv2.resize(image, (new_w, new_h))
        return canvas, new_h / image.shape[0]

    def detect_batch(self, images: list[BgrImage]) -> list[Detections]:
        """Faces of every image: one call of the network per input size (one call for all
        of them with the square input; photos of one aspect ratio share a call with fit)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(self.input_size(image), []).append(i)
        found: dict[int, Detections] = {}
        for size, members in groups.items():
            batch = self._detect_same_size([images[i] for i in members], size)
            found.update(zip(members, batch, strict=True))
        return [found[i] for i in range(len(images))]

    def _detect_same_size(self, images: list[BgrImage], size: tuple[int, int]) -> list[Detections]:
        canvases, scales = zip(*(self.letterbox(image, size) for image in images), strict=True)
        blob = cv2.dnn.blobFromImages(list(canvases), 1.0 / INPUT_STD, size, (INPUT_MEAN,) * 3, swapRB=True)
        outputs = self.session.run(np.ascontiguousarray(blob, dtype=np.float32))
        if outputs[0].ndim != 3 or outputs[0].shape[0] != len(images):
            raise RuntimeError(f"detector output {outputs[0].shape} is not batched by photo")
        return [self._decode([out[i] for out in outputs], scales[i], size) for i in range(len(images))]

    def _anchor_centres(self, height: int, width: int, stride: int) -> npt.NDArray[np.float32]:
        key = (height, width, stride)
        if key not in self._centres:
            ys, xs = np.mgrid[:height, :width]
            grid = np.stack([xs, ys], axis=-1).astype(np.float32)
            centres = (grid * stride).reshape((-1, 2))
            centres = np.stack([centres] * self.anchors_per_cell, axis=1).reshape((-1, 2))
            self._centres[key] = centres
        return self._centres[key]

    def _decode(self, outs: list[Array], scale: float, size: tuple[int, int]) -> Detections:
        fmc = len(self.strides)
        scores_all, boxes_all, kps_all = [], [], []
        for idx, stride in enumerate(self.strides):
            scores = outs[idx]
            centres = self._anchor_centres(size[1] // stride, size[0] // stride, stride)
            keep = np.where(scores >= self.det_thresh)[0]
            box = outs[idx + fmc][keep] * stride
            kps = outs[idx + fmc * 2][keep] * stride
            c = centres[keep]
            boxes = np.stack(
                [c[:, 0] - box[:, 0], c[:, 1] - box[:, 1], c[:, 0] + box[:, 2], c[:, 1] + box[:, 3]], -1
            )
            points = np.stack([c[:, i % 2] + kps[:, i] for i in range(kps.shape[1])], -1)
            scores_all.append(scores[keep])
            boxes_all.append(boxes)
            kps_all.append(points.reshape((points.shape[0], kps.shape[1] // 2, 2)))
        scores_v = np.vstack(scores_all)
        if scores_v.size == 0:
            return Detections(np.empty((0, 5), np.float32), np.empty((0, 5, 2), np.float32))
        order = np.argsort(-scores_v.ravel(), kind="stable")
        boxes_v = np.vstack(boxes_all) / scale
        kps_v = np.vstack(kps_all) / scale
        pre = np.hstack((boxes_v, scores_v)).astype(np.float32, copy=False)[order]
        kps_v = kps_v[order]
        # InsightFace sorts again (stable) before NMS: the same order, kept for identical ties.
        order = np.argsort(-pre[:, 4], kind="stable")
        pre, kps_v = pre[order], kps_v[order]
        keep_idx = _nms(pre, NMS_THRESH)
        return Detections(pre[keep_idx], kps_v[keep_idx].astype(np.float32, copy=False))


def _nms(dets: npt.NDArray[np.float32], thresh: float) -> list[int]:
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= thresh)[0] + 1]
    return keep
