"""ONNX export of each learned stage with the tensor names its Triton config declares.

Every exported graph also emits FINGERPRINT (the build's tower fingerprint as int64), so the merge step can
prove that one response was computed by one coherent set of versions.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from widefunnel.builders.models import CompositeScorer, ItemTower, Reranker, unified_value

OPSET = 17


def tower_fingerprint(tower: ItemTower) -> str:
    """sha256 over the tower's parameters and buffers: names the embedding space everything else uses."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{int(digest.hexdigest()[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF:016x}"


def fingerprint_int(fingerprint: str) -> int:
    """The 16-hex fingerprint as a non-negative int64 (top bit dropped)."""
    return int(fingerprint, 16) & 0x7FFF_FFFF_FFFF_FFFF


def _stamp(like: torch.Tensor, value: int) -> torch.Tensor:
    return torch.zeros_like(like[:, :1], dtype=torch.int64) + value


class QueryTowerGraph(nn.Module):
    def __init__(self, tower: ItemTower, fingerprint: str):
        super().__init__()
        self.tower, self.fp = tower, fingerprint_int(fingerprint)

    def forward(self, item_id: torch.Tensor):
        eng, rel = self.tower(item_id[:, 0])
        return eng, rel, _stamp(item_id, self.fp)


class RerankGraph(nn.Module):
    """Scores the head's K candidates and keeps the best min(M, K), sorted."""

    def __init__(self, reranker: Reranker, keep: int, fingerprint: str):
        super().__init__()
        self.reranker, self.keep, self.fp = reranker, keep, fingerprint_int(fingerprint)

    def forward(self, query: torch.Tensor, candidate_id: torch.Tensor, candidate_emb: torch.Tensor):
        scores = self.reranker(query, candidate_emb)
        # the ANN pads short lists with id -1 (zero embedding): a pad must never outrank a real candidate
        scores = torch.where(candidate_id >= 0, scores, torch.full_like(scores, float("-inf")))
        k = torch.clamp(torch._shape_as_tensor(scores)[1], max=self.keep)
        top, pos = torch.topk(scores, k, dim=1)
        return torch.gather(candidate_id, 1, pos), top, _stamp(candidate_id, self.fp)


class ScorerGraph(nn.Module):
    def __init__(self, scorer: CompositeScorer, fingerprint: str):
        super().__init__()
        self.scorer, self.fp = scorer, fingerprint_int(fingerprint)

    def forward(self, item_id: torch.Tensor, candidate_id: torch.Tensor, value_weights: torch.Tensor):
        real = candidate_id >= 0  # a pad (-1) is looked up as item 0 and scored -inf, never as the last item
        probs, cumulative = self.scorer(item_id[:, 0], torch.where(real, candidate_id, torch.zeros_like(candidate_id)))
        score = unified_value(probs, cumulative, value_weights)
        score = torch.where(real, score, torch.full_like(score, float("-inf")))
        return probs, cumulative, score, _stamp(item_id, self.fp)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=inputs, output_names=outputs, dynamic_axes=dynamic)


def export_query_tower(tower: ItemTower, fingerprint: str, path: Path) -> None:
    _export(QueryTowerGraph(tower, fingerprint), (torch.ones(2, 1, dtype=torch.int64),), path,
            ["ITEM_ID"], ["EMB_ENGAGEMENT", "EMB_RELEVANCE", "FINGERPRINT"],
            {n: {0: "batch"} for n in ("ITEM_ID", "EMB_ENGAGEMENT", "EMB_RELEVANCE", "FINGERPRINT")})


def export_reranker(reranker: Reranker, keep: int, dim: int, fingerprint: str, path: Path) -> None:
    args = (torch.randn(2, dim), torch.ones(2, 5, dtype=torch.int64), torch.randn(2, 5, dim))
    _export(RerankGraph(reranker, keep, fingerprint), args, path,
            ["QUERY", "CANDIDATE_ID", "CANDIDATE_EMB"], ["RERANK_ID", "RERANK_SCORE", "FINGERPRINT"],
            {"QUERY": {0: "batch"}, "CANDIDATE_ID": {0: "batch", 1: "k"}, "CANDIDATE_EMB": {0: "batch", 1: "k"},
             "RERANK_ID": {0: "batch", 1: "m"}, "RERANK_SCORE": {0: "batch", 1: "m"}, "FINGERPRINT": {0: "batch"}})


def export_scorer(scorer: CompositeScorer, tasks: int, fingerprint: str, path: Path) -> None:
    args = (torch.ones(2, 1, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64), torch.ones(2, tasks + 1))
    _export(ScorerGraph(scorer, fingerprint), args, path,
            ["ITEM_ID", "CANDIDATE_ID", "VALUE_WEIGHTS"], ["TASK_PROBS", "RELEVANCE_PROBS", "SCORE", "FINGERPRINT"],
            {"ITEM_ID": {0: "batch"}, "CANDIDATE_ID": {0: "batch", 1: "m"}, "VALUE_WEIGHTS": {0: "batch"},
             "TASK_PROBS": {0: "batch", 1: "m"}, "RELEVANCE_PROBS": {0: "batch", 1: "m"}, "SCORE": {0: "batch", 1: "m"},
             "FINGERPRINT": {0: "batch"}})


def onnx_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
