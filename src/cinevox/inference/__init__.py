"""Using a trained model on new data: load a run or an exported MODEL_DIR, predict brain responses to any video,
decode frames from any scan in the run's space, export a self-contained model folder."""

from cinevox.inference.bundle import ModelBundle, ModelDirError, export_model, is_model_dir, load_bundle

__all__ = ["ModelBundle", "ModelDirError", "export_model", "is_model_dir", "load_bundle"]
