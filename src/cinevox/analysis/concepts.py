"""``cinevox concepts RUN``: which human concepts drive the encoder's voxel predictions (TCAV, Kim et al. 2018),
and which regions' voxels the decoder relies on to render them.

Encoder side. Concept example sets are clips of the run's own training split: the top clips by a measurable
property (``motion``: mean absolute luminance change between frames; ``edges``: mean luminance gradient;
``colour``: mean saturation; ``luminance``: mean luminance), by per-frame annotations (the simulator writes the
area covered by ``faces`` and ``objects``; any ``annotations/<film>.tsv`` with an ``onset`` column adds its
columns as concepts), or user folders of ``.npy`` clips. Against ``n_random`` random sets of training clips, a
linear classifier on a layer's activations gives each concept's activation vector (CAV, the unit normal of its
decision boundary). The directional derivative of voxel j's prediction along a CAV, for a test clip x, is the
Jacobian-vector product of the rest of the encoder at x (one forward-mode pass gives every voxel); the TCAV
score is the fraction of test clips where it is positive. Per voxel and per region (the region's mean
prediction), a concept's score is the mean over its ``n_random`` CAVs (each against its own random negative set).
The null is made of ``n_pseudo`` pseudo-concepts: random sets of training clips treated exactly like a concept
(each with its ``n_random`` CAVs against the same negative sets), so the concept and the pseudo-concepts are
exchangeable when the concept means nothing to the model. The p-value is the rank of the concept's mean score
among the pseudo-concepts' (two-sided, distance from the mean of all of them), ``p = rank / (M + 1)``, with ties
(scores are fractions of clips, so frequent; at ``conv4`` the rule) broken at random from the config's seed: exact
under exchangeability (counting ties against the concept, the earlier rule, was conservative: at the demo's
``conv4``, 0.018 of voxels at p < 0.05 for random concepts, 0.058 now); :func:`pseudo_concept_pvalues`.
Benjamini-Hochberg correction over the whole family: concepts x layers x voxels (x regions for the region level).
(Comparing the concept's K scores with K independent random-vs-random scores, the earlier test, treats them as
exchangeable though the concept's CAVs share one positive set: a random "concept" was called significant at 35 % of
voxels at alpha 0.05.) With class-mean CAVs the directional derivative along ``mean(P) - mean(N)`` is the difference
of the derivatives along the two set means, so each test clip needs one forward-mode pass per set (concepts,
pseudo-concepts, negatives), not one per CAV.

Decoder side (frame-measurable concepts: luminance, colour, edges, contrast): concept-conditioned saliency,
sum over test reconstructions of |d concept(decoder(x)) / d x_j|, its top voxels and their AAL regions (as
Table II).

On simulations, the per-voxel TCAV scores are compared with the simulator's known tuning (``tuning.npz``): the
ROC AUC of a concept's score for the voxels most tuned to its channel (informativeness: any map that finds the
stimulus-driven voxels scores well), and concept specificity: within the informative voxels, the concept x concept
AUC matrix (true concept x each concept's effect map, its score minus the random-vs-random CAVs' score) with a
random-CAV control and its chance band (:func:`random_control`), beside the same matrix for the measured data and
the model's predictions (:func:`specificity_matrix`); the same within each region family (:func:`specificity_within`:
the simulator's families differ in mean tuning, so faces and colour both single out fusiform voxels, luminance and
edges both early visual ones); and the oracle, the margins that maps equal to the true selectivities reach, which
bound what any map can show. Whether a model learned the voxels' tuning at all is measured by probing its
predictions with the simulator's channel drives (``cinevox.simulate.channels``, ``benchmarks/bench_statistics.py``).
"""

from __future__ import annotations

import logging
import shutil
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cinevox.analysis.regions import region_table, subsample, top_fraction
from cinevox.analysis.saliency import analysis_regions, analysis_source, auc
from cinevox.configs import ConceptConfig
from cinevox.data.dataset import PreparedData, clips_to_model
from cinevox.data.nifti import save_voxel_map
from cinevox.outputs import space_label, write_sidecars
from cinevox.stats import fdr_bh
from cinevox.utils.folders import exclusive_folder
from cinevox.utils.io import write_json, write_manifest, write_text_atomic

logger = logging.getLogger(__name__)

DECODER_CONCEPTS = ("luminance", "colour", "edges", "contrast")
#: simulator channel that each concept corresponds to (for the validation on known tuning)
TRUTH_CHANNEL = {"faces": "faces", "objects": "objects", "motion": "motion", "edges": "edges_fine",
                 "colour": "colour", "luminance": "luminance"}


# ------------------------------------------------------------------ concept measures


def clip_measures(clip: np.ndarray) -> dict[str, float]:
    """Measurable properties of a uint8 clip (T, S, S, 3)."""
    x = clip.astype(np.float32) / 255.0
    lum = x @ np.array([0.299, 0.587, 0.114], np.float32)  # (T, S, S)
    return {"luminance": float(lum.mean()),
            "colour": float((x.max(-1) - x.min(-1)).mean()),
            "edges": float(np.abs(np.diff(lum, axis=1)).mean() + np.abs(np.diff(lum, axis=2)).mean()),
            "motion": float(np.abs(np.diff(lum, axis=0)).mean()) if len(lum) > 1 else 0.0}


def annotation_measures(data: PreparedData, folder: Path | None) -> pd.DataFrame:
    """Per sample, the mean of each annotation column over the sample's TR (empty frame without annotations)."""
    if folder is None or not folder.is_dir():
        return pd.DataFrame(index=data.samples.index)
    tr = float(data.manifest["tr"])
    out = []
    for film, rows in data.samples.groupby("film"):
        path = folder / f"{film}.tsv"
        if not path.is_file():
            continue
        ann = pd.read_csv(path, sep="\t")
        if "onset" not in ann:
            raise ValueError(f"{path}: an annotation table needs an 'onset' column (seconds)")
        cols = [c for c in ann.columns if c not in ("onset", "frame", "duration")]
        tr_of = np.floor(ann["onset"].to_numpy() / tr).astype(int)
        means = ann[cols].groupby(tr_of).mean()
        part = means.reindex(rows["tr"].to_numpy()).fillna(0.0)
        part.index = rows.index
        out.append(part)
    return pd.concat(out).reindex(data.samples.index).fillna(0.0) if out else pd.DataFrame(index=data.samples.index)


def sample_measures(data: PreparedData, cfg: ConceptConfig, indices: np.ndarray) -> tuple[pd.DataFrame, list]:
    """Concept measures of samples: clip measures and annotation columns. -> (DataFrame indexed by sample,
    the annotation columns)."""
    ann_dir = Path(cfg.annotations) if cfg.annotations else None
    sim = data.manifest.get("bids_simulation")
    if ann_dir is None and sim and (Path(sim) / "annotations").is_dir():
        ann_dir = Path(sim) / "annotations"
    measures = pd.DataFrame([clip_measures(data.clip(int(i))) for i in indices], index=indices)
    ann = annotation_measures(data, ann_dir)
    for c in ann.columns:
        measures[c] = ann.loc[indices, c].to_numpy()
    return measures, list(ann.columns)


def concept_sets(data: PreparedData, cfg: ConceptConfig, pool: np.ndarray) -> dict[str, np.ndarray]:
    """``{concept: sample indices or clips}`` of positives from the training pool."""
    measures, ann_columns = sample_measures(data, cfg, pool)
    sets: dict[str, np.ndarray] = {}
    for c in cfg.concepts:
        if c not in measures:
            known = sorted(set(measures.columns) | set(cfg.concept_dirs))
            raise ValueError(f"concept {c!r}: no measure or annotation for it (available: {', '.join(known)}; "
                             "or give a folder of clips)")
        vals = measures[c]
        present = vals[vals > 0] if c in ann_columns else vals
        if len(present) < cfg.min_examples:
            raise ValueError(f"concept {c!r}: only {len(present)} training clips show it, fewer than "
                             f"{cfg.min_examples}; lower --min-examples or supply a folder of clips")
        sets[c] = present.sort_values(ascending=False).index.to_numpy()[: cfg.n_examples]
    for c, folder in cfg.concept_dirs.items():
        sets[c] = load_concept_clips(Path(folder), c, data, cfg.min_examples)
    return sets


def load_concept_clips(folder: Path, name: str, data: PreparedData, min_examples: int) -> np.ndarray:
    """User clips of a concept: ``.npy`` files of uint8 (T, S, S, 3) at the dataset's size. -> (n, T, S, S, 3)."""
    files = sorted(folder.glob("*.npy")) if folder.is_dir() else []
    if len(files) < min_examples:
        raise ValueError(f"concept {name!r}: {folder} holds {len(files)} .npy clips, fewer than {min_examples}")
    want = (data.frames_per_tr, data.frame_size, data.frame_size, 3)
    clips = []
    for f in files:
        c = np.load(f, allow_pickle=False)
        if c.shape != want:
            raise ValueError(f"concept {name!r}: {f} has shape {c.shape}, the dataset's clips are {want} (T, S, S, 3)")
        clips.append(c.astype(np.uint8))
    return np.stack(clips)


# ------------------------------------------------------------------ CAVs and TCAV


def _to_batch(clips: np.ndarray, device, minmax: bool) -> torch.Tensor:
    """uint8 clips (B, T, S, S, 3) -> the encoder's input (B, 3, S, S, T) on ``device``."""
    return clips_to_model(torch.from_numpy(np.ascontiguousarray(clips)).to(device), minmax)


@torch.no_grad()
def layer_activations(encoder, clips: np.ndarray, layer: str, device, batch: int, minmax: bool) -> torch.Tensor:
    """(n, C, H, W) activations of uint8 clips (n, T, S, S, 3)."""
    out = [encoder.activations(_to_batch(clips[i : i + batch], device, minmax), layer)
           for i in range(0, len(clips), batch)]
    return torch.cat(out)


def train_cav(pos: np.ndarray, neg: np.ndarray, seed: int = 0, method: str = "mean") -> np.ndarray:
    """Concept activation vector between ``pos`` and ``neg`` (activations flattened, (n, D)), a unit vector
    pointing towards the concept. -> (D,).

    ``mean``: the difference of the class means (the linear discriminant with identity covariance). In these
    activation spaces (10^4 to 10^6 dimensions) with tens of examples, a fitted boundary mostly fits the
    particular examples; the mean difference is the stable estimate (on the demo it finds the simulator's motion
    and edge tuning, the logistic boundary does not). ``logistic``: the unit normal of a logistic-regression
    boundary on standardised activations (Kim et al.'s linear classifier)."""
    if method == "mean":
        w = pos.mean(0).astype(np.float64) - neg.mean(0)
        return w / (np.linalg.norm(w) + 1e-12)
    if method != "logistic":
        raise ValueError(f"CAV method must be 'mean' or 'logistic', got {method!r}")
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    mu, sd = x.mean(0), x.std(0) + 1e-8
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit((x - mu) / sd, y)
    w = clf.coef_[0] / sd  # back to activation units
    return w / (np.linalg.norm(w) + 1e-12)


def directional_derivatives(head, acts: torch.Tensor, cav: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """d head(a + h cav) / dh at every activation: (n, ...) x (...) -> (n, V), by forward-mode JVPs."""
    from torch.func import jvp

    out = []
    for i in range(0, len(acts), batch):
        a = acts[i : i + batch]
        _, d = jvp(head, (a,), (cav.expand_as(a).contiguous(),))
        out.append(d.detach())
    return torch.cat(out)


def positive_counts(derivs: torch.Tensor, groups: list[np.ndarray] | None = None) -> np.ndarray:
    """Number of inputs with a positive directional derivative, per voxel ((n, V) -> (V,)) or per group of
    voxels (the group's mean prediction; -> (n_groups,))."""
    if groups is None:
        return (derivs > 0).sum(0).cpu().numpy().astype(np.int64)
    return np.array([int((derivs[:, g].mean(1) > 0).sum()) for g in groups], np.int64)


def tcav_scores(derivs: torch.Tensor, groups: list[np.ndarray] | None = None) -> np.ndarray:
    """TCAV score: the fraction of inputs with a positive directional derivative, per voxel or group."""
    return positive_counts(derivs, groups) / len(derivs)


def permutation_pvalues(a: np.ndarray, b: np.ndarray, max_exact: int = 200_000, n_perm: int = 10_000,
                        seed: int = 0) -> tuple[np.ndarray, int, bool]:
    """Two-sided permutation test of the difference of column means of ``a`` (k1, m) and ``b`` (k2, m): every
    split of the k1 + k2 rows into groups of k1 and k2 when there are at most ``max_exact`` (exact), else
    ``n_perm`` random splits (with the observed split counted once). p = share of splits whose |mean difference|
    is at least the observed one (ties count, so p is never 0). Returns ``(p (m,), n_splits, exact)``."""
    from itertools import combinations
    from math import comb

    x = np.concatenate([a, b]).astype(np.float64)  # (k, m)
    k1, k = len(a), len(a) + len(b)
    obs = np.abs(a.mean(0) - b.mean(0))
    total = x.sum(0)
    exact = comb(k, k1) <= max_exact
    if exact:
        splits = combinations(range(k), k1)
        n_splits = comb(k, k1)
    else:
        rng = np.random.default_rng(seed)
        splits = (rng.permutation(k)[:k1] for _ in range(n_perm))
        n_splits = n_perm + 1
    count = np.zeros(x.shape[1]) if exact else np.ones(x.shape[1])
    tol = 1e-12 * np.maximum(np.abs(x).max(0), 1.0)
    chunk = []

    def flush():
        ind = np.zeros((len(chunk), k))
        ind[np.repeat(np.arange(len(chunk)), k1), np.concatenate(chunk)] = 1.0
        s1 = ind @ x  # (n, m): sums of the first group
        diff = np.abs(s1 / k1 - (total - s1) / (k - k1))
        return (diff >= obs - tol).sum(0)

    for idx in splits:
        chunk.append(np.asarray(idx))
        if len(chunk) == 4096:
            count += flush()
            chunk = []
    if chunk:
        count += flush()
    return count / n_splits, n_splits, exact


def pseudo_concept_pvalues(concept: np.ndarray, pseudo: np.ndarray, seed=0, ties: str = "random") -> np.ndarray:
    """Rank test of a concept's mean TCAV score among pseudo-concepts' (random sets treated exactly like the
    concept): two-sided, by the distance from the mean of all M + 1 scores (a symmetric function, so exchangeability
    under the null is kept). concept (m,), pseudo (M, m) -> p (m,).

    TCAV scores are fractions of test clips, so equal scores are common (at a layer whose readout is linear, every
    score is 0 or 1). With ``g`` the pseudo-concepts strictly farther from the centre than the concept and ``e`` those
    exactly as far (within 1e-12):

    - ``ties="random"`` (the default): the concept's rank among the ``e + 1`` tied scores is drawn at random,
      ``p = (g + J) / (M + 1)`` with ``J`` uniform on ``1..e+1`` (a generator seeded by ``seed``, an int or a
      sequence of ints, one draw per unit). Breaking ties at random makes the M + 1 scores a.s. distinct and still
      exchangeable, so under the null the concept's rank is uniform on ``1..M+1`` and ``P(p <= j / (M + 1)) =
      j / (M + 1)`` exactly, whatever the ties: the test is exact at every level on its grid. (A mid-rank p, ``(g +
      (e + 2) / 2) / (M + 1)``, is not a valid p-value: at a tied extreme it can fall below alpha more often than
      alpha, or never, depending on the number tied; the continuous version ``(g + U (e + 1)) / (M + 1)`` is exact
      too but reports p-values finer than the M + 1 ranks the test can tell apart.)
    - ``ties="count"``: every tie counts against the concept, ``p = (g + e + 1) / (M + 1)`` (the earlier rule): valid
      but conservative when ties are frequent (at the demo's ``conv4``, where 90 % of voxels have a tie, 0.018 of
      voxels at p < 0.05 for random concepts against 0.058 with random ties)."""
    concept, pseudo = np.asarray(concept, np.float64), np.asarray(pseudo, np.float64)
    centre = (pseudo.sum(0) + concept) / (len(pseudo) + 1)
    obs = np.abs(concept - centre)
    dist = np.abs(pseudo - centre)
    tol = 1e-12 * np.maximum(np.abs(pseudo).max(0), 1.0)
    farther = (dist > obs + tol).sum(0)
    tied = (dist >= obs - tol).sum(0) - farther
    bad = ~np.isfinite(concept) | ~np.isfinite(pseudo).all(0)  # a unit with a non-finite score has no p
    if ties == "count":
        return np.where(bad, np.nan, (farther + tied + 1) / (len(pseudo) + 1))
    if ties != "random":
        raise ValueError(f"ties must be 'random' or 'count', got {ties!r}")
    rank = farther + np.random.default_rng(seed).integers(1, tied + 2)  # J uniform on 1..e+1
    return np.where(bad, np.nan, rank / (len(pseudo) + 1))


def _chunks(indices: np.ndarray, size: int):
    for i in range(0, len(indices), size):
        yield indices[i : i + size]


def streamed_tcav(encoder, layer: str, cavs: list[np.ndarray], data: PreparedData, indices: np.ndarray,
                  groups: list[np.ndarray], device, batch: int, minmax: bool,
                  coef: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Counts of test clips with a positive directional derivative along each CAV: per voxel ``(n_cavs, V)``
    and per region ``(n_cavs, n_regions)`` (the region's mean prediction).

    With ``coef`` (n_cavs, n_dirs), ``cavs`` are ``n_dirs`` directions and CAV i is ``sum_j coef[i, j] cavs[j]``:
    the directional derivative is linear in the direction, so one forward-mode pass per direction serves every CAV
    (class-mean CAVs are differences of set means). The test clips are streamed ``batch`` at a time: activations of
    one batch exist at once, never of the whole split (at the paper's 1,971 test clips, 13 GB at ``temporal`` and
    25 GB at ``pool2``)."""
    pos_v = pos_r = None
    dirs = None
    n_cavs = len(cavs) if coef is None else len(coef)
    w = None if coef is None else torch.as_tensor(coef, dtype=torch.float64)
    avg = None
    for chunk in _chunks(indices, batch):
        clips = np.stack([data.clip(int(i)) for i in chunk])
        act = layer_activations(encoder, clips, layer, device, batch, minmax)  # (b, ...)
        if dirs is None:
            dirs = [torch.as_tensor(c.reshape(act.shape[1:]), dtype=act.dtype, device=device) for c in cavs]
        ds = [directional_derivatives(lambda a: encoder.head(a, layer), act, v, batch) for v in dirs]  # (b, V) each
        if pos_v is None:
            pos_v = np.zeros((n_cavs, ds[0].shape[1]), np.int64)
            pos_r = np.zeros((n_cavs, len(groups)), np.int64)
        if w is None:
            for n, d in enumerate(ds):
                pos_v[n] += positive_counts(d)
                pos_r[n] += positive_counts(d, groups)
            continue
        stack = torch.stack(ds).double().cpu()  # (n_dirs, b, V)
        if avg is None:
            avg = torch.zeros(stack.shape[2], len(groups), dtype=torch.float64)  # (V, R): each region's mean
            for r, g in enumerate(groups):
                avg[torch.as_tensor(g, dtype=torch.long), r] = 1.0 / len(g)
        for lo in range(0, n_cavs, 64):  # CAVs in blocks: (n, b, V) at once
            d = torch.tensordot(w[lo : lo + 64], stack, dims=1)
            pos_v[lo : lo + 64] += (d > 0).sum(1).numpy()
            pos_r[lo : lo + 64] += ((d @ avg) > 0).sum(1).numpy()
    return pos_v, pos_r


# ------------------------------------------------------------------ decoder side


def frame_concept(frames: torch.Tensor, concept: str) -> torch.Tensor:
    """Differentiable per-frame concept score of (B, 3, S, S) frames -> (B,)."""
    lum = 0.299 * frames[:, 0] + 0.587 * frames[:, 1] + 0.114 * frames[:, 2]
    if concept == "luminance":
        return lum.mean((1, 2))
    if concept == "colour":
        return (frames.amax(1) - frames.amin(1)).mean((1, 2))
    if concept == "edges":
        return (lum[:, 1:] - lum[:, :-1]).abs().mean((1, 2)) + (lum[:, :, 1:] - lum[:, :, :-1]).abs().mean((1, 2))
    if concept == "contrast":
        return lum.flatten(1).std(1)
    raise ValueError(f"no frame measure for concept {concept!r}")


def decoder_concept_saliency(decoder, x: np.ndarray, concept: str, device, batch: int = 32) -> np.ndarray:
    """sum_i |d concept(decoder(x_i)) / d x_i|. x: (n, V) -> (V,)."""
    decoder.eval()
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, len(x), batch):
        xb = torch.as_tensor(x[i : i + batch], device=device).requires_grad_(True)
        frame_concept(decoder(xb), concept).sum().backward()
        total += xb.grad.abs().sum(0).double().cpu()
    return total.numpy()


# ------------------------------------------------------------------ validation on known tuning


def specificity_matrix(maps: dict[str, np.ndarray], selectivity: dict[str, np.ndarray], informative: np.ndarray,
                       top: float = 0.25) -> pd.DataFrame:
    """Concept specificity of voxel maps: rows are the true concepts (positives: the ``top`` share of the
    informative voxels most selective for the concept's channel), columns the maps, entries the ROC AUC of the map
    for those positives, within the informative voxels only (so a map that merely finds informative voxels scores
    0.5). maps: {name: (V,)}; selectivity: {concept: (V,) share of the voxel's tuning}; informative: (V,) bool."""
    rows = {}
    for c, sel in selectivity.items():
        s = sel[informative]
        positive = s >= np.quantile(s, 1 - top)
        rows[c] = {m: auc(v[informative], positive) for m, v in maps.items()}
    return pd.DataFrame(rows).T


def specificity_within(maps: dict[str, np.ndarray], selectivity: dict[str, np.ndarray], informative: np.ndarray,
                       strata: np.ndarray, min_voxels: int = 10, top: float = 0.25) -> pd.DataFrame | None:
    """:func:`specificity_matrix` within each stratum of the informative voxels (the simulator's region families,
    whose mean tunings differ), averaged with weights by voxel count: what is left once a map that only tells
    the families apart scores 0.5. Strata with fewer than ``min_voxels`` informative voxels are left out; None
    when none is left."""
    parts = []
    for st in np.unique(strata[informative]):
        sub = informative & (strata == st)
        if sub.sum() >= min_voxels:
            parts.append((specificity_matrix(maps, selectivity, sub, top), int(sub.sum())))
    if not parts:
        return None
    return sum(m * n for m, n in parts) / sum(n for _, n in parts)


def random_control(rand: np.ndarray, selectivity: dict[str, np.ndarray], informative: np.ndarray,
                   strata: np.ndarray | None = None, n_splits: int = 200, seed: int = 0) -> dict[str, dict]:
    """The chance level of concept specificity for maps made of random directions only: the scores of half of the
    random-vs-random CAVs minus those of the other half (the shape of a concept's effect map), over ``n_splits``
    random splits. rand: (k, V) scores of the k random CAVs. Returns ``{"overall" (and "within_family" with
    strata): {concept: {"mean", "lo", "hi"}}}``: the mean AUC (0.5 up to the splits drawn) and its 2.5-97.5 %
    band. A random field of the voxels' readout is spatially smooth, so one control map can land far from 0.5;
    the band says how far."""
    rng = np.random.default_rng(seed)
    k = len(rand)
    half = k // 2
    cols: dict[str, list] = {"overall": [], "within_family": []}
    for _ in range(n_splits):
        perm = rng.permutation(k)
        control = {"control": rand[perm[:half]].mean(0) - rand[perm[half : 2 * half]].mean(0)}
        cols["overall"].append(specificity_matrix(control, selectivity, informative)["control"])
        if strata is not None:
            within = specificity_within(control, selectivity, informative, strata)
            if within is not None:
                cols["within_family"].append(within["control"])
    out = {}
    for scope, parts in cols.items():
        if parts:
            a = pd.concat(parts, axis=1)
            out[scope] = {c: {"mean": float(a.loc[c].mean()), "lo": float(a.loc[c].quantile(0.025)),
                              "hi": float(a.loc[c].quantile(0.975))} for c in a.index}
    return out


def specificity_margins(matrix: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per true concept: the diagonal AUC and its margin over the best other concept's map (random columns
    excluded)."""
    out = {}
    for c in matrix.index:
        if c not in matrix.columns:
            continue
        others = [m for m in matrix.columns if m != c and m in matrix.index]
        diag = float(matrix.loc[c, c])
        out[c] = {"diagonal": diag, "margin": diag - float(matrix.loc[c, others].max()) if others else float("nan")}
    return out


def _validate(data: PreparedData, cfg: ConceptConfig, sets: dict, voxel_scores: dict, random_maps: dict, truth,
              test: np.ndarray, pred: np.ndarray, out: Path) -> tuple[dict, dict]:
    """The TCAV maps against the simulator's tuning: (informativeness AUC and Spearman per concept and layer,
    concept specificity within the informative voxels). The specificity of the same concepts measured in the data
    (r of each voxel's measured test series with the concept's per-clip measure) and in the model's predictions is
    the reference: where those fail, no attribution of this model can succeed."""
    from scipy.stats import spearmanr

    w, channels, family = truth
    share = w.sum(1)
    informative = share >= np.median(share)
    val, selectivity = {}, {}
    for concept in sets:
        ch = TRUTH_CHANNEL.get(concept)
        if ch not in channels:
            continue
        sel = w[:, channels.index(ch)]
        positive = sel >= np.quantile(sel, 0.75)
        val[concept] = {layer: {"auc": auc(voxel_scores[(concept, layer)], positive),
                                "spearman": float(spearmanr(voxel_scores[(concept, layer)], sel)[0])
                                if np.ptp(voxel_scores[(concept, layer)]) > 0 else float("nan")}  # constant map
                        for layer in cfg.layers}
        selectivity[concept] = sel / np.maximum(share, 1e-12)
    if not selectivity:
        return val, {}
    spec: dict = {"n_informative": int(informative.sum()), "top": 0.25, "layers": {}, "reference": {},
                  "goal": "diagonal >= 0.75 and >= 0.1 above the best other concept's map"}
    # the truth's own overlap: the margins that maps equal to the true selectivities would have
    oracle = specificity_matrix(selectivity, selectivity, informative)
    spec["oracle"] = {"matrix": oracle.round(4).to_dict(orient="index"), "margins": specificity_margins(oracle)}
    within_oracle = specificity_within(selectivity, selectivity, informative, family)
    if within_oracle is not None:
        spec["oracle"]["within_family"] = specificity_margins(within_oracle)
    for layer in cfg.layers:
        # each concept's effect over the random-vs-random CAVs (what the permutation test tests; it removes what
        # every direction shares through the voxel's readout); the control: the same map made of random CAVs only
        rand = random_maps[layer]  # (k, V)
        maps = {c: voxel_scores[(c, layer)] - rand.mean(0) for c in selectivity}
        band = random_control(rand, selectivity, informative, family, seed=cfg.seed)
        for scope, m in (("overall", specificity_matrix(maps, selectivity, informative)),
                         ("within_family", specificity_within(maps, selectivity, informative, family))):
            if m is None or scope not in band:
                continue
            m["random CAVs"] = [band[scope][c]["mean"] for c in m.index]
            margins = specificity_margins(m)
            for c in margins:
                margins[c]["above_random"] = bool(margins[c]["diagonal"] > band[scope][c]["hi"])
            entry = {"matrix": m.round(4).to_dict(orient="index"), "margins": margins, "random_band": band[scope]}
            if scope == "overall":
                write_text_atomic(out / f"specificity_{layer}.csv", m.to_csv(float_format="%.4f"))
                spec["layers"][layer] = entry
            else:
                spec["layers"][layer]["within_family"] = entry
    measures = sample_measures(data, cfg, test)[0]
    measured = np.asarray(data.voxels)[test]
    for name, y in (("measured voxels", measured), ("model predictions", pred)):
        yz = (y - y.mean(0)) / (y.std(0) + 1e-12)
        maps = {}
        for c in selectivity:
            if c in measures:
                x = measures[c].to_numpy(np.float64)
                maps[c] = (yz * ((x - x.mean()) / (x.std() + 1e-12))[:, None]).mean(0)
        if maps:
            m = specificity_matrix(maps, {c: selectivity[c] for c in maps}, informative)
            spec["reference"][name] = {"matrix": m.round(4).to_dict(orient="index"),
                                       "margins": specificity_margins(m)}
    logger.info("TCAV concept specificity (%s, within %d informative voxels): %s; in the measured data: %s",
                cfg.layers[0], int(informative.sum()),
                ", ".join(f"{c} {v['diagonal']:.2f} ({v['margin']:+.2f})"
                          for c, v in spec["layers"][cfg.layers[0]]["margins"].items()),
                ", ".join(f"{c} {v['diagonal']:.2f} ({v['margin']:+.2f})"
                          for c, v in spec["reference"].get("measured voxels", {}).get("margins", {}).items()))
    return val, spec


def truth_tuning(data: PreparedData) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """Simulated tuning weights at the run's voxels, (V, channels), scaled by each voxel's share of stimulus-driven
    signal, the channel names and each voxel's region family (V,); None when the data are not a simulation."""
    sim = data.manifest.get("bids_simulation")
    if not sim or not (Path(sim) / "tuning.npz").is_file():
        return None
    r = data.simulation_visual_index()
    if r is None:
        return None
    t = np.load(Path(sim) / "tuning.npz")
    w = t["weights"][r] / t["weights"][r].sum(1, keepdims=True)  # selectivity: share of the voxel's tuning
    return w * t["visual_share"][r][:, None], [str(c) for c in t["channels"]], t["family"][r].astype(str)


# ------------------------------------------------------------------ the command


def concepts(run_dir: str | Path, cfg: ConceptConfig | None = None, videos: list | None = None,
             out: str | Path | None = None) -> dict:
    """TCAV of the run's encoder (and concept saliency of its decoder) into ``RUN_DIR/concepts`` (or ``out``).

    With ``videos`` (required for an exported MODEL_DIR), the clips of the videos are both the pool of concept and
    random examples and the analysed clips; concepts then come from measures (motion, edges, colour, luminance),
    ``--annotations`` tables named after the videos, or folders of clips."""
    cfg = cfg or ConceptConfig()
    cfg.validate()
    run_dir = Path(run_dir)
    model, kind, data, out, work = analysis_source(run_dir, cfg, videos, out, "concepts")
    if kind not in ("encoder", "encdec"):
        raise ValueError(f"{run_dir}: this run has no encoder (model {kind!r}); concepts need 'encoder' or 'encdec'")
    encoder = model if kind == "encoder" else model.encoder
    decoder = model.decoder if kind == "encdec" else None
    encoder.eval()
    device = next(model.parameters()).device
    try:
        with exclusive_folder(out, "concepts"):
            return _concepts(run_dir, out, cfg, encoder, decoder, device, data)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _concepts(run_dir: Path, out: Path, cfg: ConceptConfig, encoder, decoder, device, data: PreparedData) -> dict:
    rng = np.random.default_rng(cfg.seed)
    pool = data.indices("train")
    test = data.indices("test")
    if len(pool) < 2 * cfg.n_examples:
        raise ValueError(f"{data.root}: {len(pool)} training clips, too few for sets of {cfg.n_examples}; lower "
                         "--n-examples")
    sets = concept_sets(data, cfg, pool)
    k, n_pseudo = cfg.n_random, cfg.n_pseudo
    # independent random sets: k negatives (shared by every concept and pseudo-concept), then the pseudo-concepts
    randoms = [rng.choice(pool, cfg.n_examples, replace=False) for _ in range(k + n_pseudo)]
    minmax = data.frame_intensity == "minmax"

    def clips_of(idx_or_clips) -> np.ndarray:
        a = np.asarray(idx_or_clips)
        return a if a.ndim == 5 else np.stack([data.clip(int(i)) for i in a])

    ijk, mask = data.voxels_ijk(), data.mask_img()
    regions = analysis_regions(data, cfg)
    region_names = sorted(set(regions["label"]) - {"unlabelled"})
    groups = [np.flatnonzero(regions["label"].to_numpy() == r) for r in region_names]
    test = subsample(test, cfg.max_clips)
    rows, voxel_scores, random_maps = [], {}, {}
    positives = list(sets.values()) + randoms[k:]  # the concepts, then the pseudo-concepts
    n_pos = len(positives)
    for layer in cfg.layers:
        # every CAV of the layer first (small sets), then one streamed pass over the test clips scores them all:
        # CAV (i, j) = positive set i against negative set j
        dirs, coef = _layer_cavs(encoder, layer, positives, randoms[:k], clips_of, device, cfg, minmax)
        pos_v, pos_r = streamed_tcav(encoder, layer, dirs, data, test, groups, device, cfg.batch_size, minmax, coef)
        scores_v = (pos_v / len(test)).reshape(n_pos, k, -1)  # (n_pos, k, V)
        scores_r = (pos_r / len(test)).reshape(n_pos, k, -1)  # (n_pos, k, R)
        pseudo_v, pseudo_r = scores_v[len(sets):].mean(1), scores_r[len(sets):].mean(1)  # (M, V), (M, R)
        # random-vs-random CAVs (pseudo-concept j against negative j): the control of the specificity maps
        rand_v = np.stack([scores_v[len(sets) + j, j] for j in range(min(k, n_pseudo))])
        rand_r = np.stack([scores_r[len(sets) + j, j] for j in range(min(k, n_pseudo))])
        random_maps[layer] = rand_v  # (k, V) scores of random-vs-random CAVs
        for c, concept in enumerate(sets):
            con_v, con_r = scores_v[c], scores_r[c]
            # ties broken at random, one generator per (layer, concept, level) seeded by their names: reproducible,
            # exact, and a concept's p does not move when other concepts or layers are added or reordered
            key = (cfg.seed, zlib.crc32(layer.encode()), zlib.crc32(concept.encode()))
            p_v = pseudo_concept_pvalues(con_v.mean(0), pseudo_v, seed=(*key, 0))
            p_r = pseudo_concept_pvalues(con_r.mean(0), pseudo_r, seed=(*key, 1))
            voxel_scores[(concept, layer)] = con_v.mean(0)
            for j in range(con_v.shape[1]):
                rows.append({"concept": concept, "layer": layer, "level": "voxel", "unit": str(j),
                             "region": regions["label"].iat[j], "score": con_v[:, j].mean(),
                             "random_score": rand_v[:, j].mean(), "p": p_v[j]})
            for r, name in enumerate(region_names):
                rows.append({"concept": concept, "layer": layer, "level": "region", "unit": name, "region": name,
                             "score": con_r[:, r].mean(), "random_score": rand_r[:, r].mean(), "p": p_r[r]})
    table = pd.DataFrame(rows)
    # Benjamini-Hochberg over the whole family of each level: concepts x layers x voxels (regions)
    table["q"] = np.nan
    for level in ("voxel", "region"):
        at = table["level"] == level
        if at.any():
            table.loc[at, "q"] = fdr_bh(table.loc[at, "p"].to_numpy())
    # the vocabulary's names for the null used (the rank among pseudo-concepts); p and q stay as aliases
    table["p_pseudo"], table["q_pseudo"] = table["p"], table["q"]
    for (concept, layer), part in table[table["level"] == "region"].groupby(["concept", "layer"], sort=False):
        logger.info("TCAV %s at %s: mean voxel score %.3f; %d of %d regions q < 0.05 (family-wide)", concept, layer,
                    voxel_scores[(concept, layer)].mean(), int((part["q"] < 0.05).sum()), len(part))
    default_layer = cfg.layers[0]
    n_vox = len(ijk)
    summary: dict = {"run": str(run_dir), "layers": cfg.layers, "default_layer": default_layer,
                     "concepts": list(sets), "n_examples": {c: int(len(m)) for c, m in sets.items()},
                     "n_random": cfg.n_random, "n_pseudo": n_pseudo, "n_eval_clips": len(test),
                     "n_test_clips": int(len(data.indices("test"))),
                     "test": {"method": f"rank of the concept's mean TCAV score over its {k} CAVs among {n_pseudo} "
                                        "pseudo-concepts' (random training-clip sets, each with its CAVs against "
                                        f"the same {k} negative sets), two-sided, p = rank / ({n_pseudo} + 1) with "
                                        "ties broken at random (seeded)",
                              "n_pseudo": int(n_pseudo),
                              "fdr_family": {"voxel": f"{len(sets)} concepts x {len(cfg.layers)} layers x {n_vox} "
                                                      f"voxels = {len(sets) * len(cfg.layers) * n_vox} tests",
                                             "region": f"{len(sets)} concepts x {len(cfg.layers)} layers x "
                                                       f"{len(region_names)} regions"}}}
    for concept in sets:
        save_voxel_map(out / f"tcav_{concept}.nii.gz", voxel_scores[(concept, default_layer)], ijk, mask)
    # validation against the simulator's tuning
    truth = truth_tuning(data)
    # the encoder's predictions of the test clips (n_test, V), small: read by the validation and the decoder side
    pred = None
    if truth is not None or decoder is not None:
        with torch.no_grad():
            pred = np.concatenate([encoder(_to_batch(clips_of(chunk), device, minmax)).float().cpu().numpy()
                                   for chunk in _chunks(test, cfg.batch_size)])
    if truth is not None:
        summary["validation"], summary["specificity"] = _validate(data, cfg, sets, voxel_scores, random_maps, truth,
                                                                  test, pred, out)
    # decoder side
    dec_rows = []
    if decoder is not None:
        for concept in DECODER_CONCEPTS:
            sal = decoder_concept_saliency(decoder, pred, concept, device, cfg.batch_size)
            salient = top_fraction(sal, cfg.top)
            save_voxel_map(out / f"decoder_{concept}.nii.gz", sal, ijk, mask)
            tab = region_table(regions, salient, "group")
            tab.insert(0, "concept", concept)
            dec_rows.append(tab)
        write_text_atomic(out / "decoder_regions.csv", pd.concat(dec_rows).to_csv(index=False, float_format="%.2f"))
    write_text_atomic(out / "tcav.csv", table.to_csv(index=False, float_format="%.6g"))
    _heatmap(table, default_layer, out / "tcav_regions.png")
    write_json(out / "summary.json", summary)
    write_sidecars(out, "RUN_DIR/concepts", sources=[str(run_dir.resolve())],
                   space=space_label(getattr(data, "manifest", None), int(mask.header["sform_code"])),
                   per_file={f"tcav_{c}.nii.gz": {"Layer": default_layer} for c in sets})
    write_manifest(out, "concepts", asdict(cfg), inputs={"run": str(run_dir), "data": str(data.root)})
    return summary


def _layer_cavs(encoder, layer: str, positives: list, negatives: list, clips_of, device, cfg: ConceptConfig,
                minmax: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """The CAVs of every positive set against every negative set at ``layer`` as ``(directions, coef)`` for
    :func:`streamed_tcav`: CAV ``i * len(negatives) + j`` is positive ``i`` against negative ``j``.

    ``mean`` CAVs: the directions are the sets' mean activations (less their common mean, so that the differences
    are not cancellations of large numbers), one per set; the set means are accumulated over the clips the sets
    share, streamed once. ``logistic`` CAVs: one direction per CAV (each fitted on its two sets)."""
    k = len(negatives)
    if cfg.cav == "logistic":
        act_neg = [layer_activations(encoder, clips_of(r), layer, device, cfg.batch_size, minmax).flatten(1)
                   .cpu().numpy() for r in negatives]
        dirs = []
        for members in positives:
            act_pos = layer_activations(encoder, clips_of(members), layer, device, cfg.batch_size, minmax)
            act_pos = act_pos.flatten(1).cpu().numpy()
            dirs += [train_cav(act_pos, act_neg[j], cfg.seed + j, cfg.cav) for j in range(k)]
        return dirs, np.eye(len(dirs))
    all_sets = list(positives) + list(negatives)
    means: list = [None] * len(all_sets)
    indexed = [i for i, s in enumerate(all_sets) if np.asarray(s).ndim == 1]
    for i, s in enumerate(all_sets):  # sets of user clips
        if i not in indexed:
            means[i] = layer_activations(encoder, clips_of(s), layer, device, cfg.batch_size, minmax).flatten(1) \
                .double().mean(0).cpu().numpy()
    if indexed:
        union = np.unique(np.concatenate([np.asarray(all_sets[i]) for i in indexed]))
        member = np.zeros((len(indexed), len(union)))
        for r, i in enumerate(indexed):
            member[r, np.searchsorted(union, all_sets[i])] = 1.0 / len(all_sets[i])
        sums = None
        for lo in range(0, len(union), cfg.batch_size):
            part = union[lo : lo + cfg.batch_size]
            act = layer_activations(encoder, clips_of(part), layer, device, cfg.batch_size, minmax).flatten(1)
            contrib = member[:, lo : lo + len(part)] @ act.double().cpu().numpy()
            sums = contrib if sums is None else sums + contrib
        for r, i in enumerate(indexed):
            means[i] = sums[r]
    centre = np.mean(means, axis=0)
    dirs = [m - centre for m in means]
    n_pos = len(positives)
    coef = np.zeros((n_pos * k, len(all_sets)))
    for i in range(n_pos):
        for j in range(k):
            norm = np.linalg.norm(means[i] - means[n_pos + j]) + 1e-12  # train_cav("mean")'s unit vector
            coef[i * k + j, i], coef[i * k + j, n_pos + j] = 1.0 / norm, -1.0 / norm
    return dirs, coef


def _heatmap(table: pd.DataFrame, layer: str, path: Path) -> None:
    """Concept x region TCAV scores at ``layer``; significant cells (q < 0.05) marked."""
    from cinevox.utils.plotting import pyplot

    t = table[(table.level == "region") & (table.layer == layer)]
    if t.empty:
        return
    score = t.pivot(index="concept", columns="region", values="score")
    q = t.pivot(index="concept", columns="region", values="q").reindex_like(score)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * score.shape[1], 1.2 + 0.4 * score.shape[0]))
    im = ax.imshow(score.to_numpy(), vmin=0, vmax=1, cmap="RdBu_r", aspect="auto")
    for (i, j), v in np.ndenumerate(q.to_numpy()):
        if v < 0.05:
            dark = abs(score.to_numpy()[i, j] - 0.5) > 0.3
            ax.text(j, i, "*", ha="center", va="center", fontsize=11, color="w" if dark else "k")
    ax.set_xticks(range(score.shape[1]), score.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(score.shape[0]), score.index, fontsize=8)
    ax.set_title(f"TCAV score per region ({layer}); * q < 0.05 against random CAVs", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
