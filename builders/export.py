"""ONNX export of each learned stage with the tensor names its Triton config declares.

Every exported graph also emits FINGERPRINT (the build's tower fingerprint as int64), so the merge step can
prove that one response was computed by one coherent set of versions.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from widefunnel.arrays import load_table, npy_region
from widefunnel.builders.models import CompositeScorer, ItemTower, Reranker, unified_value
from widefunnel.layout import ONNX_DATA_FILE, fingerprint_hex, fingerprint_int
from widefunnel.tensor_names import Step

OPSET = 17
TABLE_ROWS = 1024  # a buffer this long is a per-item table (`_export`)


def tower_fingerprint(tower: ItemTower) -> str:
    """sha256 over the tower's parameters and buffers: names the embedding space everything else uses."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(memoryview(tensor.detach().cpu().contiguous().numpy()).cast("B"))
    return fingerprint_hex(int(digest.hexdigest()[:16], 16))


def grown_fingerprint(fingerprint: str, tables: list[np.ndarray]) -> str:
    """The fingerprint of a build grown by items (`items add`): sha256 over the build's fingerprint and the new
    items' rows, so a version names its whole embedding space without a pass over the old rows."""
    digest = hashlib.sha256(fingerprint.encode())
    for table in tables:
        digest.update(memoryview(np.ascontiguousarray(table, np.float32)).cast("B"))
    return fingerprint_hex(int(digest.hexdigest()[:16], 16))


def _stamp(like: torch.Tensor, value: int) -> torch.Tensor:
    return torch.zeros_like(like[:, :1], dtype=torch.int64) + value


class Int8Table(nn.Module):
    """A head's item table as its ANN index stores it: int8 codes and a float32 scale per row, and with ``rows``
    each item id's row (`item_rows`; without, rows are ids). Looked up as codes x scale: within half a
    quantisation step (scale / 2 per component) of the float table the index was built from. The build binds the
    ANN step's own files (hard links), so every step that reads a head's table reads one copy."""

    def __init__(self, codes: np.ndarray, scales: np.ndarray, rows: np.ndarray | None = None):
        super().__init__()
        self.register_buffer("codes", torch.from_numpy(np.ascontiguousarray(codes, np.int8)))
        self.register_buffer("scales", torch.from_numpy(np.ascontiguousarray(scales, np.float32)))
        self.by_row = rows is not None
        if self.by_row:
            self.register_buffer("item_rows", torch.from_numpy(np.ascontiguousarray(rows, np.int32)))

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.item_rows[ids] if self.by_row else ids
        return self.codes[rows].to(torch.float32) * self.scales[rows].unsqueeze(-1)


class QueryTowerGraph(nn.Module):
    """The seed's embedding per head, looked up: the build has already run the tower over every item id and the
    ANN index holds the result, so the served graph reads each head's index table (`Int8Table`: d + 8 bytes an
    item, shared with the ANN step) instead of running the tower's network over its per-item inputs."""

    def __init__(self, heads: list[Int8Table], fingerprint: str):
        super().__init__()
        self.fp = fingerprint_int(fingerprint)
        self.heads = nn.ModuleList(heads)

    def forward(self, item_id: torch.Tensor):
        rows = item_id[:, 0]
        return (*(head(rows) for head in self.heads), _stamp(item_id, self.fp))


class RerankGraph(nn.Module):
    """Scores the head's candidates and keeps each seed's best min(KEEP, K), sorted.

    Candidates arrive as ids: the head's item table (the ANN index's int8 codes and scales) is part of the graph,
    so embeddings never cross the step boundary (SilverTorch's resident representations). With ``rows`` (each
    id's row) the table is the index's own arrays in its order, and the build maps the very files the ANN step
    reads; without, ``codes`` and ``scales`` are by id. A batch may mix seeds asking for different KEEP: the
    graph keeps the largest and pads the rest (-1, -inf)."""

    def __init__(self, reranker: Reranker, codes: np.ndarray, scales: np.ndarray, fingerprint: str,
                 rows: np.ndarray | None = None):
        super().__init__()
        self.reranker, self.fp = reranker, fingerprint_int(fingerprint)
        self.table = Int8Table(codes, scales, rows)

    def forward(self, query: torch.Tensor, candidate_id: torch.Tensor, keep: torch.Tensor):
        real = candidate_id >= 0  # the ANN pads short lists with id -1: row 0 (zeros), scored -inf
        emb = self.table(torch.where(real, candidate_id, torch.zeros_like(candidate_id)))
        scores = self.reranker.serve(query, emb)
        scores = torch.where(real, scores, torch.full_like(scores, float("-inf")))
        keep = keep.to(torch.int64)
        k = torch.minimum(keep.max().reshape(1), torch._shape_as_tensor(scores)[1:2])
        top, pos = torch.topk(scores, k[0], dim=1)
        ids = torch.gather(candidate_id, 1, pos)
        within = torch.arange(top.shape[1], dtype=torch.int64).unsqueeze(0) < keep
        ids = torch.where(within, ids, torch.full_like(ids, -1))
        top = torch.where(within, top, torch.full_like(top, float("-inf")))
        return ids, top, _stamp(candidate_id, self.fp)


class ScorerGraph(nn.Module):
    """The composite scorer. With ``heads`` (the heads' index tables, `Int8Table`), the heads' embeddings its
    feature table begins with are read from those (the ANN step's own files, within half a quantisation step
    of the float embeddings it was trained on) and only its remaining columns are its own tables."""

    def __init__(self, scorer: CompositeScorer, fingerprint: str, heads: list[Int8Table] | None = None):
        super().__init__()
        self.scorer, self.fp = scorer, fingerprint_int(fingerprint)
        self.by_head = heads is not None
        if self.by_head:
            self.heads = nn.ModuleList(heads)
            rest = scorer.features[:, sum(head.dim for head in heads):]
            # Columns whose every value is a whole number in 0..255 (a multi-hot) are stored as uint8, exactly:
            # 1 byte an item a column instead of 4; the others stay float32, and the graph restores the order.
            small = ((rest == rest.round()) & (rest >= 0) & (rest <= 255)).all(dim=0)
            order = torch.cat([torch.nonzero(small)[:, 0], torch.nonzero(~small)[:, 0]])
            self.kinds = (bool(small.any()), bool((~small).any()))
            if self.kinds[0]:
                self.register_buffer("rest_uint8", rest[:, small].to(torch.uint8).contiguous())
            if self.kinds[1]:
                self.register_buffer("rest_float", rest[:, ~small].contiguous())
            self.register_buffer("rest_order", torch.argsort(order))

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.by_head:
            return self.scorer.features[ids]
        rest = [self.rest_uint8[ids].to(torch.float32)] if self.kinds[0] else []
        rest += [self.rest_float[ids]] if self.kinds[1] else []
        rest = torch.cat(rest, dim=-1)[..., self.rest_order]
        return torch.cat([*(head(ids) for head in self.heads), rest], dim=-1)

    def forward(self, item_id: torch.Tensor, candidate_id: torch.Tensor, value_weights: torch.Tensor):
        real = candidate_id >= 0  # a pad (-1) is looked up as item 0 and scored -inf, never as the last item
        rows = torch.where(real, candidate_id, torch.zeros_like(candidate_id))
        probs, cumulative = self.scorer.score(self._rows(item_id[:, 0]), self._rows(rows))
        score = unified_value(probs, cumulative, value_weights)
        score = torch.where(real, score, torch.full_like(score, float("-inf")))
        return probs, cumulative, score, _stamp(item_id, self.fp)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], shared: tuple[Path, ...] = (), threshold: int = 64 * 1024) -> None:
    """Exports ``module`` with each per-item table (a buffer of at least ``threshold`` bytes or TABLE_ROWS rows)
    replaced by a small stand-in, then binds the real tables as external data (`bind_tables`): the protobuf never
    holds a table, so a 10M-item graph costs no copy of its tables in memory while it is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A per-item table and the row maps into it go out together (a real row map would index past a stand-in):
    # every buffer of at least TABLE_ROWS rows, or of ``threshold`` bytes.
    tables = {name: buffer for name, buffer in module.named_buffers()
              if buffer.numel() * buffer.element_size() >= threshold or (buffer.dim() and len(buffer) >= TABLE_ROWS)}
    # Stand-ins of R rows, the i-th filled with i + 1: distinct, so the exporter cannot merge two of them, and a
    # stand-in row map points inside the others, so the exporter's trace runs.
    rows = len(tables) + 2
    _set_buffers(module, {name: torch.full((rows, *t.shape[1:]), i + 1, dtype=t.dtype)
                          for i, (name, t) in enumerate(tables.items())})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=OPSET,
                              input_names=inputs, output_names=outputs, dynamic_axes=dynamic)
    finally:
        _set_buffers(module, tables)
    externalize(path)  # the weights of at least 64 KB
    bind_tables(path, {name: table.detach().numpy() for name, table in tables.items()}, shared, stand_in_rows=rows)


def _set_buffers(module: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    for name, tensor in buffers.items():
        owner, _, attr = name.rpartition(".")
        (module.get_submodule(owner) if owner else module)._buffers[attr] = tensor


def bind_tables(path: Path, tables: dict[str, np.ndarray], shared: tuple[Path, ...] = (), stand_in_rows: int = 2
                ) -> None:
    """Points each initializer named in ``tables`` (exported from a ``stand_in_rows``-row stand-in, `_export`) at
    its full table: the bytes of a ``shared`` .npy file beside ``path`` holding the same array (read in place: a
    hard link of another step's table, stored once), else a .npy file of its own beside ``path``
    (`table_file`). Either way each table is one .npy's data, so `items add` grows it by appending rows
    (`grow_graph`). Streams from the arrays: no copy of a table is made."""
    import onnx
    import onnx.numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    found = {t.name: t for t in model.graph.initializer if t.name in tables}
    missing = {name: (stand_in_rows, *tables[name].shape[1:]) for name in set(tables) - set(found)}
    if renamed := [t.name for t in model.graph.initializer if t.name not in found and tuple(t.dims) in missing.values()
                   and len(np.unique(onnx.numpy_helper.to_array(t))) == 1]:
        # a stand-in under another name would serve its R rows instead of the table
        raise ValueError(f"{path.name}: {renamed} look like stand-ins of the tables {sorted(missing)}")
    tables = {name: table for name, table in tables.items() if name in found}  # the others, the graph never reads
    regions = {p: npy_region(p) for p in shared}
    for name, table in tables.items():
        tensor, table = found[name], np.ascontiguousarray(table)
        if tuple(tensor.dims[1:]) != table.shape[1:]:
            raise ValueError(f"{path.name}: table {name} exported as {list(tensor.dims)}, is {list(table.shape)}")
        del tensor.dims[:]
        tensor.dims.extend(table.shape)
        same = next((p for p, (_, length) in regions.items() if length == table.nbytes and _equal(p, table)), None)
        if same is None:
            same = path.with_name(table_file(name))
            with open(same, "wb") as out:
                np.save(out, table, allow_pickle=False)
            regions[same] = npy_region(same)
        _point(tensor, same.name, regions.pop(same)[0], table.nbytes)
    onnx.save_model(model, str(path))


def table_file(initializer: str) -> str:
    """The .npy file beside a graph that holds its per-item table ``initializer`` (one not shared with a step)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", initializer) + ".npy"


def grow_graph(source: Path, target: Path, fingerprint: str, old_fingerprint: str) -> None:
    """Writes ``target`` (a graph in a version folder that grew its tables, `arrays.append_rows`) as the graph
    ``source`` with each per-item table (an initializer read from a .npy file) as long as ``target``'s folder
    reads that file (`arrays.load_table`), and ``old_fingerprint``'s stamp replaced by ``fingerprint``. The
    weights are ``source``'s: ``target``'s folder holds a link of its `layout.ONNX_DATA_FILE`, if it has one."""
    import onnx
    import onnx.numpy_helper

    model = onnx.load(str(source), load_external_data=False)
    old, new = fingerprint_int(old_fingerprint), fingerprint_int(fingerprint)
    for tensor in model.graph.initializer:
        where = {e.key: e.value for e in tensor.external_data}
        if tensor.data_location == onnx.TensorProto.EXTERNAL and where.get("location", "").endswith(".npy"):
            table = load_table(target.with_name(where["location"]))
            if tuple(tensor.dims[1:]) != table.shape[1:]:
                raise ValueError(f"{target}: {tensor.name} has rows of {list(tensor.dims[1:])}, its file "
                                 f"{list(table.shape[1:])}")
            tensor.dims[0] = len(table)
            _point(tensor, where["location"], int(where["offset"]), table.nbytes)
    stamps = [n.attribute[0].t for n in model.graph.node if n.op_type == "Constant" and n.attribute
              and n.attribute[0].HasField("t")] + [t for t in model.graph.initializer if not t.external_data]
    replaced = 0
    for tensor in stamps:
        if tensor.data_type == onnx.TensorProto.INT64 and tensor.dims in ([], [1]):
            value = onnx.numpy_helper.to_array(tensor)
            if int(value.reshape(-1)[0]) == old:
                tensor.CopyFrom(onnx.numpy_helper.from_array(np.full_like(value, new), tensor.name))
                replaced += 1
    if replaced != 1:
        raise ValueError(f"{source}: {replaced} fingerprint stamps {old_fingerprint} found, expected one")
    onnx.save_model(model, str(target))


def _equal(path: Path, table: np.ndarray) -> bool:
    stored = np.load(path, mmap_mode="r")
    return stored.dtype == table.dtype and stored.shape == table.shape and np.array_equal(stored, table)


def externalize(path: Path, threshold: int = 64 * 1024, align: int = 4096) -> None:
    """Moves every table of ``path`` of at least ``threshold`` bytes out of the protobuf into one file beside it
    (`layout.ONNX_DATA_FILE`, ONNX external data, each table at a page-aligned offset). Protobuf stops at 2 GB;
    external data does not, and ONNX Runtime maps it read-only, so the page cache holds one copy however many
    processes serve it (instances, steps, two versions during a swap). Files torch wrote for a graph past 2 GB
    are folded into that one file and removed. (A table shared with another step is bound by `bind_tables`.)"""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    scattered = {entry.value for t in model.graph.initializer for entry in t.external_data if entry.key == "location"}
    onnx.load_external_data_for_model(model, str(path.parent))  # what torch wrote outside, if anything
    data_path = path.with_name(ONNX_DATA_FILE)
    tmp = data_path.with_name(f".{data_path.name}.tmp")
    offset = 0
    with open(tmp, "wb") as out:
        for tensor in model.graph.initializer:
            raw = tensor.raw_data
            if len(raw) < threshold:
                continue
            pad = -offset % align
            out.write(b"\0" * pad)
            offset += pad
            out.write(raw)
            _point(tensor, ONNX_DATA_FILE, offset, len(raw))
            offset += len(raw)
    if offset == 0:
        tmp.unlink()
    else:
        tmp.replace(data_path)
    onnx.save_model(model, str(path))
    for name in scattered - {ONNX_DATA_FILE}:
        (path.parent / name).unlink(missing_ok=True)


def export_query_tower(heads: list[Int8Table], fingerprint: str, path: Path, shared: tuple[Path, ...] = ()
                       ) -> None:
    """``heads``: each head's index table (`Int8Table`); ``shared``: .npy files beside ``path`` holding its arrays
    (hard links of the ANN step's: read in place)."""
    _export(QueryTowerGraph(heads, fingerprint), (torch.ones(2, 1, dtype=torch.int64),), path,
            [Step.ITEM_ID], [*Step.EMBEDDINGS, Step.FINGERPRINT],
            {n: {0: "batch"} for n in (Step.ITEM_ID, *Step.EMBEDDINGS, Step.FINGERPRINT)}, shared)


def export_reranker(reranker: Reranker, codes: np.ndarray, scales: np.ndarray, fingerprint: str,
                    path: Path, rows: np.ndarray | None = None, shared: tuple[Path, ...] = ()) -> None:
    """``codes`` int8 [n, d] and ``scales`` float32 [n]: the head's item table, by id (`item_table`) or, with
    ``rows`` (`item_rows`), the index's own. ``shared``: .npy files beside ``path`` holding some of these tables
    (hard links of the index's): the graph reads them in place instead of a copy."""
    dim = codes.shape[1]
    args = (torch.randn(2, dim), torch.ones(2, 5, dtype=torch.int64), torch.full((2, 1), 3, dtype=torch.int32))
    _export(RerankGraph(reranker, codes, scales, fingerprint, rows), args, path,
            [Step.QUERY, Step.CANDIDATE_ID, Step.KEEP], [Step.RERANK_ID, Step.RERANK_SCORE, Step.FINGERPRINT],
            {Step.QUERY: {0: "batch"}, Step.CANDIDATE_ID: {0: "batch", 1: "k"}, Step.KEEP: {0: "batch"},
             Step.RERANK_ID: {0: "batch", 1: "m"}, Step.RERANK_SCORE: {0: "batch", 1: "m"},
             Step.FINGERPRINT: {0: "batch"}}, shared)


def export_scorer(scorer: CompositeScorer, tasks: int, fingerprint: str, path: Path,
                  heads: list[Int8Table] | None = None, shared: tuple[Path, ...] = ()) -> None:
    """``heads`` and ``shared``: the heads' index tables its features begin with (`ScorerGraph`), and .npy files
    beside ``path`` that hold their arrays (hard links of the ANN step's): read in place, stored once."""
    args = (torch.ones(2, 1, dtype=torch.int64), torch.ones(2, 5, dtype=torch.int64), torch.ones(2, tasks + 1))
    _export(ScorerGraph(scorer, fingerprint, heads), args, path,
            [Step.ITEM_ID, Step.CANDIDATE_ID, Step.VALUE_WEIGHTS],
            [Step.TASK_PROBS, Step.RELEVANCE_PROBS, Step.SCORE, Step.FINGERPRINT],
            {Step.ITEM_ID: {0: "batch"}, Step.CANDIDATE_ID: {0: "batch", 1: "m"}, Step.VALUE_WEIGHTS: {0: "batch"},
             Step.TASK_PROBS: {0: "batch", 1: "m"}, Step.RELEVANCE_PROBS: {0: "batch", 1: "m"},
             Step.SCORE: {0: "batch", 1: "m"}, Step.FINGERPRINT: {0: "batch"}}, shared)


def _point(tensor, location: str, offset: int, length: int) -> None:
    """Makes ``tensor`` ONNX external data: ``length`` bytes at ``offset`` of the file ``location`` beside the graph."""
    from onnx import TensorProto

    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


def onnx_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
