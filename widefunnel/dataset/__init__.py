"""The dataset layer: a pure, vectorised reader of a catalogue and its interaction log.

A dataset is a folder of RecBole atomic files (`<name>.item`, `<name>.inter`) or the same two tables as Parquet;
`load_dataset` checks it whole (refusing with file, line and field) and returns typed, row-indexed columns that
the towers, the tasks and the filters build on. MovieLens-100K loads through the same path (`movielens.py`).
"""

from widefunnel.dataset.columns import Column, FloatColumn, FloatSeqColumn, TokenColumn, TokenSeqColumn
from widefunnel.dataset.config import DatasetConfig
from widefunnel.dataset.errors import DatasetConfigError, DatasetError
from widefunnel.dataset.ids import IdIndex
from widefunnel.dataset.schema import ROLES, Field, Kind, Schema
from widefunnel.dataset.table import Dataset, Interactions, Items, load_dataset

__all__ = ["ROLES", "Column", "Dataset", "DatasetConfig", "DatasetConfigError", "DatasetError", "Field",
           "FloatColumn", "FloatSeqColumn", "IdIndex", "Interactions", "Items", "Kind", "Schema", "TokenColumn",
           "TokenSeqColumn", "load_dataset"]
