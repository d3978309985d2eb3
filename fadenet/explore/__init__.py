"""Chapter 08: predicting users' own pictures, folders and videos, and the interactive explorer."""
from .batch import BatchResult, expand_inputs, predict_paths
from .predictor import AgePredictor, FacePrediction, interval, moments, read_image


def __getattr__(name: str):
    # the explorer needs ipywidgets and grad-cam, whose imports take seconds that the
    # predict command, which imports this package too, would pay for nothing
    if name == "Explorer":
        from .widgets import Explorer
        return Explorer
    if name == "chapter_summary":  # matplotlib, likewise
        from .report import chapter_summary
        return chapter_summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["chapter_summary", "BatchResult", "expand_inputs", "predict_paths", "AgePredictor", "FacePrediction", "interval", "moments", "read_image", "Explorer"]
