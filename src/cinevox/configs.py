"""Every step's options, as config dataclasses, in one light module.

The command line shows their defaults (``cli._d``) without importing torch or scipy: this module imports only the
standard library, numpy and :mod:`cinevox.profiles`. The step modules re-export their config
(``from cinevox.training import TrainConfig`` keeps working); validations that need heavy helpers import them
inside ``validate``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from cinevox.profiles import apply_profile
from cinevox.utils.names import model_kind

#: The Emo-FilM (ds004892) preprocessed BOLD files, relative to the dataset root.
DEFAULT_BOLD_PATTERN = "derivatives/preprocessing/sub-*/ses-*/func/*_task-*_space-MNI_desc-ppres_bold.nii*"
#: The ridge baseline's hand-made feature spaces (``cinevox.data.features``).
FEATURE_SPACES = ("motion", "colour")
#: Encoder layers whose activations concepts (TCAV) can read (``cinevox.models.encoder``).
CONCEPT_LAYERS = ("pool2", "temporal", "conv4")
#: Concepts measured from the frames themselves, and concepts read from annotation tables.
MEASURED = ("motion", "edges", "colour", "luminance")
ANNOTATED = ("faces", "objects")


# ---------------------------------------------------------------- data/prepare.py
@dataclass
class PrepareConfig:
    """Options of ``cinevox prepare`` (a JSON/TOML config file may hold any of them)."""

    films_dir: str = ""
    layout: str = "auto"  # "emofilm" (ds004892's derivatives), "bids" (raw or fMRIPrep) or "auto"
    bold_pattern: str = DEFAULT_BOLD_PATTERN  # emofilm layout
    subjects: list[str] | None = None
    films: list[str] | None = None
    tasks: list[str] | None = None  # bids layout: tasks to read (default: every task with stimuli)
    filters: list[str] | None = None  # bids layout: "acq=dico", "rec=..." entity filters
    derivatives: str | None = None  # fMRIPrep folder (default BIDS/derivatives/fmriprep when it exists)
    space: str = "MNI152NLin2009cAsym"
    res: str | None = None
    desc: str = "preproc"
    confounds: str | None = None  # nilearn load_confounds strategies, e.g. "motion,wm_csf,high_pass"
    tr: float | None = None  # overrides every sidecar
    trial_type: str = "film"  # events rows that are the stimulus (without a stim_file column)
    lead_in: list[str] | None = None  # trial types that replay the start of the next stimulus (not used)
    stim_name: str = "{task}"  # stimulus file of a run without stim_file rows ({task}, {run}, {sub}, {ses})
    timeline: str | None = None  # TSV: sub ses task run stim_file onset stim_start duration [film segment]
    segments: str = "auto"  # grouping of <film><NN> stimuli into one film: "auto", "none" or a regex
    segment_overlap: float = 0.0  # seconds each later segment repeats of the previous one (dropped)
    split: str = "films"  # "films" (the paper's per-film 80/20 + held-out film) or "stimuli" (whole stimuli)
    split_seed: int = 0  # order of the stimuli for --split stimuli
    max_trim_trs: int = 2  # a run this many TRs shorter than its stimuli is trimmed; more is an error
    mask: str | None = None  # ready mask (NIfTI or the authors' .npy)
    atlas: str | None = None  # Schaefer-style label image
    atlas_labels: str | None = None
    nilearn_data_dir: str | None = None
    delay_trs: int = 4
    detrend: str = "mean"  # "mean" (baseline) or "linear"
    snr: str = "paper"  # "paper" or "ceiling"
    snr_top: float = 0.3
    frame_size: int = 112
    frames_per_tr: int = 32
    heldout_film: str | None = None  # None: YouAgain in the Emo-FilM layout, no held-out film otherwise
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    val_mode: str | None = None  # "blocked" or "interleaved" (the authors'); None: profile
    gap_trs: int = 5
    val_blocks: int = 4
    max_bad_fraction: float = 0.5  # above this share of non-finite mask voxels a run is an error
    tr_tolerance: float = 1e-3
    hash_inputs: bool = False
    jobs: int = 1
    visual_parcels: str = "names"  # "names" (_Vis parcels), "kong2022" (the paper's label ranges) or "420-450,..."
    assume_mni: bool = False  # read BOLD headers whose codes are 0 (or sform 1, scanner) as MNI (their sform matrix)
    profile: str = "paper"  # table of choices (cinevox.profiles); the None fields below come from it
    frame_intensity: str | None = None  # "raw" (uint8 / 255) or "minmax" (per frame, the authors')
    frame_resize: str | None = None  # "area" or "skimage"
    frame_sampling: str | None = None  # "timestamp" or "linspace"
    snr_ddof: int | None = None
    snr_film_weight: str | None = None  # "mean" or "length"
    select_on: str | None = None  # voxel-selection SNR on "all" TRs (paper, authors) or "trainval"; None: profile

    def validate(self) -> None:
        apply_profile(self, "prepare")
        if self.detrend not in ("mean", "linear"):
            raise ValueError(f"detrend must be 'mean' or 'linear', got {self.detrend!r}")
        if self.snr not in ("paper", "ceiling"):
            raise ValueError(f"snr must be 'paper' or 'ceiling', got {self.snr!r}")
        if not 0 < self.snr_top <= 1:
            raise ValueError(f"snr_top must lie in (0, 1], got {self.snr_top}")
        if self.frames_per_tr < 2 or self.frames_per_tr % 2:
            raise ValueError(f"frames_per_tr must be even and >= 2, got {self.frames_per_tr}")
        if self.frame_size % 8:
            raise ValueError(f"frame_size must be a multiple of 8, got {self.frame_size}")
        if self.delay_trs < 0:
            raise ValueError(f"delay_trs must be >= 0, got {self.delay_trs}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.gap_trs < 0:
            raise ValueError(f"gap_trs must be >= 0, got {self.gap_trs}")
        if self.val_blocks < 1:
            raise ValueError(f"val_blocks must be >= 1, got {self.val_blocks}")
        if not 0 < self.test_fraction < 1 or not 0 < self.val_fraction < 1:
            raise ValueError("test_fraction and val_fraction must lie in (0, 1)")
        if not self.films_dir:
            raise ValueError("--films-dir FOLDER (the film videos) is required")
        if self.visual_parcels != "names":
            from cinevox.data.masks import parse_parcel_ranges

            parse_parcel_ranges(self.visual_parcels)
        if self.layout not in ("auto", "emofilm", "bids"):
            raise ValueError(f"layout must be auto, emofilm or bids, got {self.layout!r}")
        if self.split not in ("films", "stimuli"):
            raise ValueError(f"split must be 'films' or 'stimuli', got {self.split!r}")
        if self.tr is not None and self.tr <= 0:
            raise ValueError(f"tr must be positive, got {self.tr}")
        if self.segment_overlap < 0 or self.max_trim_trs < 0:
            raise ValueError("segment_overlap and max_trim_trs must be >= 0")
        if self.segments not in ("auto", "none"):
            try:
                pat = re.compile(self.segments)
            except re.error as err:
                raise ValueError(f"segments: not a regular expression ({err})") from None
            if not {"film", "seg"} <= set(pat.groupindex):
                raise ValueError("segments: the regular expression needs groups (?P<film>...) and (?P<seg>...)")
        for f in self.filters or []:
            if "=" not in f:
                raise ValueError(f"filter {f!r}: expected ENTITY=VALUE (e.g. acq=dico)")
        if self.confounds:
            from cinevox.data.prepare import confound_strategy

            confound_strategy(self.confounds)


# ---------------------------------------------------------------- models/encdec.py
@dataclass
class ModelConfig:
    """What builds a model; saved inside every checkpoint."""

    kind: str = "encdec"  # "encoder" | "decoder" | "encdec"
    n_voxels: int = 4609
    n_frames: int = 32
    frame_size: int = 112
    dropout: float = 0.5
    final_batchnorm: bool = False
    subjects: list[str] | None = None  # viewers of a --target subjects model (one read-out / input layer each)
    subject_rank: int = 64
    # "centered": the per-viewer corrections sum to 0 over the viewers, so that the average viewer's read-out / input
    # layer is the mean of the viewers'; "free" (--target subjects models of cinevox 0.x before it: no constraint)
    subject_heads: str = "centered"


def model_config_from(d: dict) -> ModelConfig:
    """A saved model configuration; one of a ``--target subjects`` model saved before ``subject_heads`` existed had
    free corrections."""
    d = dict(d)
    if d.get("subjects") and "subject_heads" not in d:
        d["subject_heads"] = "free"
    return ModelConfig(**d)


# ---------------------------------------------------------------- losses/endtoend.py
@dataclass
class LossConfig:
    """Loss weights (paper values) and where the VGG16 weights come from."""

    alpha: float = 0.5
    beta: float = 0.35
    gamma: float = 0.35
    delta: float = 0.30
    eps: float = 0.5
    mse_over_voxels: bool | None = None  # the authors' extra division of the MSE by V (None: profile)
    vgg_weights: str | None = None  # explicit file; else torch hub cache, else the official URL
    vgg_allow_random: bool = False  # fall back to a random VGG16 (logged) when no weights are found
    perceptual_input: str | None = None  # "imagenet" | "authors" (Resize 224 + batch min-max); None: profile
    perceptual_resize: int | None = None  # explicit size before VGG16 ("authors" input: 224 unless given)


# ---------------------------------------------------------------- training/train.py
def parse_target(target: str) -> tuple[str, str | None]:
    """``--target``: ``"mean"``, ``"subjects"`` or ``"subject:S07"`` -> (mode, viewer or None)."""
    if target in ("mean", "subjects"):
        return target, None
    if target.startswith("subject:") and len(target) > len("subject:"):
        s = target.split(":", 1)[1]
        return "subject", s.removeprefix("sub-")
    raise ValueError(f"--target must be mean, subjects or subject:<ID> (e.g. subject:S07), got {target!r}")


@dataclass
class TrainConfig:
    """Options of ``cinevox train`` (defaults: the paper's best model, E-D(4609), 11 epochs)."""

    model: str = "encdec"  # "encoder" | "decoder" | "encdec"
    epochs: int = 11
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0  # Adam L2 penalty (the paper uses none)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast on CUDA
    cpu_bf16: bool = False  # bfloat16 autocast on the CPU too (about 2x on CPUs with native bf16: AVX512-BF16, AMX)
    num_workers: int = 0  # unused since batches are gathered whole (ClipBatches); kept so old configs load
    dropout: float = 0.5
    final_batchnorm: bool | None = None  # the authors' BatchNorm after the sigmoid (None: profile)
    keep_epochs: list[int] = field(default_factory=list)  # also save weights after these epochs
    select_epochs: list[int] | None = None  # best.pt only among these epochs (None: all)
    select_score: str = "loss"  # best.pt by "loss" (the run's own L) or "paper" (0.5 L_E + 0.5 L_D, grid cells)
    tensorboard: bool = True
    sync_bn: bool = False  # with several processes: BatchNorm statistics of the global batch
    compile: bool = False  # torch.compile the model (less GPU memory; no faster on an H200 or on CPUs, measured)
    stage: bool | None = None  # uint8 frames on the GPU: None decides after a first step from measured memory
    max_steps: int | None = None  # at most this many training (and validation) batches per epoch: smoke tests
    profile: str = "paper"  # table of choices (cinevox.profiles): "paper" or "authors"
    loss: LossConfig = field(default_factory=LossConfig)
    target: str = "mean"  # "mean" (the paper), "subject:S07" (one viewer) or "subjects" (every viewer, shared trunk)
    holdout_subjects: list[str] | None = None  # viewers kept out of training (evaluate scores them)
    subject_dropout: float = 0.2  # --target subjects: share of (clip, viewer) pairs trained through the average head
    subject_rank: int = 64  # --target subjects: rank of each viewer's read-out / input-layer correction

    def validate(self) -> None:
        apply_profile(self, "train")
        if self.select_score not in ("loss", "paper"):
            raise ValueError(f"select_score must be 'loss' or 'paper', got {self.select_score!r}")
        self.model = model_kind(self.model)  # "ED"/"E-D": deprecated spellings of "encdec"
        if self.model not in ("encoder", "decoder", "encdec"):
            raise ValueError(f"--model must be encoder, decoder or encdec, got {self.model!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}")
        parse_target(self.target)
        if not 0 <= self.subject_dropout < 1 or self.subject_rank < 1:
            raise ValueError(f"--subject-dropout must lie in [0, 1) and --subject-rank be >= 1 (got "
                             f"{self.subject_dropout}, {self.subject_rank})")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive (got {self.epochs}, {self.batch_size}, "
                             f"{self.lr})")


# ---------------------------------------------------------------- evaluation/evaluate.py
@dataclass
class EvalConfig:
    checkpoint: str = "last"
    profile: str = "paper"  # recorded; the metric conventions are the paper's in both profiles
    n_perm: int = 1000  # voxel-time-course nulls
    n_perm_frames: int = 100  # shuffled-frame nulls (SSIM is costlier)
    n_splits: int = 50  # split-half halvings for the noise ceiling
    seed: int = 0
    batch_size: int = 8  # clips per forward pass: at 112 px x 32 frames, 32 clips take ~7 GB of activations
    device: str | None = None
    trust_checkpoint: bool = False  # read checkpoints of older cinevox versions (full unpickling)
    significance_q: float = 0.05  # the significance mask: voxels with q_circular below this


# ---------------------------------------------------------------- data/features.py
@dataclass
class FeatureConfig:
    spaces: tuple[str, ...] = FEATURE_SPACES
    motion_size: int | None = None  # grey frames resized to this side for pymoten (None: the prepared size)
    temporal_frequencies: tuple[float, ...] = (0.0, 2.0, 4.0)  # Hz, pymoten's default
    spatial_frequencies: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0, 16.0)  # cycles per image, pymoten's default
    colour_grid: int = 4
    chunk_trs: int = 64  # TRs per pymoten call (memory bound)
    motion_backend: str = "torch"  # "torch" (the same filter bank as matrix products, CPU or GPU) or "pymoten"

    def validate(self) -> None:
        bad = sorted(set(self.spaces) - set(FEATURE_SPACES))
        if bad or not self.spaces:
            raise ValueError(f"feature spaces must be among {FEATURE_SPACES}, got {list(self.spaces)}")
        if self.motion_backend not in ("torch", "pymoten"):
            raise ValueError(f"motion backend must be torch or pymoten, got {self.motion_backend!r}")
        if self.colour_grid < 1 or self.chunk_trs < 1:
            raise ValueError("colour_grid and chunk_trs must be >= 1")


# ---------------------------------------------------------------- training/ridge.py
@dataclass
class RidgeConfig:
    """Options of ``cinevox baseline``."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    #: pretrained feature spaces, one band each: ``FEATURES_DIR:LAYER`` (``cinevox features`` folders)
    pretrained: tuple[str, ...] = ()
    delays: tuple[int, ...] = (-1, 0, 1, 2)  # TRs, relative to the prepared shift
    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 7, 19))
    n_iter: int = 20  # random search over the feature-space weights (banded ridge; 1 with one space)
    n_folds: int = 5  # cross-validation folds, grouped by film
    backend: str = "auto"  # "auto" (torch_cuda when CUDA is there, else numpy), "numpy", "torch", "torch_cuda"
    seed: int = 0
    n_targets_batch: int = 2048  # voxels solved at once (memory bound)

    def validate(self) -> None:
        if self.features.spaces or not self.pretrained:
            self.features.validate()
        names = list(self.features.spaces) + [band_name(*p.rsplit(":", 1)) for p in self.pretrained]
        if len(set(names)) != len(names):
            raise ValueError(f"--features: two feature spaces share a band name ({', '.join(names)}); give each "
                             "features folder its own name")
        if not self.delays or len(set(self.delays)) != len(self.delays):
            raise ValueError(f"delays must be distinct TR offsets, got {list(self.delays)}")
        if not self.alphas or min(self.alphas) <= 0:
            raise ValueError("alphas must be positive")
        if self.n_iter < 1 or self.n_folds < 2:
            raise ValueError("n_iter must be >= 1 and n_folds >= 2")
        if self.backend not in ("auto", "numpy", "torch", "torch_cuda"):
            raise ValueError(f"backend must be auto, numpy, torch or torch_cuda, got {self.backend!r}")


def band_name(features_dir: str, layer: str) -> str:
    """The band name of a pretrained feature space in a ridge run: ``<folder name>_<layer>`` (letters, digits, _,
    -)."""
    import re
    from pathlib import PurePath

    return re.sub(r"[^A-Za-z0-9_-]+", "_", f"{PurePath(features_dir).name}_{layer}")


# ---------------------------------------------------------------- pretrained/extract.py
@dataclass
class PretrainedConfig:
    """Options of ``cinevox features``."""

    model: str = ""  # a Hugging Face id or folder, vgg16, a cinevox run, or simulator
    layers: tuple[str, ...] = ()  # empty: the model's defaults (about 1/2, 3/4 and the last of its depth)
    rate: float | None = 2.0  # samples per second; None: one per TR
    pool: str = "mean"  # mean, cls or gridG
    pca: int = 0  # components per layer, fitted on training TRs (0: none)
    batch_size: int = 16  # samples per forward pass (memory bound)
    device: str | None = None  # default: CUDA when present
    dtype: str = "auto"  # auto (float16 on a GPU, float32 on the CPU), float32, float16, bfloat16
    clip_seconds: float | None = None  # video models: seconds a clip spans (default one TR)
    vgg_weights: str | None = None  # vgg16: its weights file
    image_size: int = 224  # vgg16: input side
    source: str = "video"  # "video": the films' videos at the model's input size; "frames": the prepared frames

    def validate(self) -> None:
        import re

        if not self.model:
            raise ValueError("--model is required (a Hugging Face id or folder, vgg16, a cinevox run, simulator)")
        if self.source not in ("video", "frames"):
            raise ValueError(f"--source must be video or frames, got {self.source!r}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"--rate must be > 0 samples per second or 'tr', got {self.rate}")
        if self.pca < 0 or self.batch_size < 1:
            raise ValueError("--pca must be >= 0 and --batch-size >= 1")
        if self.clip_seconds is not None and not self.clip_seconds > 0:
            raise ValueError("--clip-seconds must be > 0")
        if self.pool not in ("mean", "cls") and not (re.fullmatch(r"grid(\d+)", self.pool) and int(self.pool[4:])):
            raise ValueError(f"--pool must be mean, cls or gridG (G >= 1, e.g. grid2), got {self.pool!r}")


# ---------------------------------------------------------------- analysis/saliency.py
@dataclass
class SaliencyConfig:
    top: float = 0.2
    inputs: str = "model"  # "model": what the decoder reads in the run; "measured": the measured voxels
    atlas: str | None = None
    atlas_labels: str | None = None
    aal_version: str = "3v2"  # nilearn fetcher: "3v2" (AAL3) or "SPM12" (the authors' AAL numbering)
    checkpoint: str = "last"
    batch_size: int = 8  # test clips at once (at 112 px x 32 frames, 8 clips' activations take ~1.8 GB)
    max_clips: int | None = None  # this many test clips, evenly spaced over the test split (None: all)
    device: str | None = None
    profile: str = "paper"
    saliency_frames: str | None = None  # "minmax" (the authors') or "raw"; None: profile
    trust_checkpoint: bool = False
    subject: str | None = None  # a --target subjects model: this viewer's input layer and voxels (None: average)


# ---------------------------------------------------------------- analysis/lesion.py
@dataclass
class LesionConfig:
    regions: list[str] | None = None  # region names to lesion (default: every region with >= min_voxels)
    level: str = "group"  # "group" (the paper's regions) or "label" (full AAL3)
    mode: str = "zero"  # "zero" | "mean" | "scale"
    scale: float = 0.0
    n_null: int = 50
    min_voxels: int = 5
    inputs: str = "model"
    atlas: str | None = None
    atlas_labels: str | None = None
    aal_version: str = "3v2"
    checkpoint: str = "last"
    seed: int = 0
    batch_size: int = 64
    device: str | None = None
    trust_checkpoint: bool = False
    score: str = "ident"  # ranking score: "ident" (identification), "corr" (frame correlation) or "ssim"
    n_boot: int = 1000  # block-bootstrap resamples of the test TRs for the drops' intervals
    block_trs: int = 10
    subject: str | None = None  # a --target subjects model: this viewer's input layer and voxels (None: average)


# ---------------------------------------------------------------- analysis/concepts.py
@dataclass
class ConceptConfig:
    concepts: list[str] = field(default_factory=lambda: list(ANNOTATED + MEASURED))
    layers: list[str] = field(default_factory=lambda: ["temporal", "conv4"])  # the first is the default layer
    n_examples: int = 40  # clips per concept set and per random set
    n_random: int = 10  # random negative sets: CAVs per concept (and per pseudo-concept)
    n_pseudo: int = 100  # pseudo-concepts (random sets treated like a concept): the null of the TCAV test
    cav: str = "mean"  # "mean" (class-mean difference) or "logistic" (logistic-regression normal)
    min_examples: int = 10
    concept_dirs: dict[str, str] = field(default_factory=dict)  # name -> folder of (T, S, S, 3) uint8 .npy clips
    annotations: str | None = None  # folder of <film>.tsv (onset + one column per concept)
    top: float = 0.2  # decoder side: fraction of voxels called salient
    atlas: str | None = None
    atlas_labels: str | None = None
    aal_version: str = "3v2"
    checkpoint: str = "last"
    device: str | None = None
    subject: str | None = None  # a --target subjects model: this viewer's read-out / pipeline (None: the average)
    batch_size: int = 8  # test clips at once (at 112 px x 32 frames, 8 clips' activations take ~1.8 GB)
    max_clips: int | None = None  # analyse this many test clips, evenly spaced over the test split (None: all)
    seed: int = 0
    trust_checkpoint: bool = False

    def validate(self) -> None:
        bad = [layer for layer in self.layers if layer not in CONCEPT_LAYERS]
        if bad or not self.layers:
            raise ValueError(f"unknown encoder layer(s) {bad}: use {', '.join(CONCEPT_LAYERS)}")
        if self.cav not in ("mean", "logistic"):
            raise ValueError(f"--cav must be mean or logistic, got {self.cav!r}")
        if self.n_random < 2 or self.n_examples < 2 or self.min_examples < 2:
            raise ValueError("n_random, n_examples and min_examples must be >= 2")
        if self.n_pseudo < 19:
            raise ValueError(f"--n-pseudo must be >= 19 (p = rank / (n_pseudo + 1)), got {self.n_pseudo}")
        if not self.concepts and not self.concept_dirs:
            raise ValueError("no concepts to analyse")
        if self.max_clips is not None and self.max_clips < 1:
            raise ValueError(f"--max-clips must be >= 1, got {self.max_clips}")


# ---------------------------------------------------------------- simulate/config.py
@dataclass
class SimConfig:
    """Everything the simulator does is set here; ``truth.json`` records it with the seed.

    Durations are in seconds; ``films`` maps film name -> duration.
    """

    seed: int = 0
    n_subjects: int = 3
    subjects: list[str] | None = None  # subset of subject ids to write (e.g. ["S01", "S02"])
    films: dict[str, float] = field(default_factory=lambda: {"FilmA": 52.0, "FilmB": 52.0, "YouAgain": 39.0})
    tr: float = 1.3
    washout: float = 6.5  # fixation-cross rest before and after each film (90 s in Emo-FilM)
    onset_extra: float = 1.3  # film onset = washout + onset_extra (Emo-FilM: ~93.8 s)
    max_trs: int | None = None  # cap each film's length in TRs (for quick subsets of big presets)
    fps: float = 10.0
    film_width: int = 64
    film_height: int = 48
    voxel_size: float = 8.0  # synthetic MNI grid (mm); ignored when an atlas is given
    atlas: str | None = None  # Schaefer-1000 NIfTI on an MNI grid (then the data use that grid)
    atlas_labels: str | None = None  # its label table (index + name)
    regions_atlas: str | None = None  # AAL3 NIfTI (regions of the visual mask)
    regions_labels: str | None = None  # AAL3 label table
    region_scale: float = 1.5  # enlarges the synthetic regions so coarse grids keep enough voxels
    informative_regions: list[str] = field(default_factory=lambda: ["Calcarine", "Fusiform"])
    # outside the informative regions the shared signal is mostly driven by non-visual latent processes
    # (narrative, sound, arousal): as reliable across subjects, but not decodable from the frames
    uninformative_visual_share: float = 0.3  # correlation of their shared signal with the stimulus-driven one
    n_latent: int = 3  # non-visual latent time courses per film
    log10_snr_mean: float = -0.6  # per-subject SNR (shared signal var / noise var)
    informative_log10_snr_boost: float = 0.25  # early visual and fusiform cortex are among the most reliable
    log10_snr_sd: float = 0.35
    snr_smoothness_mm: float = 8.0
    tuning_smoothness_mm: float = 10.0
    ar_coef: float = 0.4  # AR(1) coefficient of the noise, per TR
    drift_sd: float = 0.3  # slow drift, relative to the noise sd
    subject_gain_sd: float = 0.15
    p_missing: float = 0.0  # probability that a subject misses a film
    null_fraction: float = 0.0  # share of visual voxels with no stimulus signal at all (true nulls; still reliable)
    # each viewer's channel weights = the shared weights + subject_variability x a viewer-specific part (issue 26)
    subject_variability: float = 0.0
    feature_grid: int = 12  # visual-field resolution of the feature maps
    films_dir: str | None = None  # real films to use instead of rendering (then only brains are simulated)
    compresslevel: int = 1

    def film_trs(self, duration: float) -> int:
        n = int(duration / self.tr + 1e-6)
        return min(n, self.max_trs) if self.max_trs else n

    def validate(self) -> None:
        if self.n_subjects < 2:
            raise ValueError(f"n_subjects must be >= 2 (subjects are the repeats), got {self.n_subjects}")
        if self.tr <= 0 or self.fps <= 0:
            raise ValueError(f"tr and fps must be positive, got tr={self.tr}, fps={self.fps}")
        if not self.films:
            raise ValueError("no films to simulate")
        for name, dur in self.films.items():
            if not name.isalnum():
                raise ValueError(f"film name {name!r} must be alphanumeric (it becomes a BIDS label)")
            if self.film_trs(dur) < 10:
                raise ValueError(f"film {name} is {dur} s long: fewer than 10 TRs of {self.tr} s")
        if self.film_width % 2 or self.film_height % 2:
            raise ValueError("film_width and film_height must be even (H.264 with 4:2:0 chroma)")
        if not 0 <= self.p_missing < 1:
            raise ValueError(f"p_missing must lie in [0, 1), got {self.p_missing}")
        if not 0 <= self.null_fraction < 1:
            raise ValueError(f"null_fraction must lie in [0, 1), got {self.null_fraction}")
        if self.subject_variability < 0:
            raise ValueError(f"subject_variability must be >= 0, got {self.subject_variability}")
        if (self.atlas is None) != (self.atlas_labels is None):
            raise ValueError("--atlas and --atlas-labels go together")
        if (self.regions_atlas is None) != (self.regions_labels is None):
            raise ValueError("--regions-atlas and --regions-labels go together")


# ---------------------------------------------------------------- demo.py
@dataclass
class DemoConfig:
    seed: int = 0
    epochs: int = 10
    frame_size: int = 32
    frames_per_tr: int = 8
    device: str = "auto"
    vgg_weights: str | None = None
    n_perm: int = 500
    n_null_lesion: int = 10
    ridge_iter: int = 10
    concept_examples: int = 30
    concept_random: int = 6
