"""A trained model with everything needed to use it on new data: a run folder, or an exported ``MODEL_DIR``.

``MODEL_DIR`` (``cinevox export RUN --out MODEL_DIR``, the layout of models shared on the Hugging Face Hub):

- ``model.safetensors``: the weights (CNN state dict, or the ridge's arrays), read without executing code;
- ``config.json``: kind, architecture sizes, voxel count, frame size, frames per TR, TR, delay, the preparation
  (detrend, z-scoring, frame intensity, sampling, resize), the profile choices, the training and test metrics,
  and the sha256 of every other file;
- ``mask.nii.gz``: the voxels on the prepared grid, valued 1..V in the model's output order (0 elsewhere);
- ``voxel_regions.tsv``: each voxel's AAL region (when an atlas was available at export);
- ``README.md``: the model card.

A ``MODEL_DIR`` is refused, with one line naming the file or field, when ``config.json`` breaks its schema
(:mod:`cinevox.inference.schema`: types, ranges, choices; checked before any other file is read), when a file is
missing, is not in or does not match the sha256 table of ``config.json`` (``voxel_regions.tsv`` included), or does
not fit the configuration (grid, voxel count, voxel order, shapes). The source run is named by its folder name and
its weights' sha256, never by a local path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from cinevox import __version__
from cinevox.configs import model_config_from
from cinevox.data.dataset import PreparedData, voxel_preparation
from cinevox.data.features import FeatureConfig
from cinevox.inference.schema import SchemaError, check_config
from cinevox.models.encdec import build_model
from cinevox.outputs import space_label, write_sidecars
from cinevox.training.ridge import MODEL_FILE, RidgeConfig, is_baseline_run, ridge_config_from_manifest
from cinevox.training.train import load_run_model, run_prepared_dir
from cinevox.utils.device import choose_device
from cinevox.utils.io import atomic_path, read_json, sha256_file, write_json, write_text_atomic
from cinevox.utils.names import upgrade_metrics

logger = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "cinevox-model", 1
KINDS = ("encoder", "decoder", "encdec", "ridge")
MODEL_FILES = ("model.safetensors", "mask.nii.gz")
OPTIONAL_FILES = ("voxel_regions.tsv",)  # in the sha256 table when exported


class ModelDirError(ValueError):
    """A MODEL_DIR that cannot be used; the message names the file."""


@dataclass
class Preparation:
    """How a model's inputs were prepared (from the prepared dataset it was trained on): every choice that shapes
    the voxels (baseline removal, confounds regressed out with their nilearn ``load_confounds`` parameters,
    non-steady-state volumes, the z-scoring window) and the frames; ``film_trs`` (each training film's length in
    TRs) lets decode end a window with a known film."""

    tr: float
    delay_trs: int
    frames_per_tr: int
    frame_size: int
    detrend: str = "mean"
    frame_intensity: str = "raw"
    frame_sampling: str = "timestamp"
    frame_resize: str = "area"
    confounds: dict | None = None  # load_confounds keyword arguments ("strategy" and parameters); None: none
    non_steady_state: str = "drop"  # volumes fMRIPrep marks non-steady-state are left out
    zscore_window: str = "stimulus"  # each run z-scored over its stimulus volumes (the film segment)
    film_trs: dict = field(default_factory=dict)

    @classmethod
    def from_prepared(cls, manifest: dict) -> Preparation:
        c, v = manifest["config"], voxel_preparation(manifest)
        films = manifest.get("films") if isinstance(manifest.get("films"), dict) else {}
        lengths = {f: int(x["n_trs"]) for f, x in films.items()
                   if isinstance(x, dict) and isinstance(x.get("n_trs"), int)}
        return cls(tr=v["tr"], delay_trs=v["delay_trs"], frames_per_tr=int(c["frames_per_tr"]),
                   frame_size=int(c["frame_size"]), detrend=v["detrend"],
                   frame_intensity=c.get("frame_intensity") or "raw",
                   frame_sampling=c.get("frame_sampling") or "timestamp", frame_resize=c.get("frame_resize") or "area",
                   confounds=v["confounds"], non_steady_state=v["non_steady_state"], zscore_window=v["zscore_window"],
                   film_trs=lengths)


@dataclass
class ModelBundle:
    """A loaded model: ``kind``, the network (CNN) or the ridge arrays, its voxels and preparation.

    ``ijk`` (V, 3) are the voxels' grid indices in output order on ``mask``'s grid; ``regions`` (V rows: ``label``,
    ``group``) is None when no atlas was known."""

    kind: str
    source: Path
    checksum: str
    preparation: Preparation
    mask: nib.Nifti1Image
    ijk: np.ndarray
    model: torch.nn.Module | None = None
    ridge: dict | None = None
    ridge_config: RidgeConfig | None = None
    regions: pd.DataFrame | None = None
    info: dict = field(default_factory=dict)
    prepared: Path | None = None  # the prepared dataset (runs only; a MODEL_DIR needs none)

    @property
    def n_voxels(self) -> int:
        return len(self.ijk)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device if self.model is not None else torch.device("cpu")

    @property
    def encoder(self):
        if self.kind == "encoder":
            return self.model
        if self.kind == "encdec":
            return self.model.encoder
        return None

    @property
    def decoder(self):
        if self.kind == "decoder":
            return self.model
        if self.kind == "encdec":
            return self.model.decoder
        return None


def select_viewer(b: ModelBundle, subject: str | None) -> ModelBundle:
    """The bundle predicting for one viewer (``--subject S07``: a ``--target subjects`` model's read-out / input
    layer) or for the average viewer (None / "average": the model as it is). Records it in ``b.info["head"]``."""
    from cinevox.models.subjects import viewer_model

    subjects = (b.info.get("model_config") or {}).get("subjects")
    if subject not in (None, "average") and b.model is None:
        raise ValueError(f"--subject {subject}: {b.source} is a ridge model without per-viewer read-outs")
    if b.model is not None:
        b.model = viewer_model(b.model, subject, subjects, str(b.source))
    b.info["head"] = "average" if subject in (None, "average") or not subjects else \
        f"sub-{subject.removeprefix('sub-')}"
    return b


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` looks like an exported MODEL_DIR (a ``config.json`` of cinevox's format)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_bundle(path: str | Path, device: str | None = None, checkpoint: str = "last",
                trust_checkpoint: bool = False) -> ModelBundle:
    """A run folder (``cinevox train`` or ``cinevox baseline``) or an exported MODEL_DIR, ready to use."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist (give a run folder or an exported MODEL_DIR)")
    if (path / "config.json").is_file() and not (path / "manifest.json").is_file():
        return _load_model_dir(path, device)
    return _load_run(path, device, checkpoint, trust_checkpoint)


def _run_regions(prep_manifest: dict, ijk: np.ndarray, mask: nib.Nifti1Image, atlas: str | None = None,
                 labels: str | None = None, aal_version: str = "3v2") -> pd.DataFrame | None:
    from cinevox.analysis.regions import default_atlas, voxel_regions

    try:
        a, lab = default_atlas(prep_manifest, atlas, labels, aal_version)
        return voxel_regions(ijk, mask.affine, mask.shape, a, lab)[["index", "label", "group"]]
    except (ValueError, OSError) as err:
        if atlas:
            raise
        logger.warning("no region atlas (%s): region tables are left out", " ".join(str(err).split())[:200])
        return None


def _load_run(run: Path, device: str | None, checkpoint: str, trust_checkpoint: bool) -> ModelBundle:
    prepared = run_prepared_dir(run)
    data = PreparedData(prepared)
    prep = Preparation.from_prepared(data.manifest)
    mask, ijk = data.mask_img(), data.voxels_ijk()
    info: dict = {"run": str(run), "prepared": str(prepared),
                  "prepared_profile": data.manifest["config"].get("profile")}
    metrics = run / "eval" / "metrics.json"
    if metrics.is_file():
        info["test_metrics"] = upgrade_metrics(read_json(metrics))
    if is_baseline_run(run):
        man = read_json(run / "manifest.json")
        path = run / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (is {run} a finished `cinevox baseline` run?)")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        info["ridge_manifest"] = {k: man.get(k) for k in ("n_fit_samples", "n_features", "cv", "backend")}
        if man.get("cv_fold") and any(v.get("pca") for v in (man.get("features_pins") or {}).values()):
            raise ValueError(f"{run}: a --cv films fold on --pca features used a PCA refitted on the fold's training "
                             "TRs, not the features folder's; predict and export need a baseline on the prepared split")
        if man.get("features_pins"):  # each features folder's cache key (and PCA) at fit time; predict checks it
            info["ridge_manifest"]["features_pins"] = man["features_pins"]
        return ModelBundle("ridge", run, sha256_file(path), prep, mask, ijk, ridge=arrays,
                           ridge_config=ridge_config_from_manifest(man), info=info, prepared=prepared)
    model, tcfg, mcfg, epoch = load_run_model(run, checkpoint, device, trust_checkpoint)
    path = run / "checkpoints" / (checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt")
    info.update({"model_config": mcfg, "train_config": asdict(tcfg), "epoch": epoch, "checkpoint": path.name})
    return ModelBundle(tcfg.model, run, sha256_file(path), prep, mask, ijk, model=model, info=info,
                       prepared=prepared)


# ------------------------------------------------------------------ export


def _ridge_tensors(arrays: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def export_model(run: str | Path, out: str | Path, checkpoint: str = "last", trust_checkpoint: bool = False,
                 atlas: str | None = None, atlas_labels: str | None = None, aal_version: str = "3v2") -> Path:
    """Write a self-contained MODEL_DIR from a run (CNN or ridge). Returns ``out``."""
    from safetensors.torch import save_file

    from cinevox.utils.folders import check_output_folder, exclusive_folder

    out = Path(out)
    b = load_bundle(run, "cpu", checkpoint, trust_checkpoint)
    data = PreparedData(b.prepared)
    regions = _run_regions(data.manifest, b.ijk, b.mask, atlas, atlas_labels, aal_version)
    check_output_folder(out, ("model.safetensors", "config.json", "mask.nii.gz", "voxel_regions.tsv", "README.md"),
                        "model folder")
    with exclusive_folder(out, "export"):
        tensors = ({k: v.detach().contiguous() for k, v in b.model.state_dict().items()} if b.model is not None
                   else _ridge_tensors(b.ridge))
        with atomic_path(out / "model.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "kind": b.kind})
        order = np.zeros(b.mask.shape[:3], np.int32)
        order[tuple(b.ijk.T)] = np.arange(1, b.n_voxels + 1, dtype=np.int32)
        img = nib.Nifti1Image(order, b.mask.affine)
        code = int(b.mask.header["sform_code"]) or 4
        img.header.set_sform(b.mask.affine, code=code)
        img.header.set_qform(b.mask.affine, code=code)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_intent("label", name="voxel order")
        with atomic_path(out / "mask.nii.gz") as tmp:
            nib.save(img, tmp)
        write_sidecars(out, "MODEL_DIR", sources=[Path(run).resolve().name],  # shared: no local path
                       space=space_label(data.manifest, code))
        files = list(MODEL_FILES)
        if regions is not None:
            tab = regions.assign(voxel=np.arange(b.n_voxels))[["voxel", "index", "label", "group"]]
            write_text_atomic(out / "voxel_regions.tsv", tab.to_csv(sep="\t", index=False))
            files.append("voxel_regions.tsv")
        cfg = _export_config(b, data, files, out)
        write_json(out / "config.json", cfg)
        write_text_atomic(out / "README.md", model_card(cfg))
    logger.info("exported %s (%s, %d voxels) to %s", run, b.kind, b.n_voxels, out)
    return out


def _export_config(b: ModelBundle, data: PreparedData, files: list[str], out: Path) -> dict:
    man = data.manifest
    cfg: dict = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "cinevox_version": __version__, "kind": b.kind,
        "n_voxels": b.n_voxels, "grid_shape": list(b.mask.shape[:3]), "space_code": int(b.mask.header["sform_code"]),
        "preparation": asdict(b.preparation),
        "normalisation": {
            "voxels": f"each run's film segment from {b.preparation.delay_trs} TRs after the film onset: baseline "
                      f"removed ({b.preparation.detrend}), divided by its standard deviation, then averaged over "
                      "the subjects",
            "clips": "uint8 RGB / 255" if b.preparation.frame_intensity == "raw" else "each frame min-max to [0, 1]",
        },
        "profile": {"prepare": man["config"].get("profile"),
                    "choices": {k: man["config"].get(k) for k in ("frame_intensity", "frame_resize", "frame_sampling",
                                                                    "val_mode", "snr_ddof", "snr_film_weight")}},
        "data": {"n_samples": int(len(data.samples)),
                 "split": {s: int((data.samples["split"] == s).sum()) for s in ("train", "val", "test", "gap")},
                 "films": sorted(man["films"]), "subjects": man.get("subjects"),
                 "simulation": bool(man.get("bids_simulation"))},
        "source": {"run": Path(b.source).resolve().name, "checkpoint": b.info.get("checkpoint"),
                   "sha256": b.checksum},
        "sha256": {f: sha256_file(out / f) for f in files},
    }
    if b.model is not None:
        cfg["model_config"] = b.info["model_config"]
        subjects = b.info["model_config"].get("subjects")
        cfg["heads"] = {"average": "the default (the average viewer: the encoder's average read-out, the "
                                   "decoder's average input layer)",
                        "parts": [p for k, p in (("encoder", "encoder read-outs"), ("decoder", "decoder input layers"))
                                  if b.kind in (k, "encdec")],
                        "subjects": list(subjects)} if subjects else None
        cfg["training"] = {k: b.info["train_config"].get(k) for k in ("epochs", "batch_size", "lr", "seed", "profile",
                                                                       "dropout", "loss")}
        cfg["training"]["checkpoint_epoch"] = b.info.get("epoch")
        loss = dict(cfg["training"].get("loss") or {})
        if loss.get("vgg_weights"):  # the file's name, not the exporting machine's path
            loss["vgg_weights"] = Path(loss["vgg_weights"]).name
            cfg["training"]["loss"] = loss
    else:
        rc = b.ridge_config
        cfg["ridge"] = {"features": asdict(rc.features), "delays": list(rc.delays),
                        "spaces": list(rc.features.spaces), **b.info.get("ridge_manifest", {})}
        if rc.pretrained:  # FEATURES_DIR:LAYER bands: predict reads each folder's recorded settings (and its model)
            cfg["ridge"]["pretrained"] = list(rc.pretrained)
    m = b.info.get("test_metrics")
    if m:
        keep = ("r_mean", "r_median", "null_r_mean", "p_shuffle", "p_circular", "p_phase", "null_circular_r_mean",
                "n_perm", "ceiling_mean", "r_over_ceiling", "explainable_ceiling_mean", "r_over_explainable_ceiling",
                "r_mean_informative", "frac_voxels_q05_circular")
        cfg["test_metrics"] = {
            "n_test_samples": m.get("n_test_samples"), "test_films": m.get("test_films"),
            "encoder": {k: v for k, v in (m.get("encoder") or {}).items() if k in keep and not isinstance(v, dict)},
            "decoder": {k: v for k, v in (m.get("decoder") or {}).items()
                        if k in ("ssim_mean", "ssim_median", "null_ssim_mean", "p_shuffle", "mse_mean")},
        }
    return cfg


def model_card(cfg: dict) -> str:
    """The MODEL_DIR's README.md: what the model is, what it was trained on, how well it does, how to use it."""
    kind = {"encoder": "encoder (E): movie clips -> voxels", "decoder": "decoder (D): voxels -> middle frame",
            "encdec": "end-to-end encoder-decoder (encdec)", "ridge": "motion-energy + colour banded ridge (baseline)"}
    p = cfg["preparation"]
    lines = ["---", "library_name: cinevox", "tags:", "- fmri", "- neuroscience", "- brain-encoding",
             "- video", "---", "", f"# cinevox {kind[cfg['kind']]}", "",
             f"A model of {cfg['n_voxels']} visual-cortex voxels, exported by cinevox "
             f"{cfg['cinevox_version']} from the run `{cfg['source']['run']}` (weights sha256 "
             f"`{_source_sha(cfg)[:16]}...`).", "", "## Inputs and outputs", "",
             f"- clips of {p['frames_per_tr']} frames of {p['frame_size']} x {p['frame_size']} RGB per TR of "
             f"{p['tr']} s ({cfg['normalisation']['clips']}; frames {p['frame_sampling']}-sampled, "
             f"{p['frame_resize']} resize);",
             f"- voxels in `mask.nii.gz` (values 1..{cfg['n_voxels']} give the output order; grid "
             f"{' x '.join(map(str, cfg['grid_shape']))}, NIfTI space code {cfg['space_code']}): "
             f"{cfg['normalisation']['voxels']};",
             f"- hemodynamic delay: the response to clip t is the volume {p['delay_trs']} TRs later.", "",
             "## Data", "", f"- films: {', '.join(cfg['data']['films'])}" +
             (" (simulated by `cinevox simulate`)" if cfg["data"]["simulation"] else ""),
             f"- samples: {cfg['data']['n_samples']} TRs ("
             + ", ".join(f"{k} {v}" for k, v in cfg["data"]["split"].items()) + ")", ""]
    heads = cfg.get("heads")
    if heads:
        parts = " and ".join(heads.get("parts") or ["encoder read-outs"])
        cmd = "decode MODEL_DIR scan.nii.gz" if cfg["kind"] == "decoder" else "predict MODEL_DIR film.mp4"
        lines += ["## Read-outs", "", f"- one shared network; per-viewer linear {parts} for "
                  f"{len(heads['subjects'])} viewers ({', '.join(heads['subjects'])}): `cinevox {cmd} --subject "
                  f"{heads['subjects'][0]}`;", "- without `--subject`, the average-viewer head (trained by subject "
                  "dropout): the prediction for a viewer never trained on.", ""]
    m = cfg.get("test_metrics")
    lines += ["## Test metrics", ""]
    if m:
        e, d = m.get("encoder") or {}, m.get("decoder") or {}
        if e:
            lines.append(f"- voxel Pearson r (per-film z-scored): mean {e.get('r_mean', float('nan')):.3f}, median "
                         f"{e.get('r_median', float('nan')):.3f}; shuffled null mean {e.get('null_r_mean', 0):.3f} "
                         f"(p_shuffle {e.get('p_shuffle', float('nan')):.3g}), circular-shift null p_circular "
                         f"{e.get('p_circular', float('nan')):.3g}")
            if e.get("ceiling_mean") is not None:
                lines.append(f"- split-half noise ceiling {e['ceiling_mean']:.3f}; r / ceiling "
                             f"{e.get('r_over_ceiling', float('nan')):.3f}")
        if d:
            lines.append(f"- frame SSIM: mean {d.get('ssim_mean', float('nan')):.3f} (shuffled null "
                         f"{d.get('null_ssim_mean', float('nan')):.3f}, p_shuffle "
                         f"{d.get('p_shuffle', float('nan')):.3g})")
        lines.append(f"- on {m.get('n_test_samples')} test TRs of {', '.join(m.get('test_films') or [])}")
    else:
        lines.append("- not evaluated before export (run `cinevox evaluate RUN` first to record them here)")
    lines += ["", "## Use", "", "```bash", "cinevox predict MODEL_DIR film.mp4 --out predictions/",
              "cinevox decode MODEL_DIR bold.nii.gz --onset 93.84 --out decoded/" if cfg["kind"] in
              ("decoder", "encdec") else "", "```", "", "```python", "import cinevox",
              "model = cinevox.load_model('MODEL_DIR')", "img = model.predict_video('film.mp4')", "```", "",
              "## Intended use and limits", "",
              "- research on visual cortex responses to naturalistic movies; not for clinical or diagnostic use;",
              "- predictions are for the group average of the training subjects, in the training data's space and "
              "normalisation; a new subject, scanner, TR or preprocessing needs a check against held-out data;",
              "- the decoder reconstructs coarse frame layout and colour, not recognisable detail; frame SSIM near "
              "its shuffled null means little is decoded;",
              "- films unlike the training films (animation vs live action, other frame rates) may be out of "
              "distribution.", ""]
    return "\n".join(ln for ln in lines if ln is not None)


def _source_sha(cfg: dict) -> str:
    src = cfg.get("source") or {}
    return str(src.get("sha256") or src.get("checksum") or "")


# ------------------------------------------------------------------ loading a MODEL_DIR


def _load_model_dir(root: Path, device: str | None) -> ModelBundle:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path = root / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as err:
        raise ModelDirError(f"{cfg_path}: not readable JSON ({err})") from err
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ModelDirError(f"{cfg_path}: not a cinevox model configuration (format {cfg.get('format')!r})"
                            if isinstance(cfg, dict) else f"{cfg_path}: not a JSON object")
    if isinstance(cfg.get("format_version"), int) and cfg["format_version"] > FORMAT_VERSION:
        raise ModelDirError(f"{cfg_path}: format version {cfg['format_version']} is newer than this cinevox reads "
                            f"({FORMAT_VERSION}); upgrade cinevox")
    try:
        check_config(cfg)  # every field's type, range and choices, before any other file is read
    except SchemaError as err:
        raise ModelDirError(f"{cfg_path}: {err}") from None
    kind, n_vox, sums = cfg["kind"], cfg["n_voxels"], cfg["sha256"]
    listed = [*MODEL_FILES, *(f for f in OPTIONAL_FILES if f in sums or (root / f).is_file())]
    for f in listed:
        p = root / f
        if not p.is_file():
            raise ModelDirError(f"{p}: missing (a MODEL_DIR holds {', '.join(MODEL_FILES)} and config.json"
                                + (f"; config.json lists {f}" if f in OPTIONAL_FILES else "") + ")")
        if f not in sums:
            raise ModelDirError(f"{p}: not in config.json's sha256 table (added after the export?)")
        if sha256_file(p) != sums[f]:
            raise ModelDirError(f"{p}: does not match its sha256 in config.json (modified, truncated or from another "
                                "export)")
    prep = Preparation(**cfg["preparation"])
    order_img = nib.load(root / "mask.nii.gz")
    grid = cfg.get("grid_shape")
    if grid is not None and list(order_img.shape[:3]) != list(grid):
        raise ModelDirError(f"{cfg_path}: grid_shape {grid} disagrees with mask.nii.gz's grid "
                            f"{list(order_img.shape[:3])}")
    order = np.asarray(order_img.dataobj).astype(np.int64)
    vals = order[order > 0]
    if len(vals) != n_vox:
        raise ModelDirError(f"{cfg_path}: n_voxels {n_vox} disagrees with mask.nii.gz, which holds {len(vals)} "
                            "voxels")
    if not np.array_equal(np.sort(vals), np.arange(1, n_vox + 1)):
        raise ModelDirError(f"{root / 'mask.nii.gz'}: holds {len(vals)} voxels that are not numbered 1..{n_vox} "
                            "once each (n_voxels in config.json)")
    ijk = np.zeros((n_vox, 3), np.int64)
    where = np.argwhere(order > 0)
    ijk[order[tuple(where.T)] - 1] = where
    mask = nib.Nifti1Image((order > 0).astype(np.uint8), order_img.affine, order_img.header)
    try:
        tensors = load_file(str(root / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelDirError(f"{root / 'model.safetensors'}: not a readable safetensors file ({err})") from err
    regions = None
    if (root / "voxel_regions.tsv").is_file():
        regions = pd.read_csv(root / "voxel_regions.tsv", sep="\t")
        if len(regions) != n_vox or not {"index", "label", "group"} <= set(regions.columns):
            raise ModelDirError(f"{root / 'voxel_regions.tsv'}: expected {n_vox} rows with index, label and group "
                                "columns")
        regions = regions[["index", "label", "group"]]
    info = {"model_dir": str(root), "config": cfg, "test_metrics": cfg.get("test_metrics")}
    checksum = sums["model.safetensors"]
    if kind == "ridge":
        rc = cfg["ridge"]
        try:
            feats = FeatureConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in rc["features"].items()})
            if feats.spaces or not rc.get("pretrained"):
                feats.validate()
        except (TypeError, ValueError) as err:
            raise ModelDirError(f"{cfg_path}: ridge.features does not fit ({err})") from None
        rcfg = RidgeConfig(features=feats, delays=tuple(int(d) for d in rc["delays"]),
                           pretrained=tuple(rc.get("pretrained", ())))
        arrays = {k: v.numpy() for k, v in tensors.items()}
        w = arrays.get("weights")
        if w is None or w.ndim != 2 or w.shape[1] != n_vox or "y_mean" not in arrays:
            raise ModelDirError(f"{root / 'model.safetensors'}: ridge weights do not fit {n_vox} voxels")
        return ModelBundle(kind, root, checksum, prep, mask, ijk, ridge=arrays, ridge_config=rcfg, regions=regions,
                           info=info)
    try:
        mcfg = model_config_from(cfg["model_config"])
        if mcfg.kind != kind or mcfg.n_voxels != n_vox or mcfg.n_frames != prep.frames_per_tr or \
                mcfg.frame_size != prep.frame_size:
            raise ModelDirError(f"{cfg_path}: model_config {asdict(mcfg)} does not match kind, n_voxels and "
                                "preparation")
        model = build_model(mcfg)
        model.load_state_dict(tensors)
    except (TypeError, RuntimeError) as err:
        raise ModelDirError(f"{root / 'model.safetensors'}: its weights do not fit config.json "
                            f"({str(err).splitlines()[0]})") from err
    model = model.to(choose_device(device)).eval()
    info["model_config"] = asdict(mcfg)
    return ModelBundle(kind, root, checksum, prep, mask, ijk, model=model, regions=regions, info=info)


def bundle_regions(b: ModelBundle, atlas: str | None = None, atlas_labels: str | None = None,
                   aal_version: str = "3v2") -> pd.DataFrame | None:
    """Per-voxel regions: explicit atlas files, else the MODEL_DIR's table or the run's default atlas."""
    if atlas:
        from cinevox.analysis.regions import voxel_regions

        return voxel_regions(b.ijk, b.mask.affine, b.mask.shape, atlas, atlas_labels)[["index", "label", "group"]]
    if b.regions is not None:
        return b.regions
    if b.prepared is not None:
        return _run_regions(PreparedData(b.prepared).manifest, b.ijk, b.mask, None, None, aal_version)
    return None


def check_checkpoint_kind(b: ModelBundle, need: str) -> None:
    """Refuse a model that lacks the part a command needs (``encoder`` or ``decoder``)."""
    if need == "encoder" and b.kind not in ("encoder", "encdec", "ridge"):
        raise ValueError(f"{b.source}: a {b.kind} model has no encoder; predict needs an E, E-D or ridge model")
    if need == "decoder" and b.kind not in ("decoder", "encdec"):
        raise ValueError(f"{b.source}: a {b.kind} model has no decoder; decode needs a D or E-D model")


__all__ = ["ModelBundle", "ModelDirError", "Preparation", "export_model", "is_model_dir", "load_bundle",
           "model_card"]
