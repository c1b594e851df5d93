"""The table of every file cinevox writes: what it holds, its shape and axes, dtype, units, row order and, for
tables, what each column means. ``docs/outputs.md`` is generated from it (:func:`markdown`), the JSON sidecar of
every NIfTI map is built from it (:func:`sidecar`), and ``tests/test_outputs.py`` runs the tiny pipeline and fails
on any written file or column it does not describe.

Adding a row (keep it simple, one call per file)::

    Out("evaluate", "RUN_DIR/eval", "voxel_r.nii.gz", "per-voxel Pearson r over all test TRs",
        shape="(X, Y, Z) on the prepared grid", dtype="float32", units="Pearson r",
        stat={"Statistic": "Pearson r", "Null": "...", "Correction": "none"}),

- ``step``: the command that writes the file (``cinevox <step>``);
- ``folder``: where, as the user names it (``BIDS_DIR``, ``PREPARED``, ``RUN_DIR``, ``RUN_DIR/eval``, ``OUT``...);
- ``path``: relative to ``folder``; ``{name}`` stands for one name that varies (a film, a concept, a layer, a
  subject...), matched as one path component or part of one; ``{path}`` for any path below (a folder of another
  step's outputs);
- ``what``: one sentence; then, where they apply, ``shape`` (axes in order), ``dtype``, ``units``, ``rows``
  (the order of rows, or of the first axis), ``columns`` (``{column: meaning}``, names may hold ``{name}``);
- ``stat``: NIfTI maps only: ``Statistic``, ``Null``, ``Correction`` (and anything else the sidecar should carry);
- ``intent``: NIfTI only: ``(nibabel intent code name, intent_name)`` written in the header.

Files that live beside an output but are not one (``.cinevox.lock``, ``.cinevox.lock.json``: the writer's lock)
are in :data:`IGNORED`. This module is imported by writers of every layer: no torch, scipy or pandas here.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: names that are not outputs: the folder lock and its holder's record, matplotlib's caches
IGNORED = (".cinevox.lock", ".cinevox.lock.json")


@dataclass(frozen=True)
class Out:
    step: str
    folder: str
    path: str
    what: str
    shape: str = ""
    dtype: str = ""
    units: str = ""
    rows: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    stat: dict[str, str] | None = None
    intent: tuple[str, str] | None = None

    def matches(self, relpath: str) -> bool:
        return _pattern(self.path, "[^/]+").fullmatch(relpath) is not None

    def column_meaning(self, column: str) -> str | None:
        for name, meaning in self.columns.items():
            if _pattern(name, ".+").fullmatch(column):
                return meaning
        return None


def _pattern(template: str, wildcard: str) -> re.Pattern:
    parts = re.split(r"(\{[a-z_]+\})", template)
    return re.compile("".join((".+" if p == "{path}" else wildcard) if p.startswith("{") and p.endswith("}")
                              else re.escape(p) for p in parts))


# ------------------------------------------------------------------ shared descriptions
_MANIFEST = ("the step's record: resolved config, inputs read (paths relative to the dataset where inside it, "
             "sizes, mtimes), library versions, and for prepared data an integrity record of every output")
_DD = ("BIDS-derivatives description: Name, BIDSVersion, DatasetType `derivative`, GeneratedBy (cinevox, its "
       "version, the command), SourceDatasets")
_SIDECAR = ("JSON sidecar of `{stem}.nii.gz`: Description, Statistic, Null, Correction, Units, Space, Sources (the "
            "run or data it came from), GeneratedBy; built from this table")
_GRID = "(X, Y, Z) on the prepared BOLD grid (affine and sform of the BOLD runs), zero outside the mask"
_VOX = "one row per voxel, in the order of `voxels_ijk.npy` (C order of the mask's nonzero voxels)"
_REGION_COLS = {
    "region": "atlas region (full label, or the paper's group: Calc., Cun., Fusi., Oc.I., Oc.M., Oc.S., Ling., "
              "Temp., Other; `unlabelled` for voxels outside every labelled region)",
    "A": "voxels of the mask in the region (Table II column A)",
    "B": "salient voxels (top fraction) in the region (Table II column B)",
    "A_pct_of_mask": "A as a percentage of the mask's voxels",
    "B_pct_of_salient": "B as a percentage of all salient voxels",
    "B_over_A_pct": "B / A in percent: how enriched the region is in salient voxels",
}
_LESION_SCORE = {
    "{score}_drop": "score: ssim, corr (frame-pixel Pearson r) or ident (pairwise identification, chance 0.5). "
                    "Mean over test frames of the intact minus the lesioned reconstruction's score (positive: the "
                    "lesion hurts)",
    "{score}_drop_ci_low": "lower end of the 95 % interval of the drop: studentized block bootstrap of the test TRs "
                           "within films (stats.block_bootstrap_t_interval)",
    "{score}_drop_ci_high": "upper end of the same interval",
    "{score}_null_mean": "mean drop over lesions of random voxel sets of the same size",
    "{score}_null_sd": "standard deviation of those random-set drops (ddof 1)",
    "{score}_z": "(drop - null mean) / null sd",
    "{score}_null_percentile": "percentage of random-set drops below the drop",
    "{score}_p_value": "(k + 1) / (n + 1), k random-set drops at least the drop (one-sided)",
}

OUTPUTS: list[Out] = [
    # ------------------------------------------------------------------ simulate
    Out("simulate", "BIDS_DIR", "dataset_description.json", "the raw simulated dataset's BIDS description"),
    Out("simulate", "BIDS_DIR", "participants.tsv", "simulated participants", rows="one per subject",
        columns={"participant_id": "`sub-` and the subject label", "age": "years (random)",
                 "sex": "F or M (random)"}),
    Out("simulate", "BIDS_DIR", "sub-{sub}/sub-{sub}_sessions.tsv", "sessions of a subject", rows="one per session",
        columns={"session_id": "`ses-` and the session label"}),
    Out("simulate", "BIDS_DIR", "sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-{film}_bold.json",
        "raw BOLD sidecar as in ds004892 (RepetitionTime in s, TaskName); the raw BOLD itself is not simulated"),
    Out("simulate", "BIDS_DIR", "sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-scan_acq-{film}_events.tsv",
        "film timing in the run (Emo-FilM's layout)", rows="rest, film, rest in time order",
        columns={"onset": "s from the run's first volume", "duration": "s", "trial_type": "rest or film"}),
    Out("simulate", "BIDS_DIR", "sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-scan_acq-{film}_events.json",
        "events sidecar: trial_type's Name (the film) and Description"),
    Out("simulate", "BIDS_DIR", "stimuli/{film}.mp4", "the rendered film (H.264), frames of the simulator's scenes"),
    Out("simulate", "BIDS_DIR",
        "derivatives/preprocessing/sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-{film}_space-MNI_desc-ppres_bold.nii.gz",
        "simulated preprocessed BOLD: baseline + scale x (gain x amplitude x signal + AR(1) noise + drift)",
        shape="(X, Y, Z, n_volumes), volumes every TR from the run's start", dtype="float32",
        units="arbitrary scanner units (baseline about 1000); xyzt units mm, s"),
    Out("simulate", "BIDS_DIR",
        "derivatives/preprocessing/sub-{sub}/ses-{ses}/func/sub-{sub}_ses-{ses}_task-{film}_space-MNI_desc-ppres_bold.json",
        "BOLD sidecar: RepetitionTime (s), SkullStripped, description of the generative model"),
    Out("simulate", "BIDS_DIR", "derivatives/simulation/dataset_description.json", _DD),
    Out("simulate", "BIDS_DIR", "derivatives/simulation/truth.json",
        "the ground truth: config, seed, delay in TRs, tuning channels, per-film timing (onset, run TRs, film "
        "segment, viewers, render order), subject gains, mean ceilings, grid, per-region tuning summary"),
    Out("simulate", "BIDS_DIR", "derivatives/simulation/tuning.npz",
        "per visual voxel (C order of visual_mask.nii.gz): weights (V, 9) over channels, prf (V, 3) x, y, sd in "
        "frame units, amplitude (V,), label (V,) region, family (V,), informative (V,) bool, visual_share (V,), "
        "channels (9,) names"),
    Out("simulate", "BIDS_DIR", "derivatives/simulation/tuning_sub-{sub}.npz",
        "with --subject-variability F > 0: one viewer's tuning, the keys of tuning.npz, its `weights` = the shared "
        "weights + F x the viewer-specific part"),
    Out("simulate", "BIDS_DIR", "derivatives/simulation/signal_sub-{sub}/{film}.npy",
        "with --subject-variability F > 0: one viewer's own shared-signal time course (its tuning)",
        shape="(n_trs, V_visual)", dtype="float32", units="z-like (unit variance before gains)",
        rows="film TRs in time order"),
    Out("simulate", "BIDS_DIR", "derivatives/simulation/signal/{film}.npy",
        "the shared (subject-independent) signal of the film's TRs, the delayed response included",
        shape="(n_trs, V_visual)", dtype="float32", units="z-like (unit variance before gains)",
        rows="film TRs in time order"),
    Out("simulate", "BIDS_DIR", "derivatives/simulation/stimulus_signal/{film}.npy",
        "the stimulus-driven part of the signal (zero at true null voxels)", shape="(n_trs, V_visual)",
        dtype="float32", rows="film TRs in time order"),
    Out("simulate", "BIDS_DIR", "derivatives/simulation/annotations/{film}.tsv",
        "per-frame annotations of the rendered film (the concepts' ground truth)", rows="one per film frame",
        columns={"frame": "frame index", "onset": "s from the film start", "{concept}": "the concept's amount in "
                 "the frame (objects, faces, motion, luminance...: 0-1, or a count)"}),
    *[Out("simulate", "BIDS_DIR", f"derivatives/simulation/{name}.nii.gz", what, shape="(X, Y, Z) simulation grid",
          dtype=dt, units=u, stat=st, intent=it)
      for name, what, dt, u, st, it in (
          ("noise_ceiling", "the true noise ceiling: corr(shared signal, the subjects' z-scored average), "
           "averaged over films weighted by their TRs", "float32", "Pearson r",
           {"Statistic": "true noise ceiling (analytic)"}, ("estimate", "ceiling r")),
          ("explainable_ceiling", "the best r any function of the film can reach: noise ceiling x "
           "corr(stimulus-driven part, shared signal)", "float32", "Pearson r",
           {"Statistic": "explainable ceiling (analytic)"}, ("estimate", "expl ceiling r")),
          ("informative", "planted frame-informative voxels (1) vs mostly non-visual (0)", "uint8", "binary", None,
           None),
          ("snr", "true signal-to-noise ratio: amplitude squared", "float32", "variance ratio",
           {"Statistic": "true SNR"}, ("estimate", "SNR")),
          ("visual_mask", "the simulated visual voxels", "uint8", "binary", None, None),
          ("atlas", "parcellation used as prepare's atlas (Schaefer-like labels)", "int16",
           "label index (atlas_labels.tsv)", None, ("label", "parcels")),
          ("regions", "AAL3-like regions of the visual voxels (saliency, lesion and concepts tables)", "int16",
           "label index (regions.tsv)", None, ("label", "regions")),
          ("null_voxels", "true null voxels: no stimulus-driven response at all", "uint8", "binary", None, None))],
    *[Out("simulate", "BIDS_DIR", f"derivatives/simulation/{name}.json", _SIDECAR.replace("{stem}", name))
      for name in ("noise_ceiling", "explainable_ceiling", "informative", "snr", "visual_mask", "atlas", "regions",
                   "null_voxels")],
    Out("simulate", "BIDS_DIR", "derivatives/simulation/atlas_labels.tsv", "labels of atlas.nii.gz",
        rows="by index", columns={"index": "label value in atlas.nii.gz", "name": "parcel name"}),
    Out("simulate", "BIDS_DIR", "derivatives/simulation/regions.tsv", "labels of regions.nii.gz (AAL3 names)",
        rows="by index", columns={"index": "label value in regions.nii.gz", "label": "AAL3 name and index"}),

    # ------------------------------------------------------------------ prepare
    Out("prepare", "PREPARED", "manifest.json", _MANIFEST + "; `heldout_film` and `bold` (derivatives folder, "
        "space, desc, res actually read) are the values used"),
    Out("prepare", "PREPARED", "dataset_description.json", _DD),
    Out("prepare", "PREPARED", "voxels.npy", "each sample's BOLD: per-film z-scored, averaged over each subject's "
        "repeats then over subjects, delayed by delay_trs", shape="(n_samples, V)", dtype="float32",
        units="z (per film and voxel)", rows="samples.csv's order (sample index)"),
    Out("prepare", "PREPARED", "subjects_test.npy", "the test samples' BOLD of every subject (noise ceilings)",
        shape="(n_subjects, n_test, V)", dtype="float32", units="z (per film and voxel)",
        rows="subjects sorted; test samples in samples.csv's order"),
    Out("prepare", "PREPARED", "subjects.npy", "every viewer's series of every sample (per-film z-scored, repeats "
        "averaged, delayed like voxels.npy; its NaN-mean over viewers is voxels.npy)",
        shape="(n_subjects, n_samples, V)", dtype="float32", units="z (per film and voxel)",
        rows="subjects sorted (manifest `subjects`); samples in samples.csv's order; NaN where a viewer did not see "
        "the sample's film"),
    Out("prepare", "PREPARED", "voxels_ijk.npy", "grid indices of the selected voxels: the voxel order of every "
        "per-voxel array and table", shape="(V, 3): i, j, k", dtype="int64", rows="C order of mask.nii.gz"),
    Out("prepare", "PREPARED", "samples.csv", "one sample per film TR", rows="by film (sorted), then film TR",
        columns={"sample": "row index in voxels.npy", "film": "film name",
                 "tr": "film TR index (0-based, an index, not seconds; seconds = tr x manifest's tr)",
                 "split": "train, val, test or gap (dropped between splits)",
                 "stim_file": "the video file shown", "stim_time": "s into stim_file at the TR's start",
                 "frame_start": "first row of the TR's frames in frames/{film}.npy (frames_per_tr rows)"}),
    Out("prepare", "PREPARED", "frames/{film}.npy", "frames_per_tr frames per film TR, sampled at the TR's "
        "sub-intervals, resized to frame_size", shape="(n_trs x frames_per_tr, S, S, 3): time, height, width, RGB",
        dtype="uint8", units="0-255 RGB", rows="film time"),
    Out("prepare", "PREPARED", "mask.nii.gz", "the selected voxels (binary; an export's mask.nii.gz numbers "
        "them 1..V instead)", shape=_GRID, dtype="uint8", units="binary"),
    Out("prepare", "PREPARED", "visual_mask.nii.gz", "the visual voxels usable (finite, non-constant in every run)",
        shape=_GRID, dtype="uint8", units="binary"),
    Out("prepare", "PREPARED", "snr.nii.gz", "per-voxel SNR used to select voxels (method in the manifest)",
        shape=_GRID, dtype="float32", units="variance ratio (paper) or amplitude ratio (ceiling)",
        stat={"Statistic": "SNR over viewers", "Null": "none", "Correction": "none"}, intent=("estimate", "SNR")),
    *[Out("prepare", "PREPARED", f"{n}.json", _SIDECAR.replace("{stem}", n)) for n in ("mask", "visual_mask", "snr")],
    Out("prepare", "PREPARED", "timeline.tsv", "where each film segment lies in each run (also by --dry-run)",
        rows="run by run (subject, session, task, run), then onset", columns={
            "sub": "subject", "ses": "session (n/a without)", "task": "task", "run": "run (n/a without)",
            "stim_file": "video file", "film": "film (segments of one film share it)",
            "stim_start": "s into stim_file where the segment starts", "stim_end": "s into stim_file where it ends",
            "onset": "s from the run's first volume", "offset": "onset + duration (s)",
            "first_volume": "run volume of the segment's first film TR (delay included)",
            "n_trs": "film TRs of the segment", "film_tr_start": "film TR of the segment's first volume",
            "split": "a text summary of the segment's TRs per split, e.g. `train 38, val 11, gap 6, test 14` "
                     "(counts of film TRs; samples.csv has the split of each TR)",
            "run_s": "run length (s)", "bold": "BOLD file name"}),
    Out("prepare", "PREPARED", "timeline.png", "figure of timeline.tsv: each run's film segments and splits"),
    Out("prepare", "PREPARED", "cache/runs/{run}.npz", "per-run cache: z (n_rows, V_visual) z-scored film-TR "
        "rows, raw_mean, raw_sd, bad (V_visual,), films, film_trs (n_rows,)", dtype="float32"),
    Out("prepare", "PREPARED", "cache/runs/{run}.json", "per-run cache key and counts (rows, non-finite, constant)"),
    Out("prepare", "PREPARED", "cache/frames/{film}.npy", "cached frames (hard-linked into frames/)",
        shape="(n_trs x frames_per_tr, S, S, 3)", dtype="uint8"),
    Out("prepare", "PREPARED", "cache/frames/{film}.json", "cache key of the film's frames (videos and options)"),

    # ------------------------------------------------------------------ train / baseline
    Out("train", "RUN_DIR", "manifest.json", _MANIFEST),
    Out("train", "RUN_DIR", "dataset_description.json", _DD),
    Out("train", "RUN_DIR", "history.csv", "losses per epoch", rows="epochs in order", columns={
        "epoch": "1-based epoch", "train_loss": "mean training loss (the model's objective)",
        "train_enc": "mean encoder term (E, E-D)", "train_dec": "mean decoder term (D, E-D)",
        "val_loss": "validation loss", "val_enc": "validation encoder term", "val_dec": "validation decoder term",
        "seconds": "wall time of the epoch (s)", "lr": "learning rate at the epoch's end"}),
    Out("train", "RUN_DIR", "checkpoints/{name}.pt", "model weights (last.pt also optimiser state for --resume; "
        "best.pt the lowest validation loss; epoch_NNN.pt with --save-every); read with weights_only=True"),
    Out("train", "RUN_DIR", "tensorboard/{path}", "TensorBoard event files (with --tensorboard)"),
    # train|grid|baseline --cv films (leave-one-film-out)
    Out("train", "CV", "manifest.json", "the cross-validation's design, inputs, films and status (running, done)"),
    Out("train", "CV", "folds/{film}/fold.json", "a finished fold (written last): held-out film, its run, seconds"),
    Out("train", "CV", "folds/{film}/{path}", "the fold's run (a grid's: its cells and best/), with eval/: RUN_DIR's "
        "files; its manifest's cv_fold records the held-out film and the fold's train and val counts"),
    Out("train", "CV", "cv_films.csv", "one row per held-out film, then `mean`", rows="films sorted, then mean",
        columns={"film": "the held-out film (`mean`: the average row)", "model": "model kind",
                 "n_trs": "TRs of the held-out film scored", "n_train": "training TRs of the fold",
                 "n_val": "validation TRs of the fold", "r_mean": "mean voxel r over the film's TRs (the paper's "
                 "convention)", "r_median": "median voxel r", "r_null_shuffle": "mean r of the shuffled-time null",
                 "share_p05_circular": "share of voxels with p_circular < 0.05",
                 "share_q05_circular": "share of voxels with q_circular < 0.05", "n_voxels": "voxels",
                 "ssim_mean": "decoders: mean frame SSIM", "ssim_median": "decoders: median frame SSIM",
                 "ssim_null_shuffle": "decoders: mean SSIM of shuffled frames",
                 "frame_mse_mean": "decoders: mean frame mse (min-max normalised)",
                 "seconds_fit": "s to train the fold", "seconds_evaluate": "s to evaluate it",
                 "run": "the fold's run folder"}),
    Out("grid", "OUT", "eps_{eps}/{path}", "one training per eps value: a run folder (RUN_DIR's files)"),
    Out("grid", "OUT", "grid.csv", "validation losses of every (eps, epochs) cell", rows="eps, then epochs",
        columns={"eps": "the loss weight eps", "epochs": "epochs trained", "val_loss": "validation loss",
                 "val_enc": "validation encoder term", "val_dec": "validation decoder term",
                 "val_score": "the selection score (lower is better)", "run": "the cell's run folder"}),
    Out("grid", "OUT", "best.json", "the chosen cell (grid.csv's row) and best_run"),
    Out("grid", "OUT", "best/{path}", "the chosen cell as a run ready for evaluate: checkpoints/last.pt (the "
        "cell's best.pt), manifest.json, history.csv"),
    Out("baseline", "RUN_DIR", "manifest.json", _MANIFEST + "; `features_pins`: each pretrained features folder's "
        "cache key and PCA files' sha256 at fit time (evaluate and predict refuse a folder changed since)"),
    Out("baseline", "RUN_DIR", "dataset_description.json", _DD),
    Out("baseline", "RUN_DIR", "model/ridge.npz", "the banded ridge fit: weights (n_features x n_delays, V), "
        "y_mean (V,), deltas (n_bands, V) log band scalings, best_alphas (V,), delays (n_delays,) in TRs, "
        "`mean_{band}`, `sd_{band}` (n_band_features,) feature standardisation", dtype="float32"),
    Out("baseline", "RUN_DIR", "ridge_cv.csv", "cross-validated fit per voxel", rows=_VOX, columns={
        "voxel": "voxel index", "alpha": "chosen regularisation", "cv_score": "mean cross-validated score (R2)",
        "weight_{band}": "relative weight of the feature band (motion, colour), summing to 1",
        "alpha_{band}": "the voxel's effective regularisation of the band: alpha divided by the band's kernel "
                        "weight, exp(-delta)"}),
    Out("features", "FEATURES_DIR", "manifest.json", _MANIFEST + "; `key` names the current cache folder and its "
        "settings (model id, weights sha256, layers, rate, pooling, frame size, resolved dtype, PCA, cinevox version)"),
    Out("features", "FEATURES_DIR", "cache/{key}/cache.json", "the cache's settings and each finished film: its "
        "videos' sha256 and every file's size, shape and sha256 (a file that differs is refused)"),
    Out("features", "FEATURES_DIR", "cache/{key}/{film}/{layer}.npy", "one layer's pooled features of a film, one "
        "row per sample (time-stamped at --rate, or per TR)", shape="(n_samples, D)", dtype="float32",
        rows="samples in time order"),
    Out("features", "FEATURES_DIR", "cache/{key}/pca_{layer}.npz", "--pca: the layer's PCA fitted on training TRs "
        "only (mean, components, explained variance; train_rows: sha256 of the (film, tr) rows it was fitted on)",
        dtype="float32"),
    Out("baseline", "PREPARED", "cache/features/{key}/{band}_{film}.npy", "stimulus features per film TR (motion "
        "energy, colour histograms), cached for any run on this prepared data", shape="(n_trs, n_band_features)",
        dtype="float32", rows="film TRs"),
    Out("baseline", "PREPARED", "cache/features/{key}/features.json", "the feature options and films of the cache"),

    # ------------------------------------------------------------------ evaluate
    Out("evaluate", "RUN_DIR/eval", "manifest.json", _MANIFEST),
    Out("evaluate", "RUN_DIR/eval", "metrics.json", "summary metrics: encoder (r, mse means and medians, per film, "
        "nulls, ceilings, share of voxels with q_circular < 0.05) and decoder (SSIM, mse, null)"),
    Out("evaluate", "RUN_DIR/eval", "voxels.csv", "per-voxel test metrics", rows=_VOX, columns={
        "voxel": "voxel index (row of voxels_ijk.npy)", "i": "grid index i", "j": "grid index j",
        "k": "grid index k", "x_mm": "x in the grid's space (mm)", "y_mm": "y (mm)", "z_mm": "z (mm)",
        "r": "Pearson r of prediction and measured BOLD over all test TRs, each film's series z-scored",
        "r_{film}": "Pearson r over the test TRs of one film",
        "mse": "mean squared error of the z-scored series (= 2 (1 - r))",
        "r_raw": "Pearson r on the raw concatenated series", "mse_raw": "mean squared error of the raw series",
        "p_shuffle": "permutation p, (k + 1) / (n + 1), against time-shuffled predictions (anti-conservative: "
                     "breaks the autocorrelation)",
        "p_circular": "p against circular shifts of each film's predictions over all lags (keeps autocorrelation)",
        "q_shuffle": "Benjamini-Hochberg q of p_shuffle over the voxels",
        "q_circular": "Benjamini-Hochberg q of p_circular over the voxels",
        "p_phase": "p against phase-randomised predictions (keeps each film's power spectrum)",
        "q_phase": "Benjamini-Hochberg q of p_phase",
        "r_null_example": "the voxel's r under the first shuffled-time permutation: one draw of the null, for "
                          "plotting the null distribution beside r (Fig. 2)",
        "ceiling": "noise ceiling: split-half over subjects, Spearman-Brown to all subjects, sqrt; on the "
                   "z-scored test series (r's convention); the one r / ceiling uses",
        "ceiling_ev": "noise ceiling from the explainable variance across subjects (sqrt, Spearman-Brown)",
        "ceiling_nsd": "noise ceiling from the noise-ceiling SNR (NSD's formula)",
        "r_over_ceiling": "r / ceiling where ceiling > 0.05, else empty",
        "informative": "simulations only: a planted frame-informative voxel",
        "null_voxel": "simulations only: a true null voxel (no stimulus-driven response)",
        "explainable_ceiling": "simulations only: the true best r of any function of the film",
        "true_ceiling": "simulations only: the true noise ceiling of the simulation",
        "r2_{band}": "banded ridge runs: the band's split R^2 on the test TRs (himalaya r2_score_split; the bands "
                     "sum to the voxel's R^2 of the centred series)",
        "corr_{band}": "banded ridge runs: the band's split correlation (himalaya correlation_score_split; the "
                       "bands sum to r)"}),
    Out("evaluate", "RUN_DIR/eval", "split_{band}.nii.gz", "banded ridge runs: each voxel's test R^2 explained by "
        "one feature band (variance partitioning; voxels.csv's r2_<band>)", shape=_GRID, dtype="float32",
        units="R^2 (share of variance)", intent=("estimate", "split r2"),
        stat={"Statistic": "split R^2 of the band on the test TRs (himalaya r2_score_split)", "Null": "none",
              "Correction": "none"}),
    Out("evaluate", "RUN_DIR/eval", "split_regions.csv", "banded ridge runs: mean split R^2 per atlas region",
        rows="one per region, sorted by name", columns={"region": "atlas region of the prepared data",
        "n_voxels": "selected voxels in the region", "{band}": "mean split R^2 of the band over the region"}),
    Out("evaluate", "RUN_DIR/eval", "pred_voxels.npy", "the model's predicted BOLD of the test samples (raw scale)",
        shape="(n_test, V)", dtype="float32", units="as voxels.npy (z)", rows="test samples in samples.csv's order"),
    Out("evaluate", "RUN_DIR/eval", "null_r_shuffle_mean.npy", "mean r over voxels of each shuffled-time "
        "permutation (the null of metrics.json's r_mean)", shape="(n_perm,)", dtype="float64", units="Pearson r"),
    Out("evaluate", "RUN_DIR/eval", "frames.csv", "per-frame decoder metrics", rows="test samples in order",
        columns={"sample": "sample index", "film": "film", "tr": "film TR index (not seconds)",
                 "ssim": "SSIM of the reconstruction and the TR's frame (pytorch_msssim, pinned options)",
                 "mse": "mean squared error of per-frame min-max normalised frames (the paper's D_mse)",
                 "mse_raw": "mean squared error of the frames as they are (0-1)",
                 "ssim_null_example": "SSIM against a shuffled frame: one draw of the null"}),
    Out("evaluate", "RUN_DIR/eval", "recon.npy", "the decoder's reconstruction of each test TR (channels first, "
        "as the model outputs; prepared frames are channels last)", shape="(n_test, 3, S, S): sample, RGB, "
        "height, width", dtype="uint8", units="0-255", rows="test samples in samples.csv's order"),
    Out("evaluate", "RUN_DIR/eval", "voxel_r.nii.gz", "per-voxel r (voxels.csv's r)", shape=_GRID,
        dtype="float32", units="Pearson r", intent=("estimate", "pearson r"),
        stat={"Statistic": "Pearson r of predicted and measured BOLD over the test TRs (per-film z-scored)",
              "Null": "none (see the p maps)", "Correction": "none"}),
    Out("evaluate", "RUN_DIR/eval", "voxel_r_sub-{sub}.nii.gz", "per-voxel r against one viewer's own test "
        "series (subjects.csv's r_mean is its mean)", shape=_GRID, dtype="float32", units="Pearson r",
        intent=("estimate", "pearson r"),
        stat={"Statistic": "Pearson r of the run's prediction for the viewer (its read-out, the average head or the "
                           "mean model) and the viewer's measured BOLD over the test TRs (per-film z-scored)",
              "Null": "none", "Correction": "none"}),
    Out("evaluate", "RUN_DIR/eval", "subjects.csv", "per-viewer scores of the run (every run, the mean model's too)",
        rows="one per viewer with at least 3 test TRs, viewers sorted",
        columns={"subject": "viewer id", "role": "trained (in the training target), target (the viewer of a "
                 "--target subject:S run), heldout (--holdout-subjects) or other",
                 "n_test": "test TRs the viewer saw", "head": "prediction used: viewer (its own read-out / decoder "
                 "input layer / pipeline), average (the average viewer's) or model (the run's single network)",
                 "ceiling_loo_mean": "mean over voxels of the leave-one-out inter-subject ceiling: per-voxel r "
                 "of the viewer with the mean of the other viewers, over the same TRs",
                 "r_mean": "mean over voxels of voxel_r_sub-<S>", "r_median": "median over voxels",
                 "r_over_ceiling_loo": "r_mean / ceiling_loo_mean",
                 "r_mean_fitted_head": "held-out viewers of a --target subjects run: mean r of a ridge head fitted "
                 "on the viewer's training TRs only", "n_train_fitted": "training TRs that head was fitted on",
                 "ssim_mean": "decoders (and the decoder of encdec runs on the mean or one viewer): mean SSIM of "
                 "frames decoded from the viewer's own test voxels; --target "
                 "subjects encoder-decoders: of each test clip decoded through the viewer's pipeline (its read-out, "
                 "then its input layer; held-out viewers: the average viewer's)",
                 "ssim_mean_measured": "--target subjects encoder-decoders: mean SSIM of frames decoded from the "
                 "viewer's own measured test voxels by its input layer (held-out viewers: the average input layer), "
                 "as ssim_mean of a shared decoder",
                 "ssim_mean_fitted_head": "held-out viewers of a --target subjects decoder: mean SSIM of their "
                 "voxels aligned to the trained viewers' mean by a ridge map fitted on their training TRs only, "
                 "decoded by the average input layer"}),
    Out("evaluate", "RUN_DIR/eval", "noise_ceiling.nii.gz", "per-voxel split-half noise ceiling (voxels.csv's "
        "ceiling)", shape=_GRID, dtype="float32", units="Pearson r", intent=("estimate", "ceiling r"),
        stat={"Statistic": "split-half noise ceiling, Spearman-Brown to all subjects", "Null": "none",
              "Correction": "none"}),
    Out("evaluate", "RUN_DIR/eval", "r_over_ceiling.nii.gz", "r / noise ceiling (0 where the ceiling <= 0.05)",
        shape=_GRID, dtype="float32", units="ratio", intent=("estimate", "r/ceiling"),
        stat={"Statistic": "r / split-half noise ceiling", "Null": "none", "Correction": "none"}),
    Out("evaluate", "RUN_DIR/eval", "space-{space}_stat-p_desc-{null}_statmap.nii.gz",
        "per-voxel permutation p-value of r under one null: shuffle, circular or phase (voxels.csv's `p_{null}`)",
        shape=_GRID, dtype="float32", units="p-value", intent=("p value", "p"),
        stat={"Statistic": "permutation p-value of Pearson r, (k + 1) / (n + 1), one-sided",
              "Null": "see the sidecar", "Correction": "none"}),
    Out("evaluate", "RUN_DIR/eval", "space-{space}_stat-q_desc-{null}_statmap.nii.gz",
        "per-voxel Benjamini-Hochberg q of one null's p: shuffle, circular or phase (voxels.csv's `q_{null}`)",
        shape=_GRID, dtype="float32", units="q-value", intent=("p value", "q FDR"),
        stat={"Statistic": "Benjamini-Hochberg q-value", "Null": "see the sidecar",
              "Correction": "Benjamini-Hochberg FDR over the voxels"}),
    Out("evaluate", "RUN_DIR/eval", "space-{space}_desc-significant_mask.nii.gz",
        "voxels with q_circular below the threshold (--significance-q, default 0.05)", shape=_GRID, dtype="uint8",
        units="binary", stat={"Statistic": "q_circular < threshold", "Null": "circular shifts within films",
                              "Correction": "Benjamini-Hochberg FDR over the voxels"}),
    Out("evaluate", "RUN_DIR/eval", "{stem}.json", _SIDECAR),

    # ------------------------------------------------------------------ saliency
    Out("saliency", "RUN_DIR/saliency", "manifest.json", _MANIFEST),
    Out("saliency", "RUN_DIR/saliency", "summary.json", "counts, the atlas, inputs, ROC AUC against planted voxels "
        "(simulations) and a one-paragraph text"),
    Out("saliency", "RUN_DIR/saliency", "saliency.nii.gz", "|dSSIM/dvoxel| summed over the test reconstructions",
        shape=_GRID, dtype="float32", units="SSIM per unit z (summed)", intent=("estimate", "saliency"),
        stat={"Statistic": "decoder saliency: sum over test TRs of |d SSIM / d voxel|", "Null": "none",
              "Correction": "none"}),
    Out("saliency", "RUN_DIR/saliency", "salient_top.nii.gz", "the top fraction (--top) of voxels by saliency",
        shape=_GRID, dtype="float32", units="binary (0/1)",
        stat={"Statistic": "top fraction of saliency", "Null": "none", "Correction": "none"}),
    Out("saliency", "RUN_DIR/saliency", "{stem}.json", _SIDECAR),
    Out("saliency", "RUN_DIR/saliency", "saliency.csv", "per-voxel saliency", rows=_VOX, columns={
        "voxel": "voxel index", "i": "grid index i", "j": "grid index j", "k": "grid index k",
        "saliency": "saliency (saliency.nii.gz)", "salient": "in the top fraction", "region": "atlas label",
        "group": "the paper's region group", "informative": "simulations only: a planted informative voxel"}),
    Out("saliency", "RUN_DIR/saliency", "regions.csv", "Table II by full atlas label", rows="atlas order",
        columns=_REGION_COLS),
    Out("saliency", "RUN_DIR/saliency", "regions_grouped.csv", "Table II by the paper's groups",
        rows="the paper's order, unlabelled last", columns=_REGION_COLS),
    Out("saliency", "RUN_DIR/saliency", "fig5_saliency.png", "Fig. 5: the saliency map on slices"),
    Out("saliency", "RUN_DIR/saliency", "fig5_salient_top.png", "Fig. 5: the salient voxels on slices"),

    # ------------------------------------------------------------------ lesion
    Out("lesion", "RUN_DIR/lesion", "manifest.json", _MANIFEST),
    Out("lesion", "RUN_DIR/lesion", "summary.json", "baseline scores, ranking, ROC AUC of planted regions"),
    Out("lesion", "RUN_DIR/lesion", "lesion.csv", "virtual lesion of each region: the drop of three per-frame "
        "reconstruction scores and its null of random voxel sets; the unprefixed columns (null_mean, null_sd, z, "
        "p_value) are all the ranking score's (--score, recorded in summary.json)", rows="by `z` (the --score's z), "
        "highest first",
        columns={"rank": "1-based rank", "region": "lesioned region", "n_voxels": "voxels in the region",
                 **_LESION_SCORE,
                 "ssim_drop_per_voxel": "ssim_drop / n_voxels",
                 "null_mean": "= `{score}_null_mean` of the ranking score (--score, default ident; kept from "
                              "earlier versions, where it was always SSIM's)",
                 "null_sd": "= `{score}_null_sd` of the ranking score (--score)",
                 "z": "= `{score}_z` of the ranking score (--score)",
                 "p_value": "= `{score}_p_value` of the ranking score (--score)",
                 "planted": "simulations only: the region is mostly planted informative voxels"}),
    Out("lesion", "RUN_DIR/lesion", "lesion.png", "bars: drop of the ranking score vs its random-set null"),

    # ------------------------------------------------------------------ concepts
    Out("concepts", "RUN_DIR/concepts", "manifest.json", _MANIFEST),
    Out("concepts", "RUN_DIR/concepts", "summary.json", "layers, concepts, example counts, the test and FDR "
        "families; on simulations the validation (AUC, Spearman) and specificity against the truth"),
    Out("concepts", "RUN_DIR/concepts", "tcav.csv", "TCAV scores per concept, layer and voxel or region",
        rows="concept, layer, then voxels in voxel order, then regions", columns={
            "concept": "concept", "layer": "encoder layer", "level": "voxel or region",
            "unit": "voxel index or region name", "region": "the voxel's atlas label or the region",
            "score": "TCAV score: share of test clips whose predicted response rises along the concept's CAV "
                     "(mean over CAVs; 0-1)",
            "random_score": "the same for random-vs-random CAVs",
            "p": "= p_pseudo (kept as an alias)",
            "q": "= q_pseudo (kept as an alias)",
            "p_pseudo": "rank p of the concept's mean TCAV score among --n-pseudo pseudo-concepts' (random clip sets "
                        "treated like a concept): two-sided, rank / (M + 1), ties broken at random (seeded by --seed)",
            "q_pseudo": "Benjamini-Hochberg q of p_pseudo within the level over concepts x layers x units"}),
    Out("concepts", "RUN_DIR/concepts", "tcav_{concept}.nii.gz", "voxel TCAV scores at the default layer",
        shape=_GRID, dtype="float32", units="TCAV score (0-1)", intent=("estimate", "TCAV"),
        stat={"Statistic": "TCAV score at the first layer", "Null": "pseudo-concepts (tcav.csv's p_pseudo)",
              "Correction": "none in the map (tcav.csv's q_pseudo: Benjamini-Hochberg)"}),
    Out("concepts", "RUN_DIR/concepts", "decoder_{concept}.nii.gz", "decoder concept saliency per voxel",
        shape=_GRID, dtype="float32", units="|d concept / d voxel| (summed)", intent=("estimate", "saliency"),
        stat={"Statistic": "decoder concept saliency", "Null": "none", "Correction": "none"}),
    Out("concepts", "RUN_DIR/concepts", "{stem}.json", _SIDECAR),
    Out("concepts", "RUN_DIR/concepts", "decoder_regions.csv", "Table II of each decoder concept's salient voxels",
        rows="concept, then region groups", columns={"concept": "decoder concept", **_REGION_COLS}),
    Out("concepts", "RUN_DIR/concepts", "specificity_{layer}.csv", "simulations only: AUC of each concept's map "
        "(rows) for each concept's true positives (columns), and the random-CAV control row",
        rows="concepts, then `random CAVs`", columns={"": "row concept", "{concept}": "ROC AUC"}),
    Out("concepts", "RUN_DIR/concepts", "tcav_regions.png", "heatmap of region TCAV scores; * q < 0.05"),

    # ------------------------------------------------------------------ regions
    Out("regions", "OUT", "regions.csv", "composition of a mask by full atlas label (A; B with --saliency)",
        rows="atlas order", columns=_REGION_COLS),
    Out("regions", "OUT", "regions_grouped.csv", "composition by the paper's groups", rows="the paper's order",
        columns=_REGION_COLS),
    Out("regions", "OUT", "regions.json", "counts: voxels, unlabelled, atlas used"),

    # ------------------------------------------------------------------ compare
    Out("compare", "OUT", "table1.csv", "Table I: one row per run", rows="runs as given", columns={
        "run": "the run (its folder, as given)", "model": "model kind (encoder, decoder, encdec, ridge)",
        "n_voxels": "voxels evaluated", "E_corr (median r)": "median over voxels of r",
        "E_mse (median)": "median voxel mse", "D_ssim (median)": "median frame SSIM",
        "D_mse (median)": "median frame mse", "mean r / mean ceiling": "mean r / mean split-half ceiling",
        "ceiling (mean)": "mean split-half ceiling",
        "mean r / mean explainable ceiling": "simulations only: mean r / mean explainable ceiling"}),
    Out("compare", "OUT", "table1.md", "Table I, the paired tests and the paper's tests as Markdown"),
    Out("compare", "OUT", "tests.csv", "the paper's Mann-Whitney U between runs (unpaired; see paired.csv)",
        rows="run pairs, voxel r then frame SSIM", columns={
            "metric": "voxel r or frame SSIM", "run_1": "first run", "run_2": "second run",
            "median_1": "median of run 1", "median_2": "median of run 2", "n1": "values of run 1",
            "n2": "values of run 2", "U": "Mann-Whitney U", "p_value": "two-sided p",
            "cliffs_delta": "Cliff's delta (run 1 > run 2 positive)"}),
    Out("compare", "OUT", "paired.csv", "paired comparison of voxel r (same voxels and test TRs)",
        rows="run pairs", columns={
            "run_1": "first run", "run_2": "second run", "mean_diff": "mean over voxels of r1 - r2",
            "ci_low": "2.5 % of the block-bootstrap distribution", "ci_high": "97.5 %",
            "median_diff": "median over voxels of r1 - r2", "p_value": "block-permutation p (two-sided)",
            "share_a_better": "share of voxels where run 1's r is higher",
            "share_b_better": "share of voxels where run 2's r is higher", "n_voxels": "voxels compared",
            "n_trs": "test TRs compared", "n_boot": "bootstrap resamples", "n_perm": "permutations",
            "block_trs": "bootstrap and permutation block length (TRs)"}),
    Out("compare", "OUT", "compare.json", "the same as the tables, with the runs' folders"),

    # ------------------------------------------------------------------ report
    Out("report", "OUT", "index.html", "the HTML report (self-contained but for figures/)"),
    Out("report", "OUT", "figures/{name}.png", "report figures: per run {tag}_fig2_encoder, _fig3_decoder, "
        "_fig4_reconstructions, _voxel_r, _ceiling; training_curves, scatter_ridge{k}_cnn{j}, copies of the "
        "analyses' figures"),
    Out("report", "OUT", "figures/{name}.html", "interactive brain viewers of voxel r ({tag}_voxel_r_viewer.html)"),
    Out("report", "OUT", "summary.json", "the report's first screen as numbers: `data` (the prepared data as the "
        "first run split it: viewers, films, voxels, TR, space, test TRs per film, held-out films, simulated), `runs` "
        "(per run: folder, model, r_mean, r_over_ceiling, frac_voxels_q05_circular, p_circular, ssim_mean, "
        "n_voxels), `best` (the run of highest r_mean, as in `runs`), `best_versus` (its paired tests against the "
        "others: other, mean_diff, ci_low, ci_high, p_value, block_trs) and `warnings` (lines)"),

    # ------------------------------------------------------------------ export / predict / decode
    Out("export", "MODEL_DIR", "model.safetensors", "the model's tensors (or the ridge arrays)"),
    Out("export", "MODEL_DIR", "config.json", "model kind and config, the preparation (TR, delay, frames), the "
        "run's metrics and provenance"),
    Out("export", "MODEL_DIR", "mask.nii.gz", "the model's voxels numbered 1..V in their order (0 elsewhere)",
        shape=_GRID, dtype="int32", units="voxel number", intent=("label", "voxel order")),
    Out("export", "MODEL_DIR", "mask.json", _SIDECAR.replace("{stem}", "mask")),
    Out("export", "MODEL_DIR", "voxel_regions.tsv", "the atlas region of each voxel", rows=_VOX,
        columns={"voxel": "voxel index (mask value - 1)", "index": "atlas label value", "label": "atlas label",
                 "group": "the paper's group"}),
    Out("export", "MODEL_DIR", "README.md", "model card"),
    Out("predict", "OUT", "{video}_pred.nii.gz", "predicted BOLD of the video: volume k is the response k TRs after "
        "the video's start (the first delay_trs volumes are 0)", shape="(X, Y, Z, n_clips + delay_trs)",
        dtype="float32", units="z (as the training data); xyzt units mm, s; TR in the header"),
    Out("predict", "OUT", "{video}_pred.json", "sidecar: TR, delay, clips, model, video, timing; and the BIDS "
        "sidecar keys"),
    Out("predict", "OUT", "{video}_regions.tsv", "mean predicted response per region and volume",
        rows="volumes in time order", columns={"volume": "volume index", "time_s": "s from the video's start",
                                               "{region}": "mean over the region's voxels"}),
    Out("decode", "OUT", "decoded.mp4", "one reconstructed frame per TR (beside the film's frame with "
        "--reference-video)"),
    Out("decode", "OUT", "decoded.png", "a strip of reconstructions (and film frames)"),
    Out("decode", "OUT", "decoded.tsv", "one row per decoded TR", rows="TRs in time order",
        columns={"tr": "film TR index (an index, not seconds)", "film_time_s": "s from the film's start",
                 "scan_volume": "the scans' volume decoded (delay included)",
                 "ssim": "SSIM against the film's frame (with --reference-video)"}),
    Out("decode", "OUT", "decoded.json", "summary: scans, TR, model, mean SSIM, and `head`: the viewer whose input "
        "layer decoded the scans (sub-<S>, --subject) or average"),

    # ------------------------------------------------------------------ demo
    Out("demo", "OUT", "demo.log", "every step's log lines"),
    Out("demo", "OUT", "demo_summary.json", "per-step seconds, each run's metrics, saliency, lesion ranking, "
        "concept validation, headlines"),
    Out("demo", "OUT", "{folder}/{path}", "bids/ (simulate), prepared/ (prepare), runs/E-D, runs/E, runs/ridge "
        "(train, baseline and their analyses), report/ (report): the files of those steps"),
]

# the report runs compare into its own folder
OUTPUTS += [Out("report", "OUT", o.path, "as `compare` writes it (the report runs compare): " + o.what, rows=o.rows,
                columns=o.columns) for o in list(OUTPUTS) if o.step == "compare"]

STEPS = ("simulate", "prepare", "train", "grid", "baseline", "features", "evaluate", "saliency", "lesion", "concepts",
         "regions", "compare", "report", "export", "predict", "decode", "demo")


def find(folder: str, relpath: str, step: str | None = None) -> Out | None:
    """The entry of ``relpath`` inside a folder of kind ``folder`` (``RUN_DIR/eval``...) written by ``step`` (any
    step when None), or None. A per-viewer analysis folder (``RUN_DIR/lesion_sub-S07``, ``--subject``) holds the
    files of its step's folder."""
    folder = re.sub(r"^(RUN_DIR/(?:saliency|lesion|concepts))_sub-[^/]+$", r"\1", folder)
    for o in OUTPUTS:
        if o.folder == folder and (step is None or o.step == step) and o.matches(relpath):
            return o
    return None


def nifti_intent(name: str) -> tuple[str, str] | None:
    """The header intent of a NIfTI output by file name (the first entry that names one)."""
    for o in OUTPUTS:
        if o.intent and _pattern(o.path.rsplit("/", 1)[-1], "[^/]+").fullmatch(name):
            return o.intent
    return None


# ------------------------------------------------------------------ the generated reference
def markdown() -> str:
    """``docs/outputs.md``: every output, step by step."""
    lines = ["# cinevox outputs", "",
             "Generated from `src/cinevox/outputs.py` (`python -m cinevox.outputs > docs/outputs.md`); a test "
             "checks that this file is current and that the tiny pipeline writes nothing it does not describe.", "",
             "`V`: the prepared voxels, in the order of `voxels_ijk.npy` (C order of the mask); `S`: frame size; "
             "`{name}` in a path: one name that varies (film, concept, layer, subject...). Every NIfTI map has a "
             "JSON sidecar of the same stem, and every prepared folder, run and simulation derivative a "
             "`dataset_description.json` (BIDS derivatives). The per-viewer analyses of a `--target subjects` run "
             "(`--subject S07`) write `RUN_DIR/saliency_sub-S07`, `lesion_sub-S07` and `concepts_sub-S07`, with the "
             "files of `RUN_DIR/saliency`, `lesion` and `concepts`.", ""]
    for step in STEPS:
        rows = [o for o in OUTPUTS if o.step == step]
        lines += [f"## {step}", ""]
        for o in rows:
            lines.append(f"### `{o.folder}/{o.path}`")
            lines.append("")
            lines.append(o.what[0].upper() + o.what[1:] + ("" if o.what.endswith(".") else "."))
            facts = [(k, v) for k, v in (("shape", o.shape), ("dtype", o.dtype), ("units", o.units),
                                         ("rows", o.rows)) if v]
            if facts or o.stat:
                lines.append("")
                lines += [f"- {k}: {v}" for k, v in facts]
                if o.stat:
                    lines += [f"- {k}: {v}" for k, v in o.stat.items()]
            if o.columns:
                lines += ["", "| column | meaning |", "|---|---|"]
                lines += [f"| `{c or '(index)'}` | {m.replace('|', chr(92) + '|')} |" for c, m in o.columns.items()]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------ BIDS-derivatives metadata
def _version() -> str:
    try:
        from cinevox import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return __version__


#: the command line being run (set by ``cinevox.cli.main``); the Python API records the call instead
COMMAND: list[str] | None = None


def command(step: str) -> str:
    if COMMAND is not None:
        return "cinevox " + " ".join(COMMAND)
    return f"cinevox.{step}(...) (Python API, {Path(sys.argv[0]).name if sys.argv else 'python'})"


def dataset_description(name: str, step: str, sources: list[str | Path] | None = None,
                        folder: str | Path | None = None) -> dict[str, Any]:
    """A BIDS-derivatives ``dataset_description.json`` for the output of ``step`` in ``folder``; a source given as
    a relative string (``"../.."``) is relative to ``folder`` and recorded so (a folder that moves with its source
    stays byte-identical), any other as a ``file://`` URL."""
    src = []
    for s in sources or []:
        if isinstance(s, str) and not Path(s).is_absolute():  # relative to the folder described: kept as given
            entry: dict[str, Any] = {"URL": s}
            s = Path(folder or ".") / s
        else:
            s = Path(s).resolve()
            entry = {"URL": s.as_uri()}
        dd = s / "dataset_description.json"
        if dd.is_file():
            import json

            try:
                meta = json.loads(dd.read_text())
            except (ValueError, OSError):
                meta = {}
            if meta.get("DatasetDOI"):
                entry["DOI"] = meta["DatasetDOI"]
            if meta.get("Name"):
                entry["Name"] = meta["Name"]
        src.append(entry)
    return {"Name": name, "BIDSVersion": "1.10.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "cinevox", "Version": _version(), "Description": command(step)}],
            "SourceDatasets": src}


def write_dataset_description(folder: str | Path, name: str, step: str,
                              sources: list[str | Path] | None = None) -> Path:
    from cinevox.utils.io import write_json

    path = Path(folder) / "dataset_description.json"
    write_json(path, dataset_description(name, step, sources, folder))
    return path


def space_label(manifest: dict | None, sform_code: int = 4) -> str:
    """The BIDS space label of a prepared dataset: the ``space-`` entity of the BOLD runs read (its manifest's
    ``bold``), else MNI for an MNI sform, else ``orig``."""
    label = ((manifest or {}).get("bold") or {}).get("space")
    if label:
        return re.sub(r"[^A-Za-z0-9]", "", str(label))
    return "MNI" if sform_code == 4 else "orig"


def sidecar(folder: str, relpath: str, sources: list[str] | None = None, space: str | None = None,
            step: str | None = None, **extra: Any) -> dict[str, Any]:
    """The JSON sidecar of a NIfTI output, from its table entry (KeyError if the table lacks it)."""
    o = find(folder, relpath, step)
    if o is None:
        raise KeyError(f"{folder}/{relpath} is not in cinevox.outputs.OUTPUTS")
    meta: dict[str, Any] = {"Description": o.what, "Units": o.units or "n/a", "Space": space or "n/a",
                            "Sources": [str(s) for s in sources or []],
                            "GeneratedBy": {"Name": "cinevox", "Version": _version(), "Step": o.step}}
    meta.update({"Statistic": "n/a", "Null": "n/a", "Correction": "n/a"} | (o.stat or {}))
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


def write_sidecars(root: str | Path, folder: str, sources: list[str] | None = None, space: str | None = None,
                   per_file: dict[str, dict] | None = None, prefix: str = "") -> list[Path]:
    """Write the sidecar of every ``*.nii.gz`` directly in ``root`` (``prefix`` + name: its path in a folder of
    kind ``folder``); ``per_file`` adds keys to one file's sidecar."""
    from cinevox.utils.io import write_json

    written = []
    for nii in sorted(Path(root).glob("*.nii.gz")):
        stem = nii.name[: -len(".nii.gz")]
        meta = sidecar(folder, prefix + nii.name, sources, space, **(per_file or {}).get(nii.name, {}))
        write_json(nii.with_name(stem + ".json"), meta)
        written.append(nii.with_name(stem + ".json"))
    return written


if __name__ == "__main__":
    sys.stdout.write(markdown())
