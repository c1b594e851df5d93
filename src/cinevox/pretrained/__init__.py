"""Pretrained feature spaces: frozen networks' activations per film, cached, for banded-ridge encoding models.

``backbones`` loads a network (a Hugging Face model id or folder, ``vgg16``, a trained cinevox run) and turns
uint8 frames or clips into pooled activations per layer; ``extract`` samples each prepared film at a fixed rate,
caches the activations per film and layer, and aggregates them to TRs (with an optional PCA fitted on training
TRs) for ``cinevox baseline --features FEATURES_DIR``; ``oracle`` writes the simulator's channel drives as the
same kind of folder (the known truth for variance partitioning).
"""
