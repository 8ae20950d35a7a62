"""The trainable stages as torch modules: item tower (two heads), per-head reranker, composite scorer.

Feature tables (genres, year buckets, popularity) are module buffers, so each exported ONNX model takes
item ids and carries its own lookups: the serving graph needs no feature store.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class TowerFeatures:
    """Everything the item tower knows about every item, row = item id (row 0 is padding).

    ``content`` holds the frozen content encoder's embeddings (title, year, genres) by content row, and
    ``content_row`` maps an item to its row, so items that share content (synthetic ones) share a row.
    ``known`` is 1 for items seen often enough in training to trust an id embedding, else 0: such an item is
    served from content and features alone, as it was trained (`ItemTower.forward`'s ``cold``)."""

    genres: torch.Tensor  # [table, G] multi-hot
    year_bucket: torch.Tensor  # [table] 5-year bins, 0 unknown
    dense: torch.Tensor  # [table, 2]: scaled log training popularity, scaled year
    content: torch.Tensor  # [rows, 384] float32
    content_row: torch.Tensor  # [table] int64
    known: torch.Tensor  # [table] float32 in {0, 1}
    # A dataset's own item fields (`widefunnel.dataset.features`): per token / token_seq field a code matrix
    # [table, L] into one shared embedding table of ``field_rows`` rows (0 pads; a token field's OOV bucket is
    # a learned row of its own), and the z-scored floats and float_seq vectors [table, F]. Empty for MovieLens.
    bags: tuple[torch.Tensor, ...] = ()
    floats: torch.Tensor | None = None
    field_rows: int = 0


DENSE = ("popularity", "year")  # the columns of `TowerFeatures.dense`
POPULARITY = DENSE.index("popularity")  # zero for a cold item


class ItemTower(nn.Module):
    """Shared backbone over id, content (projected encoder embedding), genres, year and popularity, then one MLP
    head per task. Used for both sides of item-to-item retrieval: the query item and every candidate item.

    Cold start: an item's id embedding only counts where ``known`` says it was trained on enough pairs; in
    training a share of items is also served "cold" (id embedding and popularity zeroed, as for an item added
    after the build), so content alone must place an item in the space (dropout of id features, as production
    two-tower models do for fresh items)."""

    def __init__(self, features: TowerFeatures, cfg: dict, heads: int = 2):
        super().__init__()
        self.register_buffer("genres", features.genres.float())
        self.register_buffer("year_bucket", features.year_bucket.long())
        self.register_buffer("dense", features.dense.float())
        self.register_buffer("content", features.content.float())
        self.register_buffer("content_row", features.content_row.long())
        self.register_buffer("known", features.known.float())
        self.id_embedding = nn.Embedding(features.genres.shape[0], cfg["id_dim"])
        nn.init.normal_(self.id_embedding.weight, std=0.01)
        self.project = nn.Linear(features.content.shape[1], cfg["content_dim"], bias=False)
        self.genre = nn.Linear(features.genres.shape[1], cfg["genre_dim"], bias=False)
        self.year = nn.Embedding(int(features.year_bucket.max()) + 1, cfg["year_dim"])
        width = cfg["id_dim"] + cfg["content_dim"] + cfg["genre_dim"] + cfg["year_dim"] + features.dense.shape[1]
        field_dim = cfg.get("field_dim", 16)
        floats = 0 if features.floats is None else features.floats.shape[1]
        width += len(features.bags) * field_dim + floats
        self.backbone = mlp([width, *cfg["hidden"]], final_activation=True)
        self.heads = nn.ModuleList(
            mlp([cfg["hidden"][-1], cfg["head_hidden"], cfg["embedding_dim"]]) for _ in range(heads)
        )
        # after every other module: a catalogue without fields of its own initialises exactly as before
        self.fields = len(features.bags)
        for i, bag in enumerate(features.bags):
            self.register_buffer(f"bag_{i}", bag.long())
        if self.fields:
            self.field_embedding = nn.Embedding(features.field_rows, field_dim, padding_idx=0)
            nn.init.normal_(self.field_embedding.weight, std=0.05)
            with torch.no_grad():
                self.field_embedding.weight[0] = 0
        self.has_floats = bool(floats)
        if self.has_floats:
            self.register_buffer("floats", features.floats.float())

    def _fields(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Per field the masked mean of its codes' embeddings (a token field: one code), then the floats. Every
        field's codes are looked up in one call, so a training step's sparse gradient is one tensor, not one
        per field (summing sparse gradients re-copies them each time)."""
        out = []
        if self.fields:
            bags = [getattr(self, f"bag_{i}")[ids] for i in range(self.fields)]  # [B, L_i] each
            codes = torch.cat(bags, dim=1)
            mask = (codes > 0).float().unsqueeze(-1)
            embedded = self.field_embedding(codes) * mask
            for part, weight in zip(embedded.split([b.shape[1] for b in bags], dim=1),
                                    mask.split([b.shape[1] for b in bags], dim=1)):
                out.append(part.sum(1) / weight.sum(1).clamp(min=1.0))
        if self.has_floats:
            out.append(self.floats[ids])
        return out

    def forward(self, ids: torch.Tensor, cold: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``cold`` (bool, like ``ids``; training only): serve these as items never seen in training."""
        warm = self.known[ids]
        dense = self.dense[ids]
        if cold is not None:
            warm = warm * (~cold).float()
            keep = torch.ones_like(dense)
            keep[:, POPULARITY] = (~cold).float()
            dense = dense * keep
        x = torch.cat([self.id_embedding(ids) * warm[:, None], self.project(self.content[self.content_row[ids]]),
                       self.genre(self.genres[ids]), self.year(self.year_bucket[ids]), dense, *self._fields(ids)],
                      dim=-1)
        h = self.backbone(x)
        return tuple(F.normalize(head(h), dim=-1) for head in self.heads)


def set_features(tower: ItemTower, features: TowerFeatures) -> None:
    """Replace the tower's item tables (a catalogue grown after training); the trained weights stay. A dataset's
    own fields are replaced where ``features`` has them (the same fields, in the same order, as the tower's)."""
    for name in ("genres", "year_bucket", "dense", "content", "content_row", "known"):
        old = getattr(tower, name)
        setattr(tower, name, getattr(features, name).to(old.dtype))
    if features.bags:
        if len(features.bags) != tower.fields:
            raise ValueError(f"{len(features.bags)} field tables for a tower of {tower.fields}")
        for i, bag in enumerate(features.bags):
            setattr(tower, f"bag_{i}", bag.long())
    if features.floats is not None and tower.has_floats:
        tower.floats = features.floats.float()


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

    def serve(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``forward``'s scores (to float rounding) the way the serving graph computes them.

        The first layer on [q, c, q*c] is W_q q + W_c c + W_qc (q*c) + b = (W_c + W_qc diag(q)) c + (W_q q + b):
        one [h, d] matrix and one bias per query, applied to the candidates as a batched matmul. Per candidate
        that is d x h multiply-adds instead of 3d x h, with no [B, K, 3d] concatenation (at K = 10,000 the
        expand, product and concat were a quarter of the reranker's time). The layers after it run on
        [B*K, h] rows, where ONNX Runtime fuses each matmul with its bias and ReLU."""
        logits = self._rows(self.body, query, candidates)
        if self.gate is None:
            return logits[..., 0]
        return (torch.softmax(self._rows(self.gate, query, candidates), dim=-1) * logits).sum(-1)

    @staticmethod
    def _rows(net: nn.Sequential, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        first = net[0]
        w_q, w_c, w_qc = first.weight.split(candidates.shape[-1], dim=1)  # each [h, d]
        per_query = w_c.unsqueeze(0) + w_qc.unsqueeze(0) * query.unsqueeze(1)  # [B, h, d]
        bias = query @ w_q.T + first.bias  # [B, h]
        x = torch.bmm(candidates, per_query.transpose(1, 2)) + bias.unsqueeze(1)  # [B, K, h]
        x = net[1:](x.reshape(-1, x.shape[-1]))  # [B*K, out]
        return x.reshape(candidates.shape[0], candidates.shape[1], -1)


class CompositeScorer(nn.Module):
    """Multi-task (engaged, liked, loved) probabilities plus an ordinal relevance head, per (query, item).

    Item features are frozen tower embeddings, genres and popularity, looked up from buffers."""

    def __init__(self, features: torch.Tensor, hidden: list[int], tasks: int, levels: int = 3):
        """``features`` [table, F] ends with the tower's dense columns (`train.scorer_features`)."""
        super().__init__()
        self.register_buffer("features", features.float())
        self.popularity_column = features.shape[1] - len(DENSE) + POPULARITY
        width = 3 * features.shape[1]
        self.body = mlp([width, *hidden], final_activation=True)
        self.tasks = nn.Linear(hidden[-1], tasks)
        self.relevance = nn.Linear(hidden[-1], 1)
        self.first_threshold = nn.Parameter(torch.zeros(()))
        self.gaps = nn.Parameter(torch.zeros(levels - 2))

    def _lookup(self, ids: torch.Tensor, cold: torch.Tensor | None) -> torch.Tensor:
        rows = self.features[ids]
        if cold is None:
            return rows
        keep = torch.ones_like(rows)
        keep[..., self.popularity_column] = (~cold).float()
        return rows * keep

    def forward(self, query: torch.Tensor, candidates: torch.Tensor,
                cold: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B], candidates [B, M] -> task probabilities [B, M, T], P(rel >= j) [B, M, levels - 1].
        ``cold`` (training only): masks like query and candidates whose popularity is hidden, as for a fresh
        item's, so that zero popularity reads "not known yet" rather than "never wanted"."""
        q_cold, c_cold = cold if cold is not None else (None, None)
        return self.score(self._lookup(query, q_cold), self._lookup(candidates, c_cold))

    def score(self, q: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From looked-up feature rows: query [B, F], candidates [B, M, F]."""
        q = q[:, None, :].expand(-1, c.shape[1], -1)
        h = self.body(torch.cat([q, c, q * c], dim=-1))
        cumulative = ordinal_cumulative(self.relevance(h)[..., 0], self.first_threshold, self.gaps)
        return torch.sigmoid(self.tasks(h)), cumulative


def unified_value(task_probs: torch.Tensor, cumulative: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """score = sum_t w_t P_t + w_rel E[rel]; weights [B, T + 1] broadcast over candidates."""
    w = weights[:, None, :]
    return (task_probs * w[..., :-1]).sum(-1) + expected_relevance(cumulative) * w[..., -1]
