"""The knowledge half: documents -> chunks -> embeddings -> FAISS index + docstore -> Retriever.

No Prefect, no peft: only `components.spec` from this project. The index folder format is
documented in docs/docstore.md and opens with plain `faiss.read_index` and `json`.
"""

import os

# OpenMP threads that spin while waiting turn a busy machine (other processes, or torch in this
# one) into 10x slower FAISS training and search; measured here: IVF-PQ training 6.3 s -> 0.6 s.
# Must be set before libgomp loads, i.e. before the first `import faiss`; an explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from vectorstore.build import build_index, default_cache_dir  # noqa: E402
from vectorstore.chunking import Chunk, chunk_documents, chunk_id_for  # noqa: E402
from vectorstore.convert import CONVERTED_SUFFIXES, ConversionStats, locator_label  # noqa: E402
from vectorstore.docstore import DOCSTORE_FILE, read_docstore  # noqa: E402
from vectorstore.documents import Document, DocumentError, corpus_hash, load_documents  # noqa: E402
from vectorstore.embedder import Embedder, EmbedderError, EmbeddingCache, check_compatible, load_embedder  # noqa: E402
from vectorstore.faiss_index import FLAT_MAX_VECTORS, IndexPlan, RecallError, plan_index  # noqa: E402
from vectorstore.metrics import evaluate_retrieval, read_eval_rows, retrieval_metrics  # noqa: E402
from vectorstore.persist import INDEX_FILE, INFO_FILE, IndexIntegrityError, open_index_dir  # noqa: E402
from vectorstore.retriever import Hit, Retriever  # noqa: E402

__all__ = [
    "CONVERTED_SUFFIXES", "DOCSTORE_FILE", "FLAT_MAX_VECTORS", "INDEX_FILE", "INFO_FILE",
    "Chunk", "ConversionStats", "Document", "DocumentError", "Embedder", "EmbedderError", "EmbeddingCache", "Hit",
    "IndexIntegrityError", "IndexPlan", "RecallError", "Retriever",
    "build_index", "check_compatible", "chunk_documents", "chunk_id_for", "corpus_hash", "default_cache_dir",
    "evaluate_retrieval", "load_documents", "load_embedder", "locator_label", "open_index_dir", "plan_index", "read_docstore",
    "read_eval_rows", "retrieval_metrics",
]
