"""cinevox: relate fMRI brain activity to naturalistic movies.

A temporal-CNN encoder predicts visual-cortex voxels from 32-frame movie clips, a decoder reconstructs
the clip's middle frame from voxels, and the two are trained end to end (David, Chan et al.).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
