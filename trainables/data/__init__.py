"""Data layer: MVTec-layout reader, the embedded dataset, appearance-source textures.

`resolve_data("embedded" | PATH)` is the entry point trainers use; `load_category` decodes
one category once per size. See the submodules for the details.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from trainables.data.embedded import EMBEDDED_CATEGORIES, embedded_root, generate_embedded
from trainables.data.mvtec import (MVTEC_CATEGORIES, CategoryData, category_kind, list_categories,
                                   load_category, load_train, scan_category)
from trainables.data.textures import TextureBank, load_texture_bank

__all__ = ["EMBEDDED_CATEGORIES", "MVTEC_CATEGORIES", "CategoryData", "DataRoot", "TextureBank",
           "category_kind", "embedded_root", "generate_embedded", "list_categories",
           "load_category", "load_texture_bank", "load_train", "resolve_data", "scan_category"]


@dataclass(frozen=True)
class DataRoot:
    path: Path
    dataset: str                   # "embedded" | "mvtec" (any folder in the MVTec layout)
    categories: tuple[str, ...]


def resolve_data(spec: str | os.PathLike) -> DataRoot:
    """`"embedded"` (generated on first use) or a folder in the MVTec AD layout."""
    if str(spec) == "embedded":
        path = embedded_root()
        return DataRoot(path, "embedded", tuple(EMBEDDED_CATEGORIES))
    path = Path(spec).expanduser()
    return DataRoot(path, "mvtec", tuple(list_categories(path)))
