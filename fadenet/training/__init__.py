"""Chapter 03: the DLDL-v2 loss, checkpoints and the resumable trainer."""
from .checkpoint import CheckpointError, data_config, load_checkpoint_file, load_model, load_weights, trained_faces
from .loss import DLDLLoss, label_sigma, lds_weights, target_distribution
from .run import Run, load_run
from .trainer import TrainingDiverged, train

__all__ = ["CheckpointError", "data_config", "load_checkpoint_file", "load_model", "load_weights", "trained_faces", "DLDLLoss",
           "label_sigma", "lds_weights", "target_distribution", "Run", "TrainingDiverged", "load_run",
           "train"]
