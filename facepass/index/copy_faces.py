"""A batch's face rows as one PostgreSQL binary COPY payload, built with numpy in one buffer.

The layout is PostgreSQL's binary COPY format (``COPY ... FROM STDIN (FORMAT BINARY)``): a
signature, then for each row the field count and each field as a 4-byte length and its bytes
(network order); psycopg adds the trailer. A row is fixed-size for one model name and vector
size, so the rows of each (model, size, quality measured or not) are one numpy record array: no
Python per field, no dumper per vector. pgvector's binary ``vector``: int16 dimensions, int16
unused, float4s. A face without its quality measures (a stand-in) writes them as NULLs (length -1).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from facepass.models import DetectedFace, PhotoResult, PhotoStatus

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
# The table's columns, in the payload's order.
COLUMNS = (
    "session_id",
    "photo_id",
    "face_index",
    "bbox_x1",
    "bbox_y1",
    "bbox_x2",
    "bbox_y2",
    "det_score",
    "embedding",
    "model_name",
    "sharpness",
    "yaw",
)
_FLOATS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "det_score")


_QUALITY = ("sharpness", "yaw")


@cache  # a handful of layouts (one per model name length, vector size and quality or not)
def _row_type(dim: int, name_bytes: int, quality: bool) -> np.dtype[np.void]:
    fields: list[tuple[str, str] | tuple[str, str, tuple[int]]] = [
        ("fields", ">i2"),
        ("session_len", ">i4"),
        ("session_id", "V16"),
        ("photo_len", ">i4"),
        ("photo_id", "V16"),
        ("index_len", ">i4"),
        ("face_index", ">i4"),
    ]
    for name in _FLOATS:
        fields += [(f"{name}_len", ">i4"), (name, ">f8")]
    fields += [
        ("embedding_len", ">i4"),
        ("dim", ">i2"),
        ("unused", ">i2"),
        ("embedding", ">f4", (dim,)),
        ("model_len", ">i4"),
        ("model_name", f"S{name_bytes}"),
    ]
    for name in _QUALITY:  # a NULL is its length -1 and no bytes
        fields += [(f"{name}_len", ">i4"), (name, ">f8")] if quality else [(f"{name}_len", ">i4")]
    return np.dtype(fields)


def faces_rows(results: Sequence[PhotoResult]) -> bytes:
    """The COPY rows (no signature) of every face of ``results``: rows of several batches
    join into one payload."""
    groups: dict[tuple[str, int, bool], list[tuple[PhotoResult, int, DetectedFace]]] = {}
    for result in results:
        if result.status is PhotoStatus.RETRY:  # never written
            continue
        for index, face in enumerate(result.faces):
            measured = face.sharpness is not None and face.yaw is not None
            key = (result.model_name, len(face.embedding), measured)
            groups.setdefault(key, []).append((result, index, face))
    parts: list[bytes] = []
    for (model_name, dim, measured), rows in groups.items():
        name = model_name.encode()
        if not name:
            raise ValueError("a face row needs its model's name")
        table = np.empty(len(rows), dtype=_row_type(dim, len(name), measured))
        table["fields"] = len(COLUMNS)
        table["session_len"] = table["photo_len"] = 16
        table["session_id"] = np.frombuffer(b"".join(r.photo.session_id.bytes for r, _, _ in rows), "V16")
        table["photo_id"] = np.frombuffer(b"".join(r.photo.id.bytes for r, _, _ in rows), "V16")
        table["index_len"] = 4
        table["face_index"] = [index for _, index, _ in rows]
        floats = np.array([(*face.bbox, face.det_score) for _, _, face in rows], dtype=np.float64)
        for column, name_ in enumerate(_FLOATS):
            table[f"{name_}_len"] = 8
            table[name_] = floats[:, column]
        table["embedding_len"] = 4 + 4 * dim
        table["dim"] = dim
        table["unused"] = 0
        table["embedding"] = np.stack([np.asarray(face.embedding, dtype=np.float32) for _, _, face in rows])
        table["model_len"] = len(name)
        table["model_name"] = name
        if measured:
            quality = np.array([(face.sharpness, face.yaw) for _, _, face in rows], dtype=np.float64)
            for column, name_ in enumerate(_QUALITY):
                table[f"{name_}_len"] = 8
                table[name_] = quality[:, column]
        else:
            for name_ in _QUALITY:
                table[f"{name_}_len"] = -1
        parts.append(table.tobytes())
    return b"".join(parts)


def faces_payload(results: Sequence[PhotoResult]) -> bytes:
    """The COPY payload (signature and rows) of every face of ``results``."""
    return SIGNATURE + faces_rows(results)
