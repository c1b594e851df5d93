"""cinevox: relate fMRI brain activity to naturalistic movies.

A temporal-CNN encoder predicts visual-cortex voxels from 32-frame movie clips, a decoder reconstructs
the clip's middle frame from voxels, and the two are trained end to end (David, Chan et al.).

The Python API (:mod:`cinevox.api`, loaded on first use)::

    import cinevox
    model = cinevox.load_model("runs/encdec")        # a run folder or an exported MODEL_DIR
    img = model.predict_video("film.mp4")        # nibabel 4D image; model.predict_clips(array) -> (n, V)
    frames = model.decode(bold_img, onset=93.84)  # (n, 3, S, S) float32

and every pipeline step as a function with the command line's options as keyword arguments:
``cinevox.simulate``, ``prepare``, ``train``, ``grid``, ``baseline``, ``evaluate``, ``saliency``, ``lesion``,
``concepts``, ``regions``, ``compare``, ``report``, ``export``, ``predict``, ``decode``, ``demo``
(``cinevox.resolve(command, **options)`` shows what a step would be given, without running it).
"""

__version__ = "0.1.0"

_API = ("Model", "baseline", "compare", "concepts", "decode", "demo", "evaluate", "export", "grid", "lesion",
        "load_model", "predict", "prepare", "regions", "report", "resolve", "saliency", "simulate", "train")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The API's names, imported on first use (``import cinevox`` stays light for ``cinevox --version``)."""
    if name in _API:
        from cinevox import api

        return getattr(api, name)
    raise AttributeError(f"module 'cinevox' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
