"""Chapter 01: dataset sources, preprocessing cache, split protocols and the training input pipeline."""
from .cache import FaceSet, prepare
from .sources import DatasetError, NUM_AGES
from .splits import Split, SplitError, load_split

__all__ = ["FaceSet", "prepare", "DatasetError", "NUM_AGES", "Split", "SplitError", "load_split"]
