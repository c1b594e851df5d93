"""The ``cinevox`` command line. Thin: each subcommand parses its options and calls one library function."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cinevox import __version__
from cinevox.configs import (
    ConceptConfig,
    DemoConfig,
    EvalConfig,
    LesionConfig,
    LossConfig,
    PrepareConfig,
    PretrainedConfig,
    RidgeConfig,
    SaliencyConfig,
    SimConfig,
    TrainConfig,
)
from cinevox.profiles import add_profile_options, profile_options
from cinevox.utils.log import setup_logging

logger = logging.getLogger("cinevox.cli")


def _d(cls, name: str):
    """The default of a config dataclass' field: the command line shows what the library does, and cannot drift."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if callable(f.default_factory) else f.default


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default (unless the help already states it, or there is none)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or \
                action.default == argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _number(kind, low=None, high=None, low_open=False, what=""):
    """An argparse type that refuses values outside [low, high] (or (low, high]) at parse time."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if low is not None and (v <= low if low_open else v < low):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if low_open else '>='} {low}{what}")
        if high is not None and v > high:
            raise argparse.ArgumentTypeError(f"{text} must be <= {high}{what}")
        return v

    return parse


POS_INT = _number(int, 1)
NONNEG_INT = _number(int, 0)
POS_FLOAT = _number(float, 0, low_open=True)
FRACTION = _number(float, 0, 1, low_open=True)
PROB = _number(float, 0, 1)
NONNEG_FLOAT = _number(float, 0)


def _csv_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    """``"5,10"`` or ranges ``"5-30"`` (inclusive) -> sorted unique ints."""
    out: set[int] = set()
    for t in (t.strip() for t in text.split(",") if t.strip()):
        if "-" in t[1:]:
            a, b = t.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(t))
    return sorted(out)


class _Deprecated(argparse.Action):
    """An old spelling of an option (issue 27): stores into the new option's dest, and says so in one line."""

    def __init__(self, option_strings, dest, new: str = "", **kw) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"cinevox: warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _alias(p, old: str, new: str, dest: str, nargs=None, type=None) -> None:
    """``old`` as a deprecated spelling of the option ``new`` (whose dest is ``dest``, values of ``type``); add it
    after ``new``."""
    p.add_argument(old, dest=dest, action=_Deprecated, new=new, nargs=nargs, type=type,
                   help=f"deprecated spelling of {new}")


def _model_kind(text: str) -> str:
    """--model: encoder, decoder, encdec; the old ED / E-D are accepted for encdec with a warning."""
    if text in ("ED", "E-D", "ed", "e-d"):
        print(f"cinevox: warning: --model {text} is deprecated, use --model encdec", file=sys.stderr)
        return "encdec"
    return text


def _trust_option(p) -> None:
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="also read checkpoints that hold Python objects (older cinevox versions): only for files "
                        "you trust, loading them can execute code")


# ---------------------------------------------------------------- simulate
def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="write a synthetic Emo-FilM (BIDS, ds004892 layout) with known truth")
    p.add_argument("out", type=Path, help="output BIDS folder")
    p.add_argument("--preset", default="tiny", choices=["tiny", "demo", "emofilm"],
                   help="size: tiny (seconds, for tests), demo (the demo's films), emofilm (Emo-FilM's 14 films, 30 "
                        "subjects, 2 mm grid)")
    p.add_argument("--seed", type=int, help=f"random seed: brains, films, noise (default: {_d(SimConfig, 'seed')})")
    p.add_argument("--n-subjects", type=_number(int, 2), help="subjects in the dataset (default: the preset's)")
    p.add_argument("--subjects", help="comma-separated subset to write, e.g. S01,S02")
    p.add_argument("--films-dir", help="a folder of real videos to use (<Film>.mp4 ...) instead of generated films")
    p.add_argument("--only-films", help="comma-separated subset of the preset's films")
    p.add_argument("--films", help="deprecated: a folder (use --films-dir) or a comma-separated subset (use "
                   "--only-films)")
    p.add_argument("--max-trs", type=_number(int, 10), help="cap every film at this many TRs")
    p.add_argument("--tr", type=POS_FLOAT, help=f"repetition time, s (default: {_d(SimConfig, 'tr')})")
    p.add_argument("--voxel-size", type=POS_FLOAT, help="synthetic grid spacing in mm")
    p.add_argument("--atlas", help="Schaefer-1000 NIfTI (visual mask by parcel name)")
    p.add_argument("--atlas-labels", help="its label table (TSV with index and name)")
    p.add_argument("--regions-atlas", help="AAL3 NIfTI (regions)")
    p.add_argument("--regions-labels", help="AAL3 label table")
    p.add_argument("--p-missing", type=_number(float, 0, 0.99), help="probability that a subject misses a film")
    p.add_argument("--null-fraction", type=_number(float, 0, 0.99),
                   help="share of visual voxels with no stimulus signal at all (true nulls, listed in "
                        "derivatives/simulation/null_voxels.nii.gz), to measure false-positive rates (default: 0)")
    p.add_argument("--subject-variability", type=_number(float, 0),
                   help="each viewer's tuning = the shared tuning + F x a viewer-specific part (truth per viewer in "
                        "derivatives/simulation/tuning_sub-<S>.npz and signal_sub-<S>/) (default: 0)")
    p.set_defaults(func=_run_simulate)


def _run_simulate(a) -> int:
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate

    films_dir, film_subset = a.films_dir, _csv_list(a.only_films)
    if a.films:
        new = "--films-dir" if Path(a.films).is_dir() else "--only-films"
        print(f"cinevox: warning: --films is deprecated, use {new}", file=sys.stderr)
        if Path(a.films).is_dir():
            films_dir = str(a.films)
        else:
            film_subset = _csv_list(a.films)
    cfg = preset(a.preset, seed=a.seed, n_subjects=a.n_subjects, subjects=_csv_list(a.subjects), max_trs=a.max_trs,
                 tr=a.tr, voxel_size=a.voxel_size, atlas=a.atlas, atlas_labels=a.atlas_labels,
                 regions_atlas=a.regions_atlas, regions_labels=a.regions_labels, p_missing=a.p_missing,
                 null_fraction=a.null_fraction, subject_variability=a.subject_variability,
                 films_dir=films_dir)
    if film_subset:
        unknown = sorted(set(film_subset) - set(cfg.films))
        if unknown:
            raise ValueError(f"--only-films {unknown}: not films of preset {a.preset!r} ({sorted(cfg.films)}); "
                             "a folder of videos is --films-dir")
        cfg.films = {k: v for k, v in cfg.films.items() if k in film_subset}
    simulate(a.out, cfg)
    print(f"simulated dataset: {a.out}")
    return 0


# ---------------------------------------------------------------- prepare
def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="BIDS dataset + films -> training-ready dataset (paper II-A)")
    p.add_argument("bids_dir", type=Path, help="the BIDS dataset")
    p.add_argument("out_dir", type=Path, help="folder of the prepared dataset")
    p.add_argument("--films-dir", help="folder of the film videos (<Film>.mp4 ...)")
    _alias(p, "--films", "--films-dir", "films_dir")
    p.add_argument("--config", type=Path, help="JSON or TOML file with any of the options below")
    p.add_argument("--mask", help="ready mask: NIfTI on the BOLD grid, or the authors' .npy (FSL 2 mm grid)")
    p.add_argument("--atlas", help="Schaefer-style atlas NIfTI (visual parcels picked by name)")
    p.add_argument("--atlas-labels", help="its label table")
    p.add_argument("--layout", choices=["auto", "emofilm", "bids"],
                   help="emofilm: ds004892's derivatives/preprocessing; bids: any BIDS dataset, raw or fMRIPrep "
                        "(default auto: emofilm when its BOLD pattern matches)")
    p.add_argument("--bold-pattern", help="emofilm layout: glob of the preprocessed BOLD files, relative to BIDS_DIR")
    p.add_argument("--derivatives", help="fMRIPrep folder, or 'none' for the raw BOLD (default "
                   "BIDS_DIR/derivatives/fmriprep when it holds BOLD files; raw BOLD otherwise)")
    p.add_argument("--space", help=f"fMRIPrep space (default {_d(PrepareConfig, 'space')})")
    p.add_argument("--res", help="fMRIPrep res- entity, needed when several resolutions exist")
    p.add_argument("--desc", help=f"fMRIPrep desc- entity of the BOLD (default {_d(PrepareConfig, 'desc')})")
    p.add_argument("--confounds", help="regress fMRIPrep confounds: nilearn load_confounds strategies, each NAME or "
                   "NAME:VALUE, e.g. motion:basic,wm_csf (8 regressors), motion:full,high_pass,scrub:0.5 (scrub "
                   "at 0.5 mm framewise displacement), compcor:temporal,n_compcor:5; a run needs 2 volumes per "
                   "regressor")
    p.add_argument("--tr", type=POS_FLOAT, help="repetition time in s, overriding every sidecar")
    p.add_argument("--task", dest="tasks", help="comma-separated tasks to read (default: every task with stimuli)")
    p.add_argument("--filter", dest="filters", action="append",
                   help="keep BOLD files with this entity value, e.g. acq=dico (repeatable)")
    p.add_argument("--trial-type", help="events rows that are the stimulus when there is no stim_file column "
                   f"(default {_d(PrepareConfig, 'trial_type')})")
    p.add_argument("--lead-in", help="trial types replaying the start of the next stimulus, not used "
                   "(e.g. overlap_with_previous_run)")
    p.add_argument("--stim-name", help="stimulus file of a run without stim_file rows: a template with {task}, "
                   "{run}, {run:02d}, {sub}, {ses} (default {task})")
    p.add_argument("--timeline", help="TSV of stimulus placements (sub ses task run stim_file onset stim_start "
                   "duration [film segment]) for datasets without usable events")
    p.add_argument("--segments", help="group <film><NN> stimuli into one film: auto (default), none, or a regex with "
                   "(?P<film>...) and (?P<seg>...)")
    p.add_argument("--segment-overlap", type=_number(float, 0), help="seconds each later segment repeats of the "
                   "previous one; dropped (default 0)")
    p.add_argument("--split", choices=["films", "stimuli"], help="films: the paper's per-film 80/20 split (default); "
                   "stimuli: whole stimuli to train/validation/test, for datasets of many short clips")
    p.add_argument("--max-trim-trs", type=NONNEG_INT, help="a run this many TRs shorter than its stimuli is trimmed "
                   "with a warning; more is an error (default 2)")
    p.add_argument("--dry-run", action="store_true", help="show the stimulus timeline (table + OUT/timeline.png) and "
                   "the split, read no voxels")
    p.add_argument("--subjects", help="comma-separated subset (S01,S02)")
    p.add_argument("--only-films", help="comma-separated subset of films")
    p.add_argument("--delay-trs", type=NONNEG_INT, help="hemodynamic shift in TRs (default 4)")
    p.add_argument("--detrend", choices=["mean", "linear"],
                   help=f"baseline removed from each run before z-scoring (default: {_d(PrepareConfig, 'detrend')})")
    p.add_argument("--snr", choices=["paper", "ceiling"], help="SNR definition for voxel selection")
    p.add_argument("--snr-top", type=FRACTION, help="fraction of visual voxels kept (default 0.3)")
    p.add_argument("--frame-size", type=_number(int, 8), help="frame side in pixels (default 112)")
    p.add_argument("--frames-per-tr", type=_number(int, 2), help="frames per TR (default 32)")
    p.add_argument("--visual-parcels", help="names (default: _Vis parcels by name), kong2022 (the paper's label "
                   "ranges of the Kong2022 17-network ordering), or label ranges such as 420-450,478-500")
    p.add_argument("--heldout-film", help="film kept entirely for test (default: YouAgain in the Emo-FilM layout, none "
                   "otherwise)")
    p.add_argument("--assume-mni", action="store_true", default=None,
                   help="read BOLD files whose qform and sform codes are 0, or whose sform code is 1 (scanner) on a "
                        "template grid, as MNI (their sform matrix)")
    p.add_argument("--gap-trs", type=NONNEG_INT, help="TRs left out around validation blocks (blocked mode)")
    p.add_argument("--val-blocks", type=POS_INT,
                   help=f"validation blocks per film, blocked mode (default: {_d(PrepareConfig, 'val_blocks')})")
    p.add_argument("--hash", dest="hash_inputs", action="store_true", default=None, help="sha256 every input")
    p.add_argument("--jobs", type=POS_INT, help="worker processes for the runs")
    add_profile_options(p, ("prepare",))
    p.set_defaults(func=_run_prepare)


def _run_prepare(a) -> int:
    from cinevox.data.prepare import PrepareConfig, load_config_file, prepare

    opts = load_config_file(a.config) if a.config else {}
    for name in ("films_dir", "mask", "atlas", "atlas_labels", "bold_pattern", "delay_trs", "detrend", "snr",
                 "snr_top", "frame_size", "frames_per_tr", "heldout_film", "gap_trs", "val_blocks",
                 "hash_inputs", "jobs", "visual_parcels", "assume_mni", "layout", "derivatives", "space", "res",
                 "desc", "confounds", "tr", "filters", "trial_type", "stim_name", "timeline", "segments",
                 "segment_overlap", "split", "max_trim_trs"):
        if getattr(a, name) is not None:
            opts[name] = getattr(a, name)
    opts.update(profile_options(a, ("prepare",)))
    for arg, name in (("subjects", "subjects"), ("only_films", "films"), ("tasks", "tasks"), ("lead_in", "lead_in")):
        if getattr(a, arg):
            opts[name] = _csv_list(getattr(a, arg))
    if a.dry_run:
        from cinevox.data.prepare import dry_run

        table = dry_run(a.bids_dir, a.out_dir, PrepareConfig(**opts))
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.width", 200, "display.max_columns", 20):
            print(table.drop(columns=["bold"]).to_string(index=False))
        print(f"timeline: {a.out_dir / 'timeline.tsv'}, figure: {a.out_dir / 'timeline.png'}")
        return 0
    prepare(a.bids_dir, a.out_dir, PrepareConfig(**opts))
    print(f"prepared dataset: {a.out_dir}")
    return 0


# ---------------------------------------------------------------- train, grid
def _train_options(p) -> None:
    p.add_argument("prepared_dir", type=Path, help="a prepared dataset (cinevox prepare)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--model", type=_model_kind, choices=["encoder", "decoder", "encdec"],
                   default=_d(TrainConfig, "model"),
                   help="encoder (clips -> voxels), decoder (voxels -> middle frame) or encdec (end to end; ED and E-D "
                        "are deprecated spellings)")
    p.add_argument("--epochs", type=POS_INT, default=_d(TrainConfig, "epochs"), help="passes over the training split")
    p.add_argument("--batch-size", type=POS_INT, default=_d(TrainConfig, "batch_size"),
                   help="clips per step (the global batch under torchrun)")
    p.add_argument("--lr", type=POS_FLOAT, default=_d(TrainConfig, "lr"), help="Adam learning rate")
    p.add_argument("--eps", type=PROB, default=_d(LossConfig, "eps"), help="weight of the encoder loss in L_ED")
    p.add_argument("--alpha", type=NONNEG_FLOAT, default=_d(LossConfig, "alpha"),
                   help="weight of the cosine distance in the encoder loss L_E = MSE + alpha (1 - cos)")
    p.add_argument("--dropout", type=_number(float, 0, 0.99), default=_d(TrainConfig, "dropout"),
                   help="dropout before the encoder's FC")
    p.add_argument("--seed", type=int, default=_d(TrainConfig, "seed"),
                   help="random seed: initial weights, batch order, dropout")
    p.add_argument("--device", default=_d(TrainConfig, "device"),
                   help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on GPU")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bfloat16 autocast on the CPU too (about 2x faster on CPUs with AVX512-BF16 or AMX)")
    p.add_argument("--vgg-weights", help="vgg16-397923af.pth (else the torch hub cache, else download)")
    p.add_argument("--allow-random-vgg", action="store_true",
                   help="when no VGG16 weights are found, use a random VGG16 for the perceptual loss (logged)")
    p.add_argument("--perceptual-resize", type=_number(int, 32),
                   help="resize frames before VGG16 (default: the frame size; 224 with --perceptual-input authors)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run, or extend a finished one with a larger --epochs")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model: less GPU memory (12.9 vs 16.9 GB at batch 64 on an H200), not faster")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics of the global batch (SyncBatchNorm)")
    p.add_argument("--max-steps", type=POS_INT,
                   help="at most this many training (and validation) batches per epoch, for a quick smoke test of "
                        "a big dataset (default: every batch)")
    p.add_argument("--stage", action=argparse.BooleanOptionalAction, default=None,
                   help="on a GPU, copy the uint8 frames to it (--stage) or keep them on the host with pinned "
                        "prefetch (--no-stage); default: decided after the first step from measured memory")
    p.add_argument("--target", default=_d(TrainConfig, "target"),
                   help="what to predict: mean (the viewers' mean, the paper), subject:S07 (one viewer's series) or "
                        "subjects (every viewer: one shared network; an encoder read-out and a decoder input layer per "
                        "viewer, and an average viewer for those never trained on)")
    p.add_argument("--holdout-subjects",
                   help="comma-separated viewers kept out of training (evaluate scores them), e.g. S03,S11")
    p.add_argument("--subject-dropout", type=_number(float, 0, 0.99), default=_d(TrainConfig, "subject_dropout"),
                   help="--target subjects: share of (clip, viewer) pairs trained through the average viewer")
    p.add_argument("--subject-rank", type=POS_INT, default=_d(TrainConfig, "subject_rank"),
                   help="--target subjects: rank of each viewer's read-out / input-layer correction")
    _trust_option(p)
    add_profile_options(p, ("train",))


def _train_config(a):
    from cinevox.losses import LossConfig
    from cinevox.training import TrainConfig

    loss = LossConfig(alpha=a.alpha, eps=a.eps, mse_over_voxels=a.mse_over_voxels, vgg_weights=a.vgg_weights,
                      vgg_allow_random=a.allow_random_vgg, perceptual_resize=a.perceptual_resize,
                      perceptual_input=a.perceptual_input)
    return TrainConfig(model=a.model, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                       device=a.device, amp=not a.no_amp, cpu_bf16=a.cpu_bf16,
                       final_batchnorm=a.final_batchnorm,
                       dropout=a.dropout, profile=a.profile or "paper", sync_bn=a.sync_bn, compile=a.compile,
                       stage=a.stage, max_steps=a.max_steps, loss=loss, target=a.target,
                       holdout_subjects=_csv_list(a.holdout_subjects), subject_dropout=a.subject_dropout,
                       subject_rank=a.subject_rank)


def _cv_options(p) -> None:
    p.add_argument("--cv", choices=["films"],
                   help="films: leave-one-film-out cross-validation, each film held out in turn (one sub-run per "
                        "fold in OUT/folds/<film>, each evaluated on every TR of its film; OUT/cv_films.csv). "
                        "Rerun the same command to resume (default: one run on the prepared split)")
    p.add_argument("--cv-n-perm", type=POS_INT, default=_d(EvalConfig, "n_perm"),
                   help="with --cv films: permutations of the voxel nulls in each fold's evaluation")


def _run_cv(a, how: str, cfg, **kw) -> int:
    from cinevox.evaluation.cv_films import cv_films

    table = cv_films(a.prepared_dir, a.out, how, cfg, EvalConfig(n_perm=a.cv_n_perm), **kw)
    cols = [c for c in ("film", "n_trs", "r_mean", "r_median", "share_p05_circular", "ssim_mean") if c in table]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"leave-one-film-out: {a.out / 'cv_films.csv'}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the encoder, the decoder or the end-to-end model (encdec)")
    _train_options(p)
    _cv_options(p)
    p.set_defaults(func=_run_train)


def _run_train(a) -> int:
    from cinevox.training import train

    if a.cv:
        return _run_cv(a, "train", _train_config(a), trust_checkpoint=a.trust_checkpoint)
    train(a.prepared_dir, a.out, _train_config(a), resume=a.resume, trust_checkpoint=a.trust_checkpoint)
    print(f"run: {a.out}")
    return 0


def _add_grid(sub) -> None:
    p = sub.add_parser("grid", help="the paper's grid over eps and epochs, picked by validation loss")
    _train_options(p)
    p.add_argument("--eps-grid", default="0,0.25,0.5,0.75,1", help="comma-separated eps values")
    p.add_argument("--epoch-grid", default="5-30",
                   help="epoch counts: ranges and/or commas (default 5-30: every epoch, the paper's grid)")
    p.add_argument("--devices", help="comma-separated devices for parallel trainings (default: every visible GPU)")
    p.add_argument("--cell", type=NONNEG_INT,
                   help="train only the eps of this index (a Slurm array task: --cell $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--collect", action="store_true", help="train nothing: pick the best of the cells trained")
    _cv_options(p)
    p.set_defaults(func=_run_grid)


def _run_grid(a) -> int:
    from cinevox.training.grid import grid

    if a.cv:
        if a.cell is not None or a.collect:
            raise ValueError("--cv films runs every fold's grid itself: drop --cell and --collect")
        return _run_cv(a, "grid", _train_config(a), grid_eps=_floats(a.eps_grid), grid_epochs=_ints(a.epoch_grid),
                       devices=_csv_list(a.devices), trust_checkpoint=a.trust_checkpoint)
    best = grid(a.prepared_dir, a.out, _train_config(a), _floats(a.eps_grid), _ints(a.epoch_grid), resume=a.resume,
                devices=_csv_list(a.devices), only=a.cell, collect=a.collect)
    if a.cell is not None:
        print(f"grid cell {a.cell}: eps {best['trained']:g} trained in {a.out} (then: cinevox grid ... --collect)")
        return 0
    print(f"best: eps {best['eps']:g}, {best['epochs']} epochs -> {best['best_run']}")
    return 0


# ---------------------------------------------------------------- baseline
def _add_baseline(sub) -> None:
    p = sub.add_parser("baseline", help="the voxelwise linear baseline: motion energy + colour, banded ridge")
    p.add_argument("prepared_dir", type=Path, help="a prepared dataset (cinevox prepare)")
    p.add_argument("--out", type=Path, required=True, help="run folder (evaluate, compare and report accept it)")
    p.add_argument("--features", default="motion,colour",
                   help="feature spaces, one band each (comma-separated): motion, colour, and FEATURES_DIR[:LAYER] "
                        "folders of cinevox features (without :LAYER, one band per layer of the folder)")
    p.add_argument("--delays", default="-1,0,1,2", help="FIR delays in TRs around the prepared shift")
    p.add_argument("--n-iter", type=POS_INT, default=_d(RidgeConfig, "n_iter"),
                   help="random-search iterations over the feature-space weights")
    p.add_argument("--n-folds", type=_number(int, 2), default=_d(RidgeConfig, "n_folds"),
                   help="cross-validation folds, grouped by film")
    p.add_argument("--motion-size", type=_number(int, 8),
                   help="frame side for motion energy (default: the prepared size)")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch", "torch_cuda"],
                   help="himalaya backend (auto: torch_cuda when CUDA is there, else numpy)")
    p.add_argument("--seed", type=int, default=_d(RidgeConfig, "seed"), help="random seed of the kernel-weight search")
    _cv_options(p)
    p.set_defaults(func=_run_baseline)


def _signed_ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _run_baseline(a) -> int:
    from cinevox.configs import FEATURE_SPACES, FeatureConfig
    from cinevox.training.ridge import RidgeConfig, baseline, expand_pretrained

    names = _csv_list(a.features) or []
    feats = FeatureConfig(spaces=tuple(n for n in names if n in FEATURE_SPACES), motion_size=a.motion_size)
    cfg = RidgeConfig(features=feats, delays=tuple(_signed_ints(a.delays)), n_iter=a.n_iter, n_folds=a.n_folds,
                      backend=a.backend, seed=a.seed,
                      pretrained=expand_pretrained([n for n in names if n not in FEATURE_SPACES]))
    if a.cv:
        return _run_cv(a, "baseline", cfg)
    baseline(a.prepared_dir, a.out, cfg)
    print(f"baseline run: {a.out} (next: cinevox evaluate {a.out})")
    return 0


# ---------------------------------------------------------------- features
def _rate(text: str) -> float | None:
    if text.strip().lower() == "tr":
        return None
    return POS_FLOAT(text)


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="a pretrained network's features of every film, cached (for baseline)")
    p.add_argument("prepared_dir", type=Path, help="a prepared dataset (cinevox prepare)")
    p.add_argument("--model", required=True,
                   help="a Hugging Face model id or folder (DINOv2, CLIP/SigLIP, ViT, VideoMAE, V-JEPA 2), vgg16, "
                        "a cinevox run (its encoder's layers), or simulator (the simulator's channels)")
    p.add_argument("--out", type=Path, required=True, help="FEATURES_DIR (cinevox baseline --features FEATURES_DIR)")
    p.add_argument("--layers", help="comma-separated layer names (default: about 1/2, 3/4 and the last of the depth)")
    p.add_argument("--rate", type=_rate, default=_d(PretrainedConfig, "rate"),
                   help="samples per second, or 'tr' for one per TR")
    p.add_argument("--pool", default=_d(PretrainedConfig, "pool"),
                   help="mean (over tokens/space), cls, or gridG (a G x G spatial grid)")
    p.add_argument("--pca", type=NONNEG_INT, default=_d(PretrainedConfig, "pca"),
                   help="components per layer, fitted on the training TRs only (0: none)")
    p.add_argument("--batch-size", type=POS_INT, default=_d(PretrainedConfig, "batch_size"),
                   help="samples per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--dtype", default=_d(PretrainedConfig, "dtype"), choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto: float16 on a GPU, float32 on the CPU")
    p.add_argument("--clip-seconds", type=POS_FLOAT, help="video models: seconds a clip spans (default: one TR)")
    p.add_argument("--vgg-weights", help="vgg16: its weights file vgg16-397923af.pth (default: the torch hub cache)")
    p.add_argument("--source", default=_d(PretrainedConfig, "source"), choices=["video", "frames"],
                   help="video: decode the films' videos at the model's input size; frames: the prepared frames")
    p.set_defaults(func=_run_features)


def _run_features(a) -> int:
    from cinevox.pretrained.extract import extract_features

    cfg = PretrainedConfig(model=a.model, layers=tuple(_csv_list(a.layers) or ()), rate=a.rate, pool=a.pool,
                           pca=a.pca, batch_size=a.batch_size, device=a.device, dtype=a.dtype,
                           clip_seconds=a.clip_seconds, vgg_weights=a.vgg_weights, source=a.source)
    s = extract_features(a.prepared_dir, a.out, cfg)
    dims = ", ".join(f"{la} ({d})" for la, d in s["dims"].items())
    print(f"features: {s['n_films']} films ({s['n_cached']} from the cache), layers {dims} -> {a.out} "
          f"(next: cinevox baseline {a.prepared_dir} --features motion,colour,{a.out} --out RUN)")
    return 0


# ---------------------------------------------------------------- evaluate, compare, report
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="test metrics, nulls, noise ceiling, NIfTI maps -> RUN_DIR/eval")
    p.add_argument("run_dir", type=Path, help="a run (cinevox train or cinevox baseline)")
    p.add_argument("--checkpoint", default="last", help="last (default), best, or epoch_NNN")
    p.add_argument("--n-perm", type=POS_INT, default=_d(EvalConfig, "n_perm"), help="permutations of the voxel nulls")
    p.add_argument("--n-perm-frames", type=POS_INT, default=_d(EvalConfig, "n_perm_frames"),
                   help="permutations of the frame null")
    p.add_argument("--significance-q", type=float, default=_d(EvalConfig, "significance_q"),
                   help="the significance mask (space-*_desc-significant_mask.nii.gz) keeps voxels with q_circular "
                        "below this")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    _trust_option(p)
    add_profile_options(p, ("evaluate",))
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(a) -> int:
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.report.html import headline

    m = evaluate(a.run_dir, EvalConfig(checkpoint=a.checkpoint, n_perm=a.n_perm, n_perm_frames=a.n_perm_frames,
                                       device=a.device, trust_checkpoint=a.trust_checkpoint,
                                       significance_q=a.significance_q, **profile_options(a, ("evaluate",))))
    print(headline(m))
    print(f"metrics: {a.run_dir / 'eval' / 'metrics.json'}")
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="Table I: medians, Mann-Whitney U and Cliff's delta between runs")
    p.add_argument("run_dirs", type=Path, nargs="+", help="evaluated runs (cinevox evaluate)")
    p.add_argument("--out", type=Path, default=Path("."),
                   help="folder for table1.csv, table1.md, tests.csv, paired.csv")
    p.add_argument("--n-boot", type=POS_INT, default=1000, help="block-bootstrap resamples of the paired comparison")
    p.add_argument("--n-perm", type=POS_INT, default=1000, help="block permutations of the paired comparison")
    p.add_argument("--block-trs", type=POS_INT, default=10,
                   help="block length in TRs (longer than the fMRI autocorrelation)")
    p.set_defaults(func=_run_compare)


def _run_compare(a) -> int:
    from cinevox.evaluation.compare import compare

    compare(a.run_dirs, a.out, a.n_boot, a.n_perm, a.block_trs)
    print((a.out / "table1.md").read_text())
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="HTML report with the paper's figures for one or more runs")
    p.add_argument("run_dirs", type=Path, nargs="+", help="evaluated runs (cinevox evaluate)")
    p.add_argument("--out", type=Path, required=True, help="folder for index.html and its figures")
    p.add_argument("--title", default="cinevox report", help="the page's title")
    p.set_defaults(func=_run_report)


def _run_report(a) -> int:
    from cinevox.report.html import report

    path = report(a.run_dirs, a.out, a.title)
    print(f"report: {path}")
    return 0


# ---------------------------------------------------------------- saliency, lesion
def _regions_atlas_options(p, atlas_help: str) -> None:
    """--regions-atlas/--regions-labels, the analysis atlas (AAL3); --atlas/--atlas-labels are deprecated there."""
    p.add_argument("--regions-atlas", help=atlas_help)
    p.add_argument("--regions-labels", help="its label table (TSV: index, label)")
    _alias(p, "--atlas", "--regions-atlas", "regions_atlas")
    _alias(p, "--atlas-labels", "--regions-labels", "regions_labels")


def _atlas_options(p) -> None:
    _regions_atlas_options(p, "AAL3 NIfTI (default: the simulator's regions, else nilearn's AAL fetcher)")
    p.add_argument("--aal-version", default="3v2", choices=["3v2", "SPM12"],
                   help="nilearn fetcher version; SPM12 = the authors' AAL numbering")
    p.add_argument("--inputs", choices=["model", "measured"], default="model",
                   help="decoder inputs: what the run feeds it (encdec: encoder predictions) or measured voxels")
    p.add_argument("--checkpoint", default="last", help="last, best or epoch_NNN")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    _trust_option(p)


def _video_options(p) -> None:
    p.add_argument("--video", type=Path, action="append", dest="videos",
                   help="analyse on the clips of this film instead of the run's test split (repeatable; required "
                        "for an exported MODEL_DIR)")
    p.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/<step>; required for a MODEL_DIR)")


def _stream_options(p) -> None:
    p.add_argument("--max-clips", type=POS_INT,
                   help="analyse this many test clips, evenly spaced over the test split (default: all)")
    p.add_argument("--batch-size", type=POS_INT, default=_d(SaliencyConfig, "batch_size"),
                   help="test clips held at once (memory is bounded by this, not by the test split)")


def _subject_option(p, step: str) -> None:
    p.add_argument("--subject",
                   help=f"a --target subjects model: this viewer's input layer (decoder) or pipeline (encdec), fed "
                        f"the viewer's own voxels and test TRs, e.g. S07, into RUN/{step}_sub-S07 (default: the "
                        "average viewer on the viewers' mean)")


def _add_saliency(sub) -> None:
    p = sub.add_parser("saliency", help="decoder saliency, top voxels and AAL3 region tables -> RUN_DIR/saliency")
    p.add_argument("run_dir", type=Path, help="a run (cinevox train), or an exported MODEL_DIR with --video")
    p.add_argument("--top", type=FRACTION, default=_d(SaliencyConfig, "top"), help="fraction of voxels called salient")
    _subject_option(p, "saliency")
    _atlas_options(p)
    _stream_options(p)
    _video_options(p)
    add_profile_options(p, ("saliency",))
    p.set_defaults(func=_run_saliency)


def _run_saliency(a) -> int:
    from cinevox.analysis.saliency import SaliencyConfig, saliency

    s = saliency(a.run_dir, SaliencyConfig(top=a.top, inputs=a.inputs, atlas=a.regions_atlas,
                                           atlas_labels=a.regions_labels,
                                           aal_version=a.aal_version, checkpoint=a.checkpoint, device=a.device,
                                           max_clips=a.max_clips, batch_size=a.batch_size,
                                           trust_checkpoint=a.trust_checkpoint, subject=a.subject,
                                           **profile_options(a, ("saliency",))),
                 videos=a.videos, out=a.out)
    print(s["text"])
    return 0


def _add_concepts(sub) -> None:
    p = sub.add_parser("concepts", help="concept analysis (TCAV) of the encoder, concept saliency of the decoder")
    p.add_argument("run_dir", type=Path, help="a run (cinevox train), or an exported MODEL_DIR with --video")
    p.add_argument("--concepts", help="comma-separated (default: faces,objects,motion,edges,colour,luminance; "
                   "faces/objects need annotations)")
    p.add_argument("--concept-dir", action="append", default=[], metavar="NAME=FOLDER",
                   help="a concept from a folder of (T, S, S, 3) uint8 .npy clips (repeatable)")
    p.add_argument("--annotations", help="folder of <film>.tsv annotation tables (onset + one column per concept)")
    p.add_argument("--layers", default="temporal,conv4",
                   help="encoder layers, the first one the default: pool2, temporal, conv4")
    p.add_argument("--n-examples", type=_number(int, 2), default=_d(ConceptConfig, "n_examples"),
                   help="clips per concept and random set")
    p.add_argument("--n-random", type=_number(int, 2), default=_d(ConceptConfig, "n_random"),
                   help="random negative sets: CAVs per concept and per pseudo-concept")
    p.add_argument("--n-pseudo", type=_number(int, 19), default=_d(ConceptConfig, "n_pseudo"),
                   help="pseudo-concepts (random training-clip sets treated like a concept): the TCAV test's null, "
                        "p = (k + 1) / (n + 1)")
    p.add_argument("--min-examples", type=_number(int, 2), default=_d(ConceptConfig, "min_examples"),
                   help="fewest training clips that must show a concept")
    p.add_argument("--cav", choices=["mean", "logistic"], default="mean",
                   help="concept vector: class-mean difference (default) or logistic-regression normal")
    p.add_argument("--seed", type=int, default=_d(ConceptConfig, "seed"),
                   help="random seed of the random sets and of the p-values' tie-breaking")
    p.add_argument("--subject",
                   help="a --target subjects model: the encoder side through this viewer's read-out, e.g. S07, into "
                        "RUN/concepts_sub-S07 (default: the average-viewer head)")
    _atlas_options(p)
    _stream_options(p)
    _video_options(p)
    p.set_defaults(func=_run_concepts)


def _run_concepts(a) -> int:
    from cinevox.analysis.concepts import ConceptConfig, concepts

    if a.inputs != "model":
        raise ValueError("--inputs measured is not supported by concepts (the decoder is fed its encoder's "
                         "predictions); use saliency or lesion --inputs measured")
    dirs = {}
    for item in a.concept_dir:
        if "=" not in item:
            raise ValueError(f"--concept-dir {item!r}: expected NAME=FOLDER")
        k, v = item.split("=", 1)
        dirs[k.strip()] = v
    cfg = ConceptConfig(layers=_csv_list(a.layers) or [], n_examples=a.n_examples, n_random=a.n_random, cav=a.cav,
                        n_pseudo=a.n_pseudo,
                        min_examples=a.min_examples, concept_dirs=dirs, annotations=a.annotations,
                        atlas=a.regions_atlas, atlas_labels=a.regions_labels, aal_version=a.aal_version,
                        checkpoint=a.checkpoint, device=a.device, seed=a.seed, trust_checkpoint=a.trust_checkpoint,
                        max_clips=a.max_clips, batch_size=a.batch_size, subject=a.subject)
    if a.concepts is not None:
        cfg.concepts = _csv_list(a.concepts) or []
    s = concepts(a.run_dir, cfg, videos=a.videos, out=a.out)
    from cinevox.analysis.saliency import viewer_step

    print(f"concepts: {(a.out or a.run_dir / viewer_step('concepts', a.subject)) / 'tcav.csv'}")
    for c, v in s.get("validation", {}).items():
        print(f"  {c}: AUC against the simulator's tuning {v[s['default_layer']]['auc']:.2f}")
    return 0


def _add_regions(sub) -> None:
    p = sub.add_parser("regions", help="region composition of a mask (Table II column A; B with --saliency)")
    p.add_argument("mask", type=Path, help="mask NIfTI, or the authors' .npy on the FSL 2 mm grid")
    _regions_atlas_options(p, "AAL3 NIfTI (default: nilearn's AAL fetcher)")
    p.add_argument("--aal-version", default="3v2", choices=["3v2", "SPM12"],
                   help="nilearn's AAL version when no atlas is given; SPM12 = the authors' AAL numbering")
    p.add_argument("--saliency", type=Path, help="saliency map (NIfTI on the mask's grid) for the B columns")
    p.add_argument("--top", type=FRACTION, default=0.2, help="fraction of mask voxels called salient (non-binary map)")
    p.add_argument("--out", type=Path, help="write regions.csv, regions_grouped.csv, regions.json here")
    p.set_defaults(func=_run_regions)


def _run_regions(a) -> int:
    from cinevox.analysis.regions import default_atlas, mask_regions

    atlas, labels = default_atlas({}, a.regions_atlas, a.regions_labels, a.aal_version)
    r = mask_regions(a.mask, atlas, labels, a.saliency, a.top, a.out)
    g = r["grouped"]
    print(f"{a.mask}: {r['n_voxels']} voxels, {r['n_unlabelled']} without an atlas label (left out of the "
          "percentages, as the paper's Table II)")
    print(g.to_string(index=False, float_format=lambda v: f"{v:.1f}", na_rep=""))
    if a.out:
        print(f"tables: {a.out / 'regions.csv'}, {a.out / 'regions_grouped.csv'}")
    return 0


def _add_lesion(sub) -> None:
    p = sub.add_parser("lesion", help="virtual lesions: drop of identification, frame correlation and SSIM per region "
                                      "against random voxel sets")
    p.add_argument("run_dir", type=Path, help="a run (cinevox train or cinevox baseline)")
    p.add_argument("--regions", help="comma-separated regions (default: all with enough voxels)")
    p.add_argument("--level", choices=["group", "label"], default="group",
                   help="the paper's region groups or full AAL3 labels")
    p.add_argument("--mode", choices=["zero", "mean", "scale"], default=_d(LesionConfig, "mode"),
                   help="what a lesion does to the region's voxels: set to 0, to their mean, or multiply by --scale")
    p.add_argument("--scale", type=NONNEG_FLOAT, default=0.0, help="factor for --mode scale")
    p.add_argument("--n-null", type=POS_INT, default=_d(LesionConfig, "n_null"), help="random voxel sets per region")
    p.add_argument("--score", choices=["ident", "corr", "ssim"], default=_d(LesionConfig, "score"),
                   help="the score that ranks the regions: identification of the true frame among the test frames, "
                        "frame correlation, or SSIM (which rewards a decoder pulled toward its mean image)")
    p.add_argument("--n-boot", type=POS_INT, default=_d(LesionConfig, "n_boot"),
                   help="block-bootstrap resamples of the test TRs for the drops' 95 %% intervals")
    _subject_option(p, "lesion")
    _atlas_options(p)
    p.set_defaults(func=_run_lesion)


def _run_lesion(a) -> int:
    from cinevox.analysis.lesion import LesionConfig, lesion

    df = lesion(a.run_dir, LesionConfig(regions=_csv_list(a.regions), level=a.level, mode=a.mode, scale=a.scale,
                                        n_null=a.n_null, inputs=a.inputs, atlas=a.regions_atlas,
                                        atlas_labels=a.regions_labels,
                                        aal_version=a.aal_version, checkpoint=a.checkpoint, device=a.device,
                                        trust_checkpoint=a.trust_checkpoint, score=a.score, n_boot=a.n_boot,
                                        subject=a.subject))
    cols = ["rank", "region", "n_voxels"] + [f"{sc}_{c}" for sc in ("ident", "corr", "ssim")
                                              for c in ("drop", "drop_ci_low", "drop_ci_high", "z")]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


# ---------------------------------------------------------------- using a trained model: export, predict, decode
def _region_table_options(p, atlas_help: str) -> None:
    """--regions-atlas, --regions-labels, --aal-version of the commands that label a model's voxels (export,
    predict)."""
    _regions_atlas_options(p, atlas_help)
    p.add_argument("--aal-version", default="3v2", choices=["3v2", "SPM12"],
                   help="nilearn's AAL version when no atlas is given (default: 3v2)")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a self-contained model folder (safetensors, config, mask, model card)")
    p.add_argument("run_dir", type=Path, help="a run of cinevox train or cinevox baseline")
    p.add_argument("--out", type=Path, required=True, help="MODEL_DIR to write")
    p.add_argument("--checkpoint", default="last", help="last, best or epoch_NNN (default: last)")
    _region_table_options(p, "AAL3 NIfTI for the voxels' region table (default: the run's own, if any)")
    _trust_option(p)
    p.set_defaults(func=_run_export)


def _run_export(a) -> int:
    from cinevox.inference.bundle import export_model

    out = export_model(a.run_dir, a.out, a.checkpoint, a.trust_checkpoint, a.regions_atlas, a.regions_labels,
                       a.aal_version)
    print(f"model folder: {out} (cinevox predict {out} VIDEO --out DIR)")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="the predicted brain response to any video (4D NIfTI, JSON, region table)")
    p.add_argument("model", type=Path, help="a run folder (CNN or ridge) or an exported MODEL_DIR")
    p.add_argument("videos", type=Path, nargs="+", help="video files of any length, frame rate and size")
    p.add_argument("--out", type=Path, required=True, help="folder for <video>_pred.nii.gz, .json, _regions.tsv")
    p.add_argument("--batch-size", type=POS_INT, default=8,
                   help="clips per forward pass (at 112 px x 32 frames, 8 clips take ~1.8 GB; more on a GPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--checkpoint", default="last", help="last, best or epoch_NNN, for a run (default: last)")
    p.add_argument("--subject",
                   help="a --target subjects model: predict for this viewer's read-out, e.g. S07 (default: the "
                        "average-viewer head)")
    _region_table_options(p, "AAL3 NIfTI for the region time courses (default: the model's own, else AAL3)")
    _trust_option(p)
    p.set_defaults(func=_run_predict)


def _run_predict(a) -> int:
    from cinevox.inference.predict import predict

    for r in predict(a.model, a.videos, a.out, a.batch_size, a.device, a.regions_atlas, a.regions_labels,
                     a.aal_version, a.checkpoint, a.trust_checkpoint, subject=a.subject):
        print(f"{r['video']}: {r['n_clips']} clips ({r['clips_per_s']:.1f} clips/s) -> {r['nifti']}")
    return 0


def _add_decode(sub) -> None:
    p = sub.add_parser("decode", help="reconstruct one frame per TR from scans with a decoder or encdec model")
    p.add_argument("model", type=Path, help="a run folder (decoder or encdec) or an exported MODEL_DIR")
    p.add_argument("bolds", type=Path, nargs="+",
                   help="preprocessed 4D scans of one film in the model's space (several: prepared, then averaged)")
    p.add_argument("--out", type=Path, required=True, help="folder for decoded.mp4, decoded.png, decoded.tsv")
    p.add_argument("--events", type=Path, action="append",
                   help="BIDS events file with the film's row (trial_type film): one, or one per scan")
    p.add_argument("--onset", type=NONNEG_FLOAT, help="film onset in the scans, seconds (instead of --events)")
    p.add_argument("--n-trs", type=POS_INT, help="TRs to decode (default: to the film's end: the events' duration, "
                   "the video's length or --film's; else to the end of the scan)")
    p.add_argument("--reference-video", type=Path,
                   help="the film the scans watched, to compare against: its frames beside the decoded ones, SSIM "
                        "per TR")
    _alias(p, "--video", "--reference-video", "reference_video", type=Path)
    p.add_argument("--film", help="a film of the model's training data: the decoded window ends with it")
    p.add_argument("--subject", help="a --target subjects decoder: the scans' viewer, e.g. S07, decoded through its "
                                     "input layer (default: the average viewer's)")
    p.add_argument("--confounds-file", dest="confounds_files", type=Path, action="append",
                   help="the scan's fMRIPrep confounds TSV, one per scan (default: beside each scan); needed for a "
                        "model prepared with --confounds")
    p.add_argument("--batch-size", type=POS_INT, default=32, help="TRs per decoder pass (default: 32)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--checkpoint", default="last", help="last, best or epoch_NNN, for a run (default: last)")
    _trust_option(p)
    p.set_defaults(func=_run_decode)


def _run_decode(a) -> int:
    from cinevox.inference.decode import decode

    s = decode(a.model, a.bolds, a.out, a.onset, a.events, a.reference_video, a.n_trs, a.batch_size, a.device,
               a.checkpoint, a.trust_checkpoint, confounds=a.confounds_files, film=a.film, subject=a.subject)
    extra = f", SSIM with the film {s['ssim_mean']:.3f}" if "ssim_mean" in s else ""
    print(f"decoded {s['n_trs']} TRs{extra}: {a.out / 'decoded.mp4'}")
    return 0


# ---------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on built-in simulated data (a few CPU minutes)")
    p.add_argument("--out", type=Path, default=Path("cinevox-demo"), help="folder for every step and the report")
    p.add_argument("--seed", type=int, default=_d(DemoConfig, "seed"),
                   help="random seed of the simulation and training")
    p.add_argument("--epochs", type=POS_INT, default=_d(DemoConfig, "epochs"),
                   help="training epochs of the encoder and encdec models")
    p.add_argument("--device", default=_d(DemoConfig, "device"), help="auto (CUDA when present), cpu, cuda ...")
    p.add_argument("--vgg-weights", help="vgg16-397923af.pth for a real perceptual loss")
    p.set_defaults(func=_run_demo)


def _run_demo(a) -> int:
    from cinevox.demo import DemoConfig, demo

    s = demo(a.out, DemoConfig(seed=a.seed, epochs=a.epochs, device=a.device, vgg_weights=a.vgg_weights))
    for kind, text in s["headline"].items():
        print(f"{kind}: {text}")
    print(f"saliency: {s['saliency']['text']}")
    print(f"lesion ranking (most damaging first): {', '.join(s['lesion_ranking'])}")
    if s.get("concepts"):
        print("concepts, ROC AUC of TCAV against the simulator's tuning: "
              + ", ".join(f"{c} {v['temporal']['auc']:.2f}" for c, v in s["concepts"].items() if "temporal" in v))
    print(f"demo finished in {s['total_seconds']:.0f} s")
    print(f"report: {s['report']}")
    return 0


# ---------------------------------------------------------------- main
class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``cinevox prepare: error: argument --jobs: 0 must be >= 1``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cinevox",
        description="Relate fMRI brain activity to naturalistic movies: simulate -> prepare -> train -> "
        "evaluate / saliency / lesion -> compare / report (or `cinevox demo` for all of it).",
    )
    parser.add_argument("--version", action="version", version=f"cinevox {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", default=False, help="warnings only")
    parser.add_argument("--debug", action="store_true", default=False, help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(_SubParsers(sub))
    return parser


class _SubParsers:
    """Adds -v/-q to every subcommand too (``cinevox demo -q`` as well as ``cinevox -q demo``)."""

    def __init__(self, sub) -> None:
        self.sub = sub

    def add_parser(self, name: str, **kw):
        kw.setdefault("formatter_class", _HelpFormatter)
        p = self.sub.add_parser(name, **kw)
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging")
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings only")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
        return p


_COMMANDS = [_add_simulate, _add_prepare, _add_train, _add_grid, _add_baseline, _add_evaluate, _add_compare,
             _add_report, _add_saliency, _add_lesion, _add_concepts, _add_regions, _add_export, _add_predict,
             _add_decode, _add_demo]
_COMMANDS.insert(_COMMANDS.index(_add_baseline), _add_features)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    setup_logging(-1 if args.quiet else args.verbose)
    from cinevox import outputs  # light: the command recorded in dataset_description.json files

    outputs.COMMAND = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"cinevox {args.command}: interrupted (finished steps are kept; rerun to resume)", file=sys.stderr)
        return 130
    except Exception as err:  # one line for every failure; the traceback only with --debug
        if args.debug:
            raise
        expected = isinstance(err, (ValueError, OSError, RuntimeError, KeyError, EOFError))
        text = " ".join(str(err).split()) or type(err).__name__
        if not expected or isinstance(err, (KeyError, EOFError)):
            text = f"{type(err).__name__}: {text}"
        hint = "" if expected else " (an unexpected error: rerun with --debug for the traceback)"
        print(f"cinevox {args.command}: error: {text}{hint}", file=sys.stderr)
        return 2
    finally:
        outputs.COMMAND = None


def entry() -> None:
    """The ``cinevox`` console script and ``python -m cinevox``: :func:`main`, then exit with its status.

    A process that joined a torch.distributed process group (a ``torchrun`` worker of ``train``) and whose command
    finished, its outputs saved and its group destroyed, exits without the interpreter's teardown (``os._exit``
    after flushing Python's and C's buffers): there libtorch's threads (gloo's, the thread pools') are destroyed
    in no set order, and a worker once aborted at exit ("terminate called without an active exception", exit -6)
    after a finished run, which torchrun reports as a failed run."""
    code = main()
    dist = sys.modules.get("cinevox.training.distributed")  # imported (with torch) only by commands that train
    if code == 0 and getattr(dist, "STARTED", False):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        try:  # what libtorch wrote through C's stdio
            import ctypes

            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass
        os._exit(0)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
