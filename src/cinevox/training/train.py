"""``cinevox train``: Adam, one checkpoint per epoch (atomic), exact resume, history and TensorBoard.

Same seed, same result on CPU: shuffling uses a generator seeded with ``seed + epoch``, and the global RNG
(dropout) is saved in every checkpoint, so an interrupted run resumed with ``--resume`` ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cinevox.configs import TrainConfig, model_config_from
from cinevox.data.dataset import PreparedData, voxel_preparation
from cinevox.losses import LossConfig, build_loss
from cinevox.models.encdec import ModelConfig, build_model
from cinevox.outputs import write_dataset_description
from cinevox.training.batches import ClipBatches
from cinevox.training.distributed import (
    DistInfo,
    GlobalBatchSampler,
    all_reduce_sum,
    barrier,
    convert_sync_batchnorm,
    dist_info_from_env,
    gather_objects,
    init_distributed,
    shutdown_distributed,
    unwrap,
)
from cinevox.training.ridge import is_baseline_run
from cinevox.training.targets import Targets, check_viewers, parse_target, resolve_targets
from cinevox.utils.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cinevox.utils.device import choose_device, cpu_has_bf16, seed_everything
from cinevox.utils.folders import check_output_folder, clean_stale_temps, exclusive_folder
from cinevox.utils.io import config_hash, read_json, versions, write_manifest, write_text_atomic
from cinevox.utils.log import bar_disabled

logger = logging.getLogger(__name__)


_WEIGHTS_KEYS = ("model", "epoch", "config", "model_config", "metrics")
#: options that change where and how fast a run computes, not what it computes: a run may resume with others
RUNTIME_FIELDS = ("device", "compile", "tensorboard", "num_workers", "stage")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite (on any process: every process raises it at the same step)."""


def same_run_config(saved: dict, cfg: TrainConfig) -> list[str]:
    """The options in which ``cfg`` differs from a checkpoint's saved configuration, runtime-only options aside.

    ``epochs`` is left out: nothing a run computes depends on its total (no schedule), so a resumed run may ask
    for more epochs than it was started with (:func:`check_resume_epochs` refuses fewer)."""
    now = asdict(cfg)
    default = asdict(TrainConfig())  # options added later: a checkpoint without them had their default
    keys = (set(saved) | set(now)) - set(RUNTIME_FIELDS) - {"epochs"}
    return sorted(k for k in keys if saved.get(k, default.get(k)) != now.get(k))


def check_resume_epochs(saved: dict, cfg: TrainConfig, done: int, last: Path) -> None:
    """Refuse ``--resume --epochs N`` with N below the run's own epochs (the run would have to be cut short); more
    epochs extend it: the result equals a run that asked for N from the start."""
    asked = int(saved.get("epochs", cfg.epochs))
    if cfg.epochs < asked:
        raise ValueError(f"--resume --epochs {cfg.epochs}: {last} belongs to a run of {asked} epochs ({done} done); "
                         f"a resumed run can only be extended: give --epochs {asked} or more, or train a new run")


def check_finite(loss: torch.Tensor, device: torch.device, where: str) -> None:
    """Raise :class:`NonFiniteLossError` on every process when the loss of any process is not finite.

    Under torch.distributed the verdict is all-reduced (one small collective per step), so that no process
    goes on into the gradient all-reduce while another stops: whatever launched the ranks (torchrun, srun,
    mpirun), they all stop at the same step, each naming the process(es) that saw it."""
    bad_here = not bool(torch.isfinite(loss))
    ranks = [0] if bad_here else []
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flags = torch.zeros(torch.distributed.get_world_size(), dtype=torch.float32, device=device)
        flags[torch.distributed.get_rank()] = float(bad_here)
        torch.distributed.all_reduce(flags)
        ranks = [int(r) for r in torch.nonzero(flags).flatten().tolist()]
    if ranks:
        value = f" ({loss.item()})" if bad_here else ""
        procs = f" on rank {', '.join(map(str, ranks))}" if torch.distributed.is_initialized() else ""
        raise NonFiniteLossError(f"non-finite loss{value} at {where}{procs}; check the prepared voxels and "
                                 "frames (NaN/Inf), or lower --lr")


def _config_from_dict(d: dict) -> TrainConfig:
    d = dict(d)
    d["loss"] = LossConfig(**d.get("loss", {}))
    return TrainConfig(**d)


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """4D weights in channels-last memory (``Module.to(memory_format=...)`` refuses the encoder's 5D Conv3d
    weights); the fast encoder already feeds its convolutions channels-last activations."""
    for p in model.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return model


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    """Adam as the paper (lr 1e-4), in its fused implementation where this torch has one for the device (one
    kernel for all 107 M parameters instead of a Python loop), else the multi-tensor (foreach) one."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


def model_config(cfg: TrainConfig, data: PreparedData, subjects: list[str] | None = None) -> ModelConfig:
    """``subjects``: the viewers of a ``--target subjects`` model (one read-out / input layer each)."""
    extra = dict(subjects=list(subjects), subject_rank=cfg.subject_rank) if subjects else {}
    return ModelConfig(kind=cfg.model, n_voxels=data.n_voxels, n_frames=data.frames_per_tr,
                       frame_size=data.frame_size, dropout=cfg.dropout,
                       final_batchnorm=bool(cfg.final_batchnorm), **extra)


class Step:
    """Forward + loss for a model kind. Returns ``(loss, encoder part, decoder part)`` (parts may be None).

    ``--target subjects`` (``subjects=True``): ``voxels`` is ``(B, N, V)``, NaN where a viewer did not see the clip.
    The encoder side scores every (clip, viewer) pair the clip's viewers saw, from one trunk pass. The decoder side
    decodes each clip once, through one of its viewers drawn at random (the cost of the mean model; each viewer's
    input layer sees its share of the clips): a new draw each training epoch, the same draw every validation
    (key epoch 0, no dropout), so that validation losses compare across epochs. Subject dropout (TRIBE v2) sends
    a share of the training pairs through the average viewer's read-out / input layer. The draws of a sample
    depend on (seed, epoch, sample) only, not on the process that trains it: DDP and one process draw alike, and a
    resumed run as an uninterrupted one."""

    def __init__(self, kind: str, criterion: torch.nn.Module, subject_dropout: float = 0.0,
                 subjects: bool = False, seed: int = 0) -> None:
        self.kind, self.criterion, self.subject_dropout = kind, criterion, subject_dropout
        self.subjects, self.seed = subjects, seed

    def __call__(self, model, clip, voxels, frame, samples=None, epoch: int = 0):
        """``samples``: the batch's sample indices (B,) (the per-sample draws of ``--target subjects``)."""
        if self.subjects:
            return self._subjects(model, clip, voxels, frame, samples, epoch)
        if self.kind == "encoder":
            loss = self.criterion(model(clip).float(), voxels)
            return loss, loss.detach(), None
        if self.kind == "decoder":
            loss = self.criterion(model(voxels).float(), frame)
            return loss, None, loss.detach()
        v_hat, f_hat = model(clip)
        loss, le, ld = self.criterion(v_hat.float(), voxels, f_hat.float(), frame)
        return loss, le.detach(), ld.detach()

    def draws(self, samples, epoch: int, n: int, device) -> torch.Tensor:
        """(B, 2 + n) uniforms in [0, 1) per sample: the decoder's viewer, its dropout, each encoder pair's dropout."""
        u = np.stack([np.random.default_rng((self.seed, epoch, int(i))).random(2 + n) for i in samples])
        return torch.as_tensor(u, dtype=torch.float32, device=device)

    def _subjects(self, model, clip, voxels, frame, samples, epoch):
        seen = ~torch.isnan(voxels).any(-1)  # (B, N)
        train = model.training
        if samples is None:
            raise ValueError("--target subjects needs the batch's sample indices (the per-sample draws)")
        u = self.draws(samples, epoch if train else 0, seen.shape[1], seen.device)
        if self.kind != "encoder":  # the decoder side: one viewer per clip, drawn among those who saw it
            rows = torch.arange(len(seen), device=seen.device)
            cum = seen.float().cumsum(1)  # the k-th seen viewer, k = floor(u * n_seen)
            k = torch.minimum((u[:, 0] * cum[:, -1]).floor(), cum[:, -1] - 1)[:, None]  # u rounded to 1.0
            drawn = (cum <= k).sum(1)  # the viewer whose voxels (decoder) or read-out (encdec) the clip is decoded from
            pick = drawn  # the input layer that decodes it; -1: the average viewer's (subject dropout)
            if train:
                pick = torch.where(u[:, 1] < self.subject_dropout, -1, drawn)
        if self.kind == "decoder":
            x = voxels[rows, drawn]  # a dropped row: the drawn viewer's voxels through the average input layer
            loss = self.criterion(model(x, pick).float(), frame[rows])
            return loss, None, loss.detach()
        if self.kind == "encoder":
            avg, per = model(clip, subjects=True)  # through DDP's forward when wrapped
        else:  # one trunk pass; the decoder reads the pairs' predicted voxels
            avg, per, f_hat = model(clip, subjects=True, pick=pick, rows=rows)
            frame = frame[rows]
        if train and self.subject_dropout > 0:
            drop = u[:, 2:] < self.subject_dropout
            per = torch.where(drop[..., None], avg[:, None, :].expand_as(per), per)
        if self.kind == "encoder":
            loss = self.criterion(per[seen].float(), voxels[seen])
            return loss, loss.detach(), None
        loss, le, ld = self.criterion(per[seen].float(), voxels[seen], f_hat.float(), frame)
        return loss, le.detach(), ld.detach()


def run_epoch(model, source: ClipBatches, batches: list[tuple[list[int], int]], step: Step, device,
              optimizer=None, amp: bool = False, epoch: int = 0, progress: bool = False,
              world_size: int = 1, after_first_step=None) -> dict[str, float]:
    """One pass over ``batches`` (this process' indices and the global batch size of each step); trains when an
    optimizer is given. Returns the mean losses over every sample of every process. ``after_first_step()`` is
    called once after the first optimizer step (the staging decision, when memory use is known).

    Each process' loss is weighted by its share of the global batch (``n_local * world_size / n_global``), so
    that DDP's gradient average is the gradient of the global batch's mean loss (weight 1 in one process)."""
    train = optimizer is not None
    model.train(train)
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # loss, enc, dec (sums over samples), n, non-finite validation batches
    bad_val = None
    bar = tqdm(total=len(batches), desc=f"epoch {epoch} {'train' if train else 'val'}", leave=False,
               disable=bar_disabled(progress))
    with source.stream([i for i, _ in batches]) as stream:  # the prefetch thread stops on every way out
        for b, ((idx, n_global), (clip, voxels, frame)) in enumerate(zip(batches, stream)):
            with torch.set_grad_enabled(train), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, le, ld = step(model, clip, voxels, frame, idx, epoch)
            k = len(idx)
            if train:  # every process takes every step: the verdict is collective, at once
                check_finite(loss, device, f"epoch {epoch}, batch {b} (training)")
                optimizer.zero_grad(set_to_none=True)
                weight = k * world_size / n_global
                (loss * weight if weight != 1 else loss).backward()
                optimizer.step()
                if b == 0 and after_first_step is not None:
                    after_first_step()
            elif not torch.isfinite(loss):  # validation shards differ in length: decided after the pass
                bad_val = bad_val or f"batch {b} ({loss.item()})"
                sums[4] += 1
                continue
            sums[0] += loss.item() * k
            sums[1] += (le.item() if le is not None else math.nan) * k
            sums[2] += (ld.item() if ld is not None else math.nan) * k
            sums[3] += k
            bar.update(1)
            bar.set_postfix(loss=f"{sums[0] / sums[3]:.4f}")
    bar.close()
    tot = all_reduce_sum(sums, device)
    if tot[4]:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        here = f"; here (rank {rank}): {bad_val}" if bad_val and torch.distributed.is_initialized() else \
            (f", {bad_val}" if bad_val else "")
        raise NonFiniteLossError(f"non-finite loss at epoch {epoch} (validation): {int(tot[4])} batch(es){here}; "
                                 "check the prepared voxels and frames (NaN/Inf), or lower --lr")
    return {key: tot[i] / max(tot[3], 1) for i, key in enumerate(("loss", "enc", "dec"))}


def _shard(indices, info: DistInfo):
    """This process' contiguous part of ``indices`` (validation)."""
    bounds = [round(k * len(indices) / info.world_size) for k in range(info.world_size + 1)]
    return indices[bounds[info.rank] : bounds[info.rank + 1]]


RUN_FILES = ("manifest.json", "checkpoints", "history.csv", "tensorboard", "eval", "saliency", "lesion", "concepts")


def train(prepared_dir: str | Path, run_dir: str | Path, cfg: TrainConfig, resume: bool = False,
          progress: bool = True, trust_checkpoint: bool = False, holdout_film: str | None = None) -> Path:
    """Train a model on a prepared dataset into ``run_dir`` (one writer at a time). Returns ``run_dir``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains its part of each global batch with DDP; the
    process of rank 0 holds the folder's lock and writes checkpoints, history and manifest.
    ``holdout_film``: a leave-one-film-out fold (``PreparedData(..., holdout_film)``): no TR of that film is trained
    or validated on; the manifest records it (``cv_fold``), so that ``evaluate`` scores every TR of that film."""
    cfg.validate()
    run_dir = Path(run_dir)
    info = dist_info_from_env()
    if info.enabled and cfg.batch_size < info.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch: it must be at least the number of "
                         f"processes ({info.world_size})")
    if cfg.target != "mean" or cfg.holdout_subjects:  # bad viewers refused before the run folder is touched
        data = PreparedData(prepared_dir)
        check_viewers(data, list(cfg.holdout_subjects or []), "--holdout-subjects {}")
        _, viewer = parse_target(cfg.target)
        if viewer is not None:
            check_viewers(data, [viewer], "--target subject:{}")
    if not info.is_main:
        return _train(prepared_dir, run_dir, cfg, resume, progress, trust_checkpoint, info, holdout_film)
    check_output_folder(run_dir, RUN_FILES, "run")
    with exclusive_folder(run_dir, "train"):
        clean_stale_temps(run_dir)
        return _train(prepared_dir, run_dir, cfg, resume, progress, trust_checkpoint, info, holdout_film)


def _train(prepared_dir: str | Path, run_dir: Path, cfg: TrainConfig, resume: bool, progress: bool,
           trust_checkpoint: bool, info: DistInfo, holdout_film: str | None = None) -> Path:
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    if run_dir.exists() and (last.is_file()) and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
    if resume and (run_dir / "manifest.json").is_file():
        was = run_holdout_film(run_dir)
        if was != holdout_film:
            raise ValueError(f"--resume: {run_dir} was trained with held-out film {was}, not {holdout_film}; start a "
                             "new run instead")
    data = PreparedData(prepared_dir, holdout_film=holdout_film)
    targets = resolve_targets(data, cfg.target, cfg.holdout_subjects)
    mcfg = model_config(cfg, data, targets.subjects if targets.mode == "subjects" else None)
    device = choose_device(cfg.device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # one explicit GPU for every thread and state
    init_distributed(info, device)
    try:
        return _train_loop(prepared_dir, run_dir, cfg, resume, progress, trust_checkpoint, info, data, mcfg, device,
                           targets)
    finally:
        shutdown_distributed()


def _train_loop(prepared_dir, run_dir: Path, cfg: TrainConfig, resume: bool, progress: bool, trust_checkpoint: bool,
                info: DistInfo, data: PreparedData, mcfg: ModelConfig, device: torch.device,
                targets: Targets | None = None) -> Path:
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    ck = None
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        ck = load_checkpoint(last, map_location=device, trust=trust_checkpoint)
        saved = ck.get("model_config") or {}
        if mcfg.subjects and saved.get("subjects"):  # a run made before centered corrections keeps free ones
            mcfg.subject_heads = model_config_from(saved).subject_heads
    seed_everything(cfg.seed)  # the same initial weights on every process
    model = build_model(mcfg).to(device)
    if cfg.sync_bn and info.enabled:
        model = convert_sync_batchnorm(model, device)
    if device.type == "cuda":
        to_channels_last(model)
    criterion = build_loss(cfg.model, cfg.loss).to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, device)
    targets = targets or resolve_targets(data, cfg.target, cfg.holdout_subjects)
    train_idx, val_idx = data.indices("train"), data.indices("val")
    train_idx, val_idx = train_idx[targets.rows[train_idx]], val_idx[targets.rows[val_idx]]  # rows with a target
    for name, idx in (("train", train_idx), ("val", val_idx)):
        if len(idx) == 0:
            raise ValueError(f"{data.root}: no samples in split {name!r}")
    history: list[dict] = []
    start_epoch = 1
    if ck is not None:
        differ = same_run_config(ck["config"], cfg)
        if differ:
            raise ValueError(f"--resume: {last} was made with other options ({', '.join(differ)}); start a new run "
                             "instead")
        check_resume_epochs(ck["config"], cfg, ck["epoch"], last)
        if ck.get("world_size", 1) != info.world_size:
            logger.warning("resuming a run made with %d processes on %d: the result will differ slightly",
                           ck.get("world_size", 1), info.world_size)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        history = ck["history"]
        start_epoch = ck["epoch"] + 1
        rngs = ck.get("rng_per_rank") or [ck["rng"]]
        set_rng_state(rngs[info.rank] if info.rank < len(rngs) else ck["rng"], device)
        if cfg.epochs > int(ck["config"].get("epochs", cfg.epochs)):
            logger.info("extending %s from %d to %d epochs", run_dir, ck["config"]["epochs"], cfg.epochs)
        logger.info("resuming %s after epoch %d", run_dir, ck["epoch"])
    else:
        torch.manual_seed(cfg.seed + 7919 * info.rank)  # dropout masks: a seed per process
    step_model = model
    if info.enabled:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        step_model = torch.compile(step_model)
    step = Step(cfg.model, criterion, cfg.subject_dropout, subjects=targets.mode == "subjects", seed=cfg.seed)
    source = ClipBatches(data, device, stage={True: "device", False: "host", None: "auto"}[cfg.stage],
                         targets=targets.gather or targets.values)
    autocast = cfg.amp if device.type == "cuda" else cfg.cpu_bf16
    if device.type == "cpu" and cfg.cpu_bf16 and not cpu_has_bf16():
        logger.warning("--cpu-bf16 on a CPU without native bfloat16 instructions: expect it to be slower")
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(run_dir, "train", cfg, inputs={"prepared": str(Path(prepared_dir).resolve()),
                                                       "prepared_manifest": config_hash(data.manifest)},
                       model=asdict(mcfg), device=str(device), world_size=info.world_size,
                       target={"mode": targets.mode, "subjects": targets.subjects, "heldout": targets.heldout},
                       preparation=voxel_preparation(data.manifest),
                       vgg_weights=_vgg_source(criterion), **data.fold_record())
        write_dataset_description(run_dir, f"cinevox {cfg.model} run", "train", [prepared_dir])
    writer = _tensorboard(run_dir) if cfg.tensorboard and info.is_main else None
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("training %s (%d parameters, %d voxels) on %s%s: %d train / %d val samples, %d epochs",
                cfg.model, n_params, data.n_voxels, device,
                f" x {info.world_size} processes" if info.enabled else "", len(train_idx), len(val_idx), cfg.epochs)
    val_used = val_idx if cfg.max_steps is None else val_idx[: cfg.max_steps * cfg.batch_size]  # same on every rank
    local_val, vb = _shard(val_used, info), max(1, cfg.batch_size // info.world_size)
    val_batches = [([int(i) for i in local_val[k : k + vb]], 0) for k in range(0, len(local_val), vb)]
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.time()
        sampler = GlobalBatchSampler(len(train_idx), cfg.batch_size, info, cfg.seed * 1000 + epoch)
        batches = [([int(train_idx[i]) for i in loc], n) for loc, n in sampler.batches()][: cfg.max_steps]
        tr = run_epoch(step_model, source, batches, step, device, optimizer, autocast, epoch, progress,
                       info.world_size, after_first_step=source.decide_staging if epoch == start_epoch else None)
        with torch.no_grad():
            va = run_epoch(model, source, val_batches, step, device, None, autocast, epoch, False)
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_enc": tr["enc"], "train_dec": tr["dec"],
               "val_loss": va["loss"], "val_enc": va["enc"], "val_dec": va["dec"], "seconds": time.time() - t0}
        history.append(row)
        rngs = gather_objects(rng_state(device))
        if info.is_main:
            state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "config": asdict(cfg), "model_config": asdict(mcfg), "seed": cfg.seed, "history": history,
                     "versions": versions(), "metrics": row, "rng": rngs[0], "rng_per_rank": rngs,
                     "world_size": info.world_size}
            save_checkpoint(last, state)
            if epoch in cfg.keep_epochs:
                save_checkpoint(ckpt_dir / f"epoch_{epoch:03d}.pt", {k: state[k] for k in _WEIGHTS_KEYS})
            if _is_best(history, cfg):
                save_checkpoint(ckpt_dir / "best.pt", {k: state[k] for k in _WEIGHTS_KEYS})
            _write_history(run_dir, history)
            if writer is not None:
                for k in ("train_loss", "val_loss", "train_enc", "val_enc", "train_dec", "val_dec"):
                    if not math.isnan(row[k]):
                        writer.add_scalar(k.replace("_", "/", 1), row[k], epoch)
                writer.flush()
        barrier()
        logger.info("epoch %d/%d: train %.4f  val %.4f  (%.1f s)", epoch, cfg.epochs, tr["loss"], va["loss"],
                    row["seconds"])
    if writer is not None:
        writer.close()
    return run_dir


def selection_score(row: dict, how: str) -> float:
    """Validation score of an epoch: the run's own loss, or the paper's 0.5 L_E + 0.5 L_D (comparable across eps;
    a missing part counts 0)."""
    if how == "loss":
        return row["val_loss"]
    parts = [row["val_enc"], row["val_dec"]]
    return 0.5 * sum(0.0 if math.isnan(p) else p for p in parts)


def _is_best(history: list[dict], cfg: TrainConfig) -> bool:
    """Whether the last epoch of ``history`` beats every earlier eligible epoch (and is eligible itself)."""
    eligible = [h for h in history if cfg.select_epochs is None or h["epoch"] in cfg.select_epochs]
    if not eligible or eligible[-1] is not history[-1]:
        return False
    return all(selection_score(history[-1], cfg.select_score) < selection_score(h, cfg.select_score)
               for h in eligible[:-1])


def _vgg_source(criterion) -> str | None:
    """Where the perceptual loss' VGG16 weights came from (None without a perceptual term)."""
    dec = getattr(criterion, "dec", criterion)
    perceptual = getattr(dec, "perceptual", None)
    return getattr(perceptual.vgg, "source", None) if perceptual is not None else None


def _write_history(run_dir: Path, history: list[dict]) -> None:
    import pandas as pd

    write_text_atomic(run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as err:  # a broken tensorboard install must not stop training
        logger.warning("TensorBoard logging unavailable (%s): history.csv only", err)
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def load_run_model(run_dir: str | Path, checkpoint: str = "last", device: str | None = None,
                   trust_checkpoint: bool = False):
    """``(model in eval mode, TrainConfig, ModelConfig dict, checkpoint epoch)`` of a run."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / (checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt")
    if is_baseline_run(run_dir):
        raise ValueError(f"{run_dir} is a linear baseline run (cinevox baseline): it has no CNN encoder or decoder")
    if not path.is_file():
        have = sorted(p.stem for p in (run_dir / "checkpoints").glob("*.pt"))
        if have:
            raise FileNotFoundError(f"--checkpoint {checkpoint}: {path.name} is not in {run_dir / 'checkpoints'}; "
                                    f"this run has: {', '.join(have)}")
        raise FileNotFoundError(f"{path} does not exist (is {run_dir} a cinevox run?)")
    dev = choose_device(device)
    ck = load_checkpoint(path, map_location=dev, trust=trust_checkpoint)
    try:
        mcfg = model_config_from(ck["model_config"])
        model = build_model(mcfg).to(dev)
        model.load_state_dict(ck["model"])
    except (TypeError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: its weights do not fit its model configuration "
                              f"({str(err).splitlines()[0]})") from err
    model.eval()
    return model, _config_from_dict(ck["config"]), ck["model_config"], ck["epoch"]


def run_prepared_dir(run_dir: str | Path) -> Path:
    """The prepared dataset a run was trained on (from its manifest)."""
    man = read_json(Path(run_dir) / "manifest.json")
    prepared = man.get("inputs", {}).get("prepared") if isinstance(man, dict) else None
    if man.get("step") not in ("train", "baseline") or not prepared:
        raise ValueError(f"{run_dir} is not a cinevox run (its manifest is from step {man.get('step')!r}); give a "
                         "folder made by `cinevox train` or `cinevox baseline`")
    return Path(prepared)


def run_holdout_film(run_dir: str | Path) -> str | None:
    """The film a run holds out (a fold of ``--cv films``), from its manifest; None for a run on the prepared split."""
    man = read_json(Path(run_dir) / "manifest.json")
    fold = man.get("cv_fold") if isinstance(man, dict) else None
    return fold.get("holdout_film") if isinstance(fold, dict) else None


def run_data(run_dir: str | Path) -> PreparedData:
    """The prepared dataset of a run as the run split it: the prepared split, or its leave-one-film-out fold."""
    return PreparedData(run_prepared_dir(run_dir), holdout_film=run_holdout_film(run_dir))
