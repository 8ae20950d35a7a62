"""ANN stage core: int8 item index, exact batch-invariant int8 search, IVF, and a Triton GPU kernel."""

from widefunnel.ann.index import IndexLoadError, Int8Index, IvfLists, build_index, load_index, save_index
from widefunnel.ann.ivf import ivf_search
from widefunnel.ann.quantize import dequantize_rows, quantize_rows
from widefunnel.ann.search import exact_search, invalid_query_rows, prepare_index

# ``search`` (the dispatcher) lives in ``widefunnel.ann.query``.


__all__ = [
    "IndexLoadError",
    "Int8Index",
    "IvfLists",
    "build_index",
    "dequantize_rows",
    "exact_search",
    "invalid_query_rows",
    "ivf_search",
    "load_index",
    "prepare_index",
    "quantize_rows",
    "save_index",
]
