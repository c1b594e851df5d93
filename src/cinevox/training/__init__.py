"""Training: one loop for the encoder (E), the decoder (D) and the end-to-end model (E-D); the paper's grid."""

from cinevox.training.train import NonFiniteLossError, TrainConfig, load_run_model, train

__all__ = ["NonFiniteLossError", "TrainConfig", "load_run_model", "train"]
