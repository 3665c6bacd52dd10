"""Thin Ray shells around the core: embedding actors, the index writer, the pool."""

from actors.embedding import EmbeddingActor
from actors.pool import EmbeddingPool
from actors.writer import IndexWriter

__all__ = ["EmbeddingActor", "EmbeddingPool", "IndexWriter"]
