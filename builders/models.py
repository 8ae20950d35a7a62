"""The trainable stages as torch modules: item tower (two heads), per-head reranker, composite scorer.

Feature tables (genres, year buckets, popularity) are module buffers, so each exported ONNX model takes
item ids and carries its own lookups: the serving graph needs no feature store.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from widefunnel.builders.losses import expected_relevance, ordinal_cumulative


def mlp(sizes: list[int], final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ItemTower(nn.Module):
    """Shared sparse (id, genre, year) + dense (popularity, year) backbone, then one MLP head per task.

    Used for both sides of item-to-item retrieval: the query item and every candidate item."""

    def __init__(self, genres: torch.Tensor, year_bucket: torch.Tensor, dense: torch.Tensor, cfg: dict,
                 heads: int = 2):
        super().__init__()
        self.register_buffer("genres", genres.float())
        self.register_buffer("year_bucket", year_bucket.long())
        self.register_buffer("dense", dense.float())
        size = genres.shape[0]
        self.id_embedding = nn.Embedding(size, cfg["id_dim"])
        nn.init.normal_(self.id_embedding.weight, std=0.01)  # fresh items start near zero: content decides
        self.genre = nn.Linear(genres.shape[1], cfg["genre_dim"], bias=False)
        self.year = nn.Embedding(int(year_bucket.max()) + 1, cfg["year_dim"])
        width = cfg["id_dim"] + cfg["genre_dim"] + cfg["year_dim"] + dense.shape[1]
        self.backbone = mlp([width, *cfg["hidden"]], final_activation=True)
        self.heads = nn.ModuleList(
            mlp([cfg["hidden"][-1], cfg["head_hidden"], cfg["embedding_dim"]]) for _ in range(heads)
        )

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.cat([self.id_embedding(ids), self.genre(self.genres[ids]),
                       self.year(self.year_bucket[ids]), self.dense[ids]], dim=-1)
        h = self.backbone(x)
        return tuple(F.normalize(head(h), dim=-1) for head in self.heads)


class Reranker(nn.Module):
    """Scores (query, candidate) from [q, c, q*c]: one MLP, or a mixture of logits with a learned gate."""

    def __init__(self, dim: int, hidden: list[int], kind: str = "mlp", components: int = 4):
        super().__init__()
        if kind not in ("mlp", "mixture_of_logits"):
            raise ValueError(f"rerank.kind must be 'mlp' or 'mixture_of_logits', got {kind!r}")
        self.kind = kind
        outputs = 1 if kind == "mlp" else components
        self.body = mlp([3 * dim, *hidden, outputs])
        self.gate = mlp([3 * dim, hidden[-1], components]) if kind == "mixture_of_logits" else None

    def forward(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        q = query[:, None, :].expand_as(candidates)
        x = torch.cat([q, candidates, q * candidates], dim=-1)
        logits = self.body(x)
        if self.gate is None:
            return logits[..., 0]
        return (torch.softmax(self.gate(x), dim=-1) * logits).sum(-1)


class CompositeScorer(nn.Module):
    """Multi-task (engaged, liked, loved) probabilities plus an ordinal relevance head, per (query, item).

    Item features are frozen tower embeddings, genres and popularity, looked up from buffers."""

    def __init__(self, features: torch.Tensor, hidden: list[int], tasks: int, levels: int = 3):
        super().__init__()
        self.register_buffer("features", features.float())
        width = 3 * features.shape[1]
        self.body = mlp([width, *hidden], final_activation=True)
        self.tasks = nn.Linear(hidden[-1], tasks)
        self.relevance = nn.Linear(hidden[-1], 1)
        self.first_threshold = nn.Parameter(torch.zeros(()))
        self.gaps = nn.Parameter(torch.zeros(levels - 2))

    def forward(self, query: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B], candidates [B, M] -> task probabilities [B, M, T], P(rel >= j) [B, M, levels - 1]."""
        q = self.features[query][:, None, :].expand(-1, candidates.shape[1], -1)
        c = self.features[candidates]
        h = self.body(torch.cat([q, c, q * c], dim=-1))
        cumulative = ordinal_cumulative(self.relevance(h)[..., 0], self.first_threshold, self.gaps)
        return torch.sigmoid(self.tasks(h)), cumulative


def unified_value(task_probs: torch.Tensor, cumulative: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """score = sum_t w_t P_t + w_rel E[rel]; weights [B, T + 1] broadcast over candidates."""
    w = weights[:, None, :]
    return (task_probs * w[..., :-1]).sum(-1) + expected_relevance(cumulative) * w[..., -1]
