"""Error rates and validations on known truth: the tables behind the README's statistics claims, in one run.

    python benchmarks/bench_statistics.py [--seeds 3] [--cnn-epochs 0] [--run RUN_DIR [--noise-free-control 40]]
                                          [--work DIR]

1. Per-voxel nulls (evaluate): simulations with half their visual voxels true nulls (``--null-fraction 0.5``,
   no stimulus signal at all, autocorrelated noise and non-visual signal kept), a ridge baseline (and, with
   ``--cnn-epochs N``, a CNN encoder trained N epochs); false-positive rate at alpha 0.05 on the null voxels and
   power on the planted informative voxels for the shuffled, circular-shift and phase-randomised nulls.
2. Paired model comparison (compare): two equally good models with AR(1) errors (the null) and a worse one,
   block permutation over test time vs the same test ignoring autocorrelation (blocks of 1 TR).
3. With ``--run RUN`` (an E-D run of a simulation, e.g. the demo's ``runs/encdec`` after ``cinevox concepts`` and
   ``cinevox lesion``): the TCAV concept-specificity matrix within informative voxels and within region
   families, with the measured data's and the predictions' own specificity and the oracle's margins, the lesion
   ranking's ROC AUC against the planted regions, and the tuning probe: which concept tuning the noise-free
   signal, the measured data and each run's predictions carry (regression on the simulator's channel drives).
   ``--noise-free-control EPOCHS`` adds the positive control: an encoder trained on the noise-free signal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def half_null_simulation(work: Path, seed: int) -> Path:
    """The simulation of the null and selection tables (half the visual voxels true nulls, 6 mm voxels, two 120 s
    films and YouAgain), made once per seed under ``work/halfnull<seed>`` and reused by both."""
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate

    out = work / f"halfnull{seed}" / "bids"
    if (out / "derivatives" / "simulation" / "truth.json").is_file():
        return out
    return simulate(out, preset("tiny", seed=seed, null_fraction=0.5, voxel_size=6.0,
                                films={"FilmA": 120.0, "FilmB": 120.0, "YouAgain": 60.0}), progress=False)


def null_calibration(work: Path, seeds: int, cnn_epochs: int) -> pd.DataFrame:
    from helpers import FAST_RIDGE, sim_config

    from cinevox.data.prepare import prepare
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.training.ridge import RidgeConfig, baseline

    rows = []
    for seed in range(seeds):
        root = work / f"null{seed}"
        sim = half_null_simulation(work, seed)
        prep = prepare(sim, root / "prepared", sim_config(sim, snr_top=1.0), progress=False)
        runs = {"ridge": baseline(prep, root / "ridge", RidgeConfig(**FAST_RIDGE), progress=False)}
        if cnn_epochs:
            from cinevox.losses import LossConfig
            from cinevox.training import TrainConfig, train

            runs["CNN encoder"] = train(prep, root / "E", TrainConfig(model="encoder", epochs=cnn_epochs,
                                                                     batch_size=8, lr=1e-3, tensorboard=False,
                                                                     loss=LossConfig()), progress=False)
        for model, run in runs.items():
            m = evaluate(run, EvalConfig(n_perm=199, n_perm_frames=5))["encoder"]
            cal = m["null_calibration"]
            for null in ("shuffle", "circular", "phase"):
                rows.append({"seed": seed, "model": model, "null": null, "n_null_voxels": cal["n_null_voxels"],
                             "fpr": cal[f"fpr_{null}"], "power": cal.get(f"power_{null}_informative", np.nan),
                             "test_trs": m.get("n_test_samples", np.nan)})
    return pd.DataFrame(rows)


def ar1(rng, shape: tuple, phi: float = 0.5) -> np.ndarray:
    """Unit-variance AR(1) series along the first axis: ``shape`` (T, ...)."""
    x = np.empty(shape)
    x[0] = rng.normal(size=shape[1:])
    for t in range(1, shape[0]):
        x[t] = phi * x[t - 1] + np.sqrt(1 - phi**2) * rng.normal(size=shape[1:])
    return x


def paired_calibration(reps: int = 200) -> pd.DataFrame:
    from cinevox.stats import paired_comparison

    def pair(rng, gain_b):
        films = np.repeat([0, 1], 60)
        signal = ar1(rng, (120, 12), 0.5)
        true = signal + ar1(rng, (120, 12), 0.8)
        return true, signal + 1.5 * ar1(rng, (120, 12), 0.8), gain_b * signal + 1.5 * ar1(rng, (120, 12), 0.8), films

    rng = np.random.default_rng(1)
    rows = []
    for case, gain in (("null (equally good)", 1.0), ("model b signal x0.4", 0.4)):
        n = reps if gain == 1.0 else reps // 4
        for block, name in ((12, "block permutation (12 TRs)"), (1, "iid (1-TR blocks)")):
            rej = sum(paired_comparison(*pair(rng, gain), n_boot=9, n_perm=199, block=block, seed=k)["p_value"] < 0.05
                      for k in range(n))
            rows.append({"case": case, "test": name, "reps": n, "rejection_rate": rej / n})
    return pd.DataFrame(rows)


def tuning_probe(run: Path) -> pd.DataFrame | None:
    """What each series carries of the voxels' concept tuning: non-negative regression of each voxel's series on
    the simulator's channel drives at its pRF (``probe_tuning``), then the concept-specificity AUCs of the
    recovered selectivities (overall within informative voxels, and within region families). Rows: the noise-free
    stimulus signal (positive control), the measured data, and the test predictions of every run beside ``run``."""
    from cinevox.analysis.concepts import (
        TRUTH_CHANNEL,
        specificity_margins,
        specificity_matrix,
        specificity_within,
        truth_tuning,
    )
    from cinevox.data.dataset import PreparedData
    from cinevox.simulate.channels import channel_drives, probe_tuning
    from cinevox.simulate.films import CHANNELS
    from cinevox.training.train import run_prepared_dir

    data = PreparedData(run_prepared_dir(run))
    truth = truth_tuning(data)
    if truth is None:
        print(f"\n{run}: not trained on a simulation; no tuning probe")
        return None
    w, channels, family = truth
    share = w.sum(1)
    informative = share >= np.median(share)
    concepts = [c for c in ("faces", "objects", "motion", "edges", "colour", "luminance")
                if TRUTH_CHANNEL[c] in channels]
    selectivity = {c: w[:, channels.index(TRUTH_CHANNEL[c])] / np.maximum(share, 1e-12) for c in concepts}
    sim = Path(data.manifest["bids_simulation"])
    vi = data.simulation_visual_index()
    drives = channel_drives(sim.parent.parent, vi)
    films, trs = data.samples["film"].to_numpy(), data.samples["tr"].to_numpy()
    test = data.indices("test")
    stim = {f: np.load(sim / "stimulus_signal" / f"{f}.npy") for f in drives}
    sources = {"noise-free stimulus signal (all TRs)": (np.stack([stim[f][t][vi] for f, t in zip(films, trs)]),
                                                         np.arange(len(films))),
               "measured voxels (all TRs)": (np.asarray(data.voxels), np.arange(len(films))),
               "measured voxels (test TRs)": (np.asarray(data.voxels)[test], test)}
    for other in sorted(run.parent.iterdir()):
        pred = other / "eval" / "pred_voxels.npy"
        if pred.is_file():
            sources[f"{other.name} predictions (test TRs)"] = (np.load(pred), test)
    rows = []
    for name, (y, idx) in sources.items():
        rec = probe_tuning(drives, films[idx], trs[idx], y)
        total = np.maximum(rec.sum(1), 1e-12)
        maps = {c: rec[:, CHANNELS.index(TRUTH_CHANNEL[c])] / total for c in concepts}
        for scope, m in (("informative", specificity_matrix(maps, selectivity, informative)),
                         ("within family", specificity_within(maps, selectivity, informative, family))):
            if m is None:
                continue
            for c, v in specificity_margins(m).items():
                rows.append({"series": name, "scope": scope, "concept": c,
                             "cell": f"{v['diagonal']:.2f} ({v['margin']:+.2f})"})
    table = pd.DataFrame(rows).pivot(index=["scope", "series"], columns="concept", values="cell")
    print(f"\ntuning probe ({int(informative.sum())} informative voxels; diagonal AUC (margin over the best other "
          "concept), goal >= 0.75 (+0.10)):")
    print(table[concepts].to_string())
    return table


def noise_free_prepared(run: Path, work: Path) -> Path:
    """A copy of ``run``'s prepared data in ``work/noise_free/prepared`` whose voxels are the simulation's noise-free
    stimulus signal (its integrity record updated)."""
    from cinevox.data.dataset import PreparedData
    from cinevox.training.train import run_prepared_dir
    from cinevox.utils.folders import file_record

    src = run_prepared_dir(run)
    data = PreparedData(src)
    sim = Path(data.manifest["bids_simulation"])
    vi = data.simulation_visual_index()
    prep = work / "noise_free" / "prepared"
    if prep.exists():
        shutil.rmtree(prep)
    shutil.copytree(src, prep, ignore=shutil.ignore_patterns(".cinevox.lock", "voxels.npy"))
    stim = {f: np.load(sim / "stimulus_signal" / f"{f}.npy") for f in data.samples["film"].unique()}
    np.save(prep / "voxels.npy", np.stack([stim[f][t][vi] for f, t in zip(data.samples["film"],
                                                                          data.samples["tr"])]).astype(np.float32))
    manifest = json.loads((prep / "manifest.json").read_text())
    manifest["integrity"]["voxels.npy"] = file_record(prep / "voxels.npy")
    (prep / "manifest.json").write_text(json.dumps(manifest))
    return prep


def noise_free_control(run: Path, work: Path, epochs: int) -> Path:
    """The positive control of the tuning probe and TCAV: an encoder trained on the noise-free stimulus signal of
    ``run``'s simulation (a copy of its prepared data with the voxels replaced), then ``cinevox concepts`` on it.
    What this model does not learn with noise-free targets, no model of these data learns. Returns its run."""
    from cinevox.analysis.concepts import ConceptConfig, concepts
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.losses import LossConfig
    from cinevox.training import TrainConfig, train

    prep = noise_free_prepared(run, work)
    out = work / "noise_free" / "runs" / f"E{epochs}"
    train(prep, out, TrainConfig(model="encoder", epochs=epochs, lr=3e-4, tensorboard=False, loss=LossConfig()),
          progress=False)
    m = evaluate(out, EvalConfig(n_perm=19, n_perm_frames=5))["encoder"]
    print(f"\nnoise-free control: encoder trained {epochs} epochs on the noise-free stimulus signal, test r "
          f"{m['r_mean']:.3f}")
    concepts(out, ConceptConfig())
    return out


def run_tables(run: Path) -> None:
    con = run / "concepts" / "summary.json"
    if con.is_file():
        s = json.loads(con.read_text())
        spec = s.get("specificity", {})
        for layer, v in spec.get("layers", {}).items():
            print(f"\nTCAV concept specificity, layer {layer}, within {spec['n_informative']} informative voxels "
                  "(rows: truth, columns: TCAV maps; ROC AUC):")
            print(pd.DataFrame(v["matrix"]).T.round(2).to_string())
            print("diagonal (margin over the best other map): " + ", ".join(
                f"{c} {m['diagonal']:.2f} ({m['margin']:+.2f})" for c, m in v["margins"].items()))
            if v.get("within_family"):
                print("within region families:")
                print(pd.DataFrame(v["within_family"]["matrix"]).T.round(2).to_string())
        if spec.get("oracle"):
            print("oracle (maps = true selectivities), margins: " + ", ".join(
                f"{c} {m['margin']:+.2f}" for c, m in spec["oracle"]["margins"].items()))
        for name, v in spec.get("reference", {}).items():
            print(f"\nreference, {name} (r with each concept's per-clip measure):")
            print(pd.DataFrame(v["matrix"]).T.round(2).to_string())
        print("\ntest:", s.get("test"))
    les = run / "lesion" / "summary.json"
    if les.is_file():
        s = json.loads(les.read_text())
        print(f"\nlesion ranking vs the planted regions (ROC AUC), scores: {s.get('auc_planted')}")
    tuning_probe(run)


# ------------------------------------------------------------------ TCAV null (issue 24 item 1)


def tcav_toy_null(reps: int = 30, seed: int = 0) -> pd.DataFrame:
    """Rejection rate at alpha 0.05 for random "concepts" on a toy encoder (a fixed nonlinear readout of correlated
    activations): the pseudo-concept rank test vs the earlier permutation test of the concept's K CAVs against K
    independent random-vs-random CAVs. Each rep draws a new concept; voxels of one concept are not independent."""
    import torch

    from cinevox.analysis.concepts import (
        directional_derivatives,
        permutation_pvalues,
        pseudo_concept_pvalues,
        train_cav,
    )

    rng = np.random.default_rng(seed)
    d, v, n_pool, n_set, k, m = 32, 400, 800, 20, 10, 100
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(d, 48, generator=g) / d**0.5, torch.randn(48, v, generator=g) / 48**0.5

    def head(a):
        return torch.tanh(a @ w1) @ w2

    mix = rng.normal(size=(d, d)) / d**0.5 + np.eye(d)
    pool = rng.normal(size=(n_pool, d)) @ mix
    test = torch.as_tensor(rng.normal(size=(60, d)) @ mix, dtype=torch.float32)

    def draw():
        return pool[rng.choice(n_pool, n_set, replace=False)]

    def scores(cav):
        return (directional_derivatives(head, test, torch.as_tensor(cav, dtype=torch.float32)) > 0).double() \
            .mean(0).numpy()

    negs = [draw() for _ in range(k)]
    pseudo = np.stack([np.mean([scores(train_cav(p, n)) for n in negs], 0) for p in (draw() for _ in range(m))])
    rows = []
    for rep in range(reps):
        rand = np.stack([scores(train_cav(draw(), draw())) for _ in range(k)])
        pos = draw()
        con = np.stack([scores(train_cav(pos, n)) for n in negs])
        rows.append({"rep": rep, "test": "pseudo-concept rank, ties at random (new)",
                     "rejection": float((pseudo_concept_pvalues(con.mean(0), pseudo, seed=rep) < 0.05).mean())})
        rows.append({"rep": rep, "test": "pseudo-concept rank, ties against (before)",
                     "rejection": float((pseudo_concept_pvalues(con.mean(0), pseudo, ties="count") < 0.05).mean())})
        rows.append({"rep": rep, "test": "K concept vs K random CAVs (old)",
                     "rejection": float((permutation_pvalues(con, rand, seed=rep)[0] < 0.05).mean())})
    return pd.DataFrame(rows)


def tcav_run_tests(run: Path, sets: dict[str, np.ndarray], layer: str = "temporal", k: int = 10, m: int = 100,
                   n_examples: int = 40, seed: int = 0, max_clips: int | None = None) -> dict:
    """The TCAV tests on a trained run, per voxel, for concept sets of training-clip indices: the pseudo-concept
    rank test (``cinevox concepts``: ties broken at random, ``p_new``; ties counted against the concept, the rule
    before, ``p_count``) and the earlier permutation test (K concept CAVs vs K random-vs-random CAVs from 2K further
    random sets, ``p_old``). Class-mean CAVs, one forward-mode pass per set. Returns
    ``{concept: {"p_new", "p_count", "p_old"}, "seconds": ...}``."""
    import time

    from cinevox.analysis.concepts import (
        ConceptConfig,
        _layer_cavs,
        permutation_pvalues,
        pseudo_concept_pvalues,
        streamed_tcav,
    )
    from cinevox.analysis.regions import subsample
    from cinevox.data.dataset import PreparedData
    from cinevox.training.train import load_run_model, run_prepared_dir

    t0 = time.time()
    model, tcfg, _, _ = load_run_model(run, device="cpu")
    encoder = model if tcfg.model == "encoder" else model.encoder
    encoder.eval()
    data = PreparedData(run_prepared_dir(run))
    pool, test = data.indices("train"), subsample(data.indices("test"), max_clips)
    rng = np.random.default_rng(seed + 1000)
    negs = [rng.choice(pool, n_examples, replace=False) for _ in range(k)]
    pseudo = [rng.choice(pool, n_examples, replace=False) for _ in range(m)]
    old = [rng.choice(pool, n_examples, replace=False) for _ in range(2 * k)]
    names = list(sets)
    positives = [sets[c] for c in names] + pseudo + old
    cfg = ConceptConfig(n_examples=n_examples, n_random=k, seed=seed)
    minmax = data.frame_intensity == "minmax"

    def clips_of(idx):
        return np.stack([data.clip(int(i)) for i in idx])

    dirs, coef = _layer_cavs(encoder, layer, positives, negs, clips_of, "cpu", cfg, minmax)
    n_pos = len(positives)
    rows = [coef[i * k : (i + 1) * k] for i in range(len(names) + m)]  # concepts and pseudo-concepts vs negatives
    extra = np.zeros((k, coef.shape[1]))
    for j in range(k):  # old random-vs-random CAVs: old set 2j against old set 2j + 1
        a, b = len(names) + m + 2 * j, len(names) + m + 2 * j + 1
        norm = np.linalg.norm(dirs[a] - dirs[b]) + 1e-12
        extra[j, a], extra[j, b] = 1.0 / norm, -1.0 / norm
    full = np.concatenate(rows + [extra])
    groups = [np.arange(1)]
    pos_v, _ = streamed_tcav(encoder, layer, dirs, data, test, groups, "cpu", 8, minmax, full)
    s = (pos_v / len(test)).astype(np.float64)
    per = s[: (len(names) + m) * k].reshape(len(names) + m, k, -1)
    rand = s[(len(names) + m) * k :]
    pseudo_means = per[len(names) :].mean(1)
    out: dict = {"seconds": time.time() - t0, "n_test": len(test), "n_sets": n_pos + k}
    for i, c in enumerate(names):
        out[c] = {"p_new": pseudo_concept_pvalues(per[i].mean(0), pseudo_means, seed=(seed, i)),
                  "p_count": pseudo_concept_pvalues(per[i].mean(0), pseudo_means, ties="count"),
                  "p_old": permutation_pvalues(per[i], rand, seed=seed)[0]}
    return out


TCAV_TESTS = (("p_new", "pseudo-concept rank, ties at random (new)"),
              ("p_count", "pseudo-concept rank, ties against (before)"),
              ("p_old", "K concept vs K random CAVs (old)"))


def tcav_null_table(run: Path | None, toy_reps: int, n_random_concepts: int = 30,
                    colour_run: Path | None = None, layers: tuple = ("temporal", "conv4")) -> pd.DataFrame:
    """The TCAV null table: rejection rate at alpha 0.05 of random concepts (toy encoder; a run's encoder with sets
    of random training clips, at each of ``layers``: at ``conv4`` every score of one CAV is 0 or 1, so ties are
    the rule) for the tests, with the standard error of the mean share over the sets (the voxels of one set are
    not independent: single sets spread widely), and, on ``colour_run`` (the noise-free-trained encoder), the
    power of each for colour on the quarter of informative voxels most colour-selective."""
    rows = []
    if toy_reps:
        toy = tcav_toy_null(toy_reps)
        for t, part in toy.groupby("test"):
            rows.append({"model": "toy encoder", "concept": f"random ({toy_reps} draws)", "test": t,
                         "share p < 0.05": part.rejection.mean(), "min": part.rejection.min(),
                         "max": part.rejection.max()})
    if run is not None:
        from cinevox.data.dataset import PreparedData
        from cinevox.training.train import run_prepared_dir

        pool = PreparedData(run_prepared_dir(run)).indices("train")
        rng = np.random.default_rng(7)
        sets = {f"random{i}": rng.choice(pool, 40, replace=False) for i in range(n_random_concepts)}
        for layer in layers:
            res = tcav_run_tests(run, sets, layer=layer)
            for key, label in TCAV_TESTS:
                share = [float((res[c][key] < 0.05).mean()) for c in sets]
                rows.append({"model": f"{run.name} ({res['n_test']} test clips, {layer})",
                             "concept": f"random training clips ({len(sets)} sets)", "test": label,
                             "share p < 0.05": np.mean(share), "se": np.std(share, ddof=1) / np.sqrt(len(share)),
                             "min": min(share), "max": max(share)})
            tied = np.mean([np.mean(res[c]["p_new"] != res[c]["p_count"]) for c in sets])
            print(f"\nTCAV tests on {run} at {layer}: {res['seconds']:.0f} s for {res['n_sets']} sets (one JVP per "
                  f"set and test clip); voxels with a pseudo-concept tied with the concept: {tied:.3f}")
    if colour_run is not None:
        from cinevox.analysis.concepts import ConceptConfig, concept_sets, truth_tuning
        from cinevox.data.dataset import PreparedData
        from cinevox.training.train import run_prepared_dir

        data = PreparedData(run_prepared_dir(colour_run))
        sets = concept_sets(data, ConceptConfig(concepts=["colour"]), data.indices("train"))
        res = tcav_run_tests(colour_run, sets)
        w, channels, _ = truth_tuning(data)
        share = w.sum(1)
        informative = share >= np.median(share)
        sel = w[:, channels.index("colour")] / np.maximum(share, 1e-12)
        tuned = informative & (sel >= np.quantile(sel[informative], 0.75))
        for key, label in TCAV_TESTS:
            p = res["colour"][key]
            from cinevox.stats import fdr_bh

            q = fdr_bh(p)
            rows.append({"model": f"noise-free-trained E ({res['n_test']} test clips)",
                         "concept": f"colour, {int(tuned.sum())} colour-tuned voxels", "test": label,
                         "share p < 0.05": float((p[tuned] < 0.05).mean()), "min": np.nan, "max": np.nan,
                         "share q < 0.05": float((q[tuned] < 0.05).mean()),
                         "other voxels p < 0.05": float((p[~tuned] < 0.05).mean())})
        print(f"TCAV tests on {colour_run}: {res['seconds']:.0f} s")
    return pd.DataFrame(rows)


def tcav_sim_runs(work: Path, epochs: int) -> tuple[Path, Path]:
    """A small stand-in for the demo when it cannot be run: a tiny simulation (three films, 32 px, 4 frames per TR),
    an encoder trained ``epochs`` epochs on it, and the positive control trained as long on its noise-free signal.
    Returns ``(encoder run, noise-free-trained encoder run)``."""
    from helpers import sim_config

    from cinevox.data.prepare import prepare
    from cinevox.losses import LossConfig
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate
    from cinevox.training import TrainConfig, train

    root = work / "tcav_sim"
    sim = simulate(root / "bids", preset("tiny", films={"FilmA": 240.0, "FilmB": 240.0, "YouAgain": 40.0}),
                   progress=False)
    prep = prepare(sim, root / "prepared", sim_config(sim), progress=False)
    run = train(prep, root / "runs" / "E", TrainConfig(model="encoder", epochs=epochs, batch_size=8, lr=1e-3,
                                                        tensorboard=False, loss=LossConfig()), progress=False)
    return run, noise_free_encoder(run, work, epochs)


def noise_free_encoder(run: Path, work: Path, epochs: int) -> Path:
    """An encoder trained on the noise-free stimulus signal of ``run``'s simulation (its prepared data with the
    voxels replaced), without the concepts step: the run of :func:`noise_free_control`."""
    from cinevox.losses import LossConfig
    from cinevox.training import TrainConfig, train

    prep = noise_free_prepared(run, work)
    out = work / "noise_free" / "runs" / f"E{epochs}"
    return train(prep, out, TrainConfig(model="encoder", epochs=epochs, batch_size=8, lr=1e-3, tensorboard=False,
                                        loss=LossConfig()), progress=False)


# ------------------------------------------------------------------ selection bias (issue 24 item 2)


def selection_bias(work: Path, seeds: int) -> pd.DataFrame:
    """Voxel selection with and without the test period (``--select-on all|trainval``) on simulations with half
    their visual voxels true nulls, 30 % of the voxels kept: the selected null voxels' mean test r (ridge) and
    split-half ceiling on test TRs (their truth is 0), and r and r / ceiling of the selected informative voxels."""
    from helpers import FAST_RIDGE, sim_config

    from cinevox.data.prepare import prepare
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.training.ridge import RidgeConfig, baseline

    rows = []
    for seed in range(seeds):
        root = work / f"select{seed}"
        sim = half_null_simulation(work, seed)
        for rule in ("all", "trainval"):
            prep = prepare(sim, root / f"prepared_{rule}", sim_config(sim, snr_top=0.3, select_on=rule),
                           progress=False)
            run = baseline(prep, root / f"ridge_{rule}", RidgeConfig(**FAST_RIDGE), progress=False)
            evaluate(run, EvalConfig(n_perm=19, n_perm_frames=5))
            v = pd.read_csv(run / "eval" / "voxels.csv")
            null, inf = v["null_voxel"].astype(bool), v["informative"].astype(bool) & ~v["null_voxel"].astype(bool)
            rows.append({"seed": seed, "select_on": rule, "n_selected": len(v), "n_null_selected": int(null.sum()),
                         "null r": v.r[null].mean(), "null ceiling": v.ceiling[null].mean(),
                         "informative r": v.r[inf].mean(), "informative ceiling": v.ceiling[inf].mean(),
                         "informative r / ceiling": v.r[inf].mean() / v.ceiling[inf].mean()})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ interval coverage (issue 24 item 4)


def coverage_table(reps: int) -> pd.DataFrame:
    """Coverage of the 95 % block-bootstrap intervals (block 10 TRs) on simulated nulls with AR(1) noise: the mean
    of a per-TR drop (the lesion's interval: studentized with the Student-t floor, ``new``; the same without the
    floor; the percentile interval of the resampled means, ``percentile``, before) and the mean r difference of two
    equally good models (paired comparison: studentized influence series, with and without the floor; the
    percentile interval of the resampled r differences, before), on clips of 3-10 TRs (a ``--split stimuli``
    dataset), on 60-, 30-, 20-, 15- and 11-TR films, and on 30-TR films with AR(1) coefficient 0.7. ``old``: short
    films not pooled (each one block, every resample a rotation of it: the interval was a point)."""
    from cinevox.metrics import zscore_by_group
    from cinevox.stats import (
        _paired_t_interval,
        _r_columns_batched,
        block_bootstrap_indices,
        block_bootstrap_t_interval,
        paired_comparison,
    )

    def old_indices(groups, n_boot, block, rng):  # the earlier bootstrap: no pooling
        out = np.empty((n_boot, len(groups)), np.int64)
        for g in np.unique(groups):
            rows = np.flatnonzero(groups == g)
            n = len(rows)
            b = max(1, min(block, n))
            starts = rng.integers(0, n, (n_boot, int(np.ceil(n / b))))
            out[:, rows] = rows[((starts[:, :, None] + np.arange(b)) % n).reshape(n_boot, -1)[:, :n]]
        return out

    rng = np.random.default_rng(3)
    rows = []
    designs = [("clips of 3-10 TRs", lambda: rng.integers(3, 11, 30), 0.5), ("3 films x 60 TRs", lambda: [60] * 3, 0.5),
               ("4 films x 30 TRs", lambda: [30] * 4, 0.5), ("4 films x 20 TRs", lambda: [20] * 4, 0.5),
               ("4 films x 15 TRs", lambda: [15] * 4, 0.5), ("4 films x 11 TRs", lambda: [11] * 4, 0.5),
               ("4 films x 30 TRs, AR(1) 0.7", lambda: [30] * 4, 0.7)]
    for design, lens_of, phi in designs:
        hit = {"lesion drop (new: studentized)": [], "lesion drop (without the t floor)": [],
               "lesion drop (percentile)": [], "lesion drop (old)": [],
               "paired r difference (new: studentized)": [], "paired r difference (without the t floor)": [],
               "paired r difference (percentile, before)": []}
        width = {k: [] for k in hit}
        for k in range(reps):
            lens = lens_of()
            films = np.repeat(np.arange(len(lens)), lens)
            drop = np.concatenate([ar1(rng, (n, 1), phi)[:, 0] for n in lens])  # true mean 0
            idx = block_bootstrap_indices(films, 500, 10, rng)
            for name, (lo, hi) in (
                    ("lesion drop (new: studentized)", block_bootstrap_t_interval(drop, films, idx, 10)),
                    ("lesion drop (without the t floor)",
                     block_bootstrap_t_interval(drop, films, idx, 10, student_floor=False)),
                    ("lesion drop (percentile)", np.percentile(drop[idx].mean(1), [2.5, 97.5])),
                    ("lesion drop (old)", np.percentile(drop[old_indices(films, 500, 10, rng)].mean(1), [2.5, 97.5]))):
                hit[name].append(lo <= 0 <= hi)
                width[name].append(hi - lo)
            parts = []
            for n in lens:
                s = ar1(rng, (n, 6), phi)
                parts.append((s + ar1(rng, (n, 6), phi), s + 1.5 * ar1(rng, (n, 6), phi),
                              s + 1.5 * ar1(rng, (n, 6), phi)))
            # per-film z-scored, as `cinevox compare` passes them
            true, a, b = (zscore_by_group(np.concatenate([p[i] for p in parts]), films) for i in range(3))
            r = paired_comparison(true, a, b, films, n_boot=300, n_perm=9, block=10, seed=k)
            pidx = block_bootstrap_indices(films, 300, 10, rng)  # the interval before: percentile of resampled r
            boot = np.nanmean(_r_columns_batched(a[pidx], true[pidx]) - _r_columns_batched(b[pidx], true[pidx]), 1)
            same = block_bootstrap_indices(films, 300, 10, np.random.default_rng(k))  # paired_comparison's own draw
            flo, fhi = _paired_t_interval(true, a, b, films, same, 10, student_floor=False)
            for name, (lo, hi) in (("paired r difference (new: studentized)", (r["ci_low"], r["ci_high"])),
                                   ("paired r difference (without the t floor)",
                                    (r["mean_diff"] + flo, r["mean_diff"] + fhi)),
                                   ("paired r difference (percentile, before)", np.percentile(boot, [2.5, 97.5]))):
                hit[name].append(lo <= 0 <= hi)
                width[name].append(hi - lo)
        for name in hit:
            rows.append({"design": design, "interval": name, "reps": reps, "coverage": np.mean(hit[name]),
                         "mean width": np.mean(width[name])})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ recorded BOLD (issue 24 item 10)


def real_bold_table(work: Path, n_subjects: int, n_trs: int, cnn_epochs: int, plant: float = 0.5,
                    gains: tuple = (0.0, None)) -> pd.DataFrame:
    """The Sherlock PMC recording (``../shared/data/real/sherlock_pmc``) paired with a rendered video
    (:func:`realbold.sherlock_bids`): false-positive rate of each voxel-wise null on the true-null voxels, power on
    the third of voxels where a response to the video is planted (``plant`` x the recorded signal's SD), the
    split-half ceiling; for a ridge baseline and (``cnn_epochs``) a CNN encoder. A dataset without planting gives
    the all-null rates."""
    import nibabel as nib
    from helpers import FAST_RIDGE
    from realbold import sherlock_bids

    from cinevox.data.dataset import PreparedData
    from cinevox.data.masks import mask_positions
    from cinevox.data.prepare import PrepareConfig, prepare
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.training.ridge import RidgeConfig, baseline

    src = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "sherlock_pmc"
    if not src.is_dir():
        print(f"\nrecorded BOLD not found at {src}: no real-BOLD table")
        return pd.DataFrame()
    rows = []
    for gain in gains:
        gain = plant if gain is None else gain
        label = f"planted x{gain:g} in 1/3" if gain else "no planting"
        root = work / f"real_{gain:g}"
        bids = root / "bids"
        info = sherlock_bids(src, bids, subjects=tuple(range(1, n_subjects + 1)), n_trs=n_trs, plant=gain)
        cfg = PrepareConfig(films_dir=str(bids / "stimuli"), mask=str(bids / "mask.nii.gz"), delay_trs=0,
                            frame_size=32, frames_per_tr=4, gap_trs=3, val_blocks=2, snr_top=1.0, assume_mni=True)
        prep = prepare(bids, root / "prepared", cfg, progress=False)
        crop = np.asarray(nib.load(bids / "mask.nii.gz").dataobj) > 0
        planted = info["planted"][mask_positions(crop, PreparedData(prep).voxels_ijk())]
        runs = {"ridge": baseline(prep, root / "ridge", RidgeConfig(**FAST_RIDGE), progress=False)}
        if cnn_epochs:
            from cinevox.losses import LossConfig
            from cinevox.training import TrainConfig, train

            runs[f"CNN encoder ({cnn_epochs} ep)"] = train(
                prep, root / "E", TrainConfig(model="encoder", epochs=cnn_epochs, batch_size=8, lr=1e-3,
                                              tensorboard=False, loss=LossConfig()), progress=False)
        for model, run in runs.items():
            evaluate(run, EvalConfig(n_perm=199, n_perm_frames=5))
            v = pd.read_csv(run / "eval" / "voxels.csv")
            for null in ("shuffle", "circular", "phase"):
                p = v[f"p_{null}"].to_numpy()
                rows.append({"data": label, "model": model, "null": null,
                             "fpr (true nulls)": float((p[~planted] < 0.05).mean()),
                             "power (planted)": float((p[planted] < 0.05).mean()) if planted.any() else np.nan,
                             "ceiling (true nulls)": float(v.ceiling[~planted].mean()),
                             "ceiling (planted)": float(v.ceiling[planted].mean()) if planted.any() else np.nan,
                             "test TRs": len(PreparedData(prep).indices("test"))})
    print(f"\nrecorded BOLD: Sherlock PMC, {n_subjects} subjects, first {n_trs} TRs (TR 1.5 s), 481 voxels, a rendered "
          "video it never saw")
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="simulations for the null calibration (0: skip)")
    ap.add_argument("--cnn-epochs", type=int, default=0)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--noise-free-control", type=int, default=0, metavar="EPOCHS",
                    help="with --run: also train an encoder on the noise-free signal and print its tables")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--tcav-toy", type=int, default=0, metavar="REPS",
                    help="TCAV null on a toy encoder: REPS random concepts, old test vs new")
    ap.add_argument("--tcav-sim", type=int, default=0, metavar="EPOCHS",
                    help="TCAV null and colour power on a tiny simulation's encoder and its noise-free-trained "
                         "encoder, both trained EPOCHS (a stand-in for --run DEMO/runs/E-D --noise-free-control)")
    ap.add_argument("--selection-seeds", type=int, default=0, help="selection-bias simulations (0: skip)")
    ap.add_argument("--coverage-reps", type=int, default=0, help="interval-coverage nulls per design (0: skip)")
    ap.add_argument("--real-bold", type=int, default=0, metavar="SUBJECTS",
                    help="recorded-BOLD table with this many Sherlock subjects (0: skip)")
    ap.add_argument("--real-trs", type=int, default=600, help="TRs of the recording used by --real-bold")
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_statistics_"))
    if a.seeds > 0:  # --seeds 0: only the tables of --run
        nulls = null_calibration(work, a.seeds, a.cnn_epochs)
        print("per-voxel nulls at alpha 0.05 (false-positive rate on true null voxels, power on informative voxels):")
        print(nulls.groupby(["model", "null"])[["fpr", "power"]].agg(["mean", "min", "max"]).round(3).to_string())
        print("\npaired model comparison at alpha 0.05:")
        print(paired_calibration().to_string(index=False))
    if a.run:
        run_tables(a.run)
        if a.noise_free_control:
            nf = noise_free_control(a.run, work, a.noise_free_control)
            run_tables(nf)
            print_table("TCAV null (share of voxels with p < 0.05 for random concepts) and power on colour",
                        tcav_null_table(a.run, 0, colour_run=nf))
    if a.tcav_toy or a.tcav_sim:
        run, nf = tcav_sim_runs(work, a.tcav_sim) if a.tcav_sim else (None, None)
        print_table("TCAV null (share of voxels with p < 0.05 for random concepts) and power on colour",
                    tcav_null_table(run, a.tcav_toy, colour_run=nf))
    if a.selection_seeds:
        sel = selection_bias(work, a.selection_seeds)
        print_table(f"selection bias ({a.selection_seeds} simulations, half the visual voxels true nulls, 30 % kept; "
                    "means over seeds)", sel.drop(columns="seed").groupby("select_on").mean())
    if a.coverage_reps:
        print_table("95 % interval coverage on simulated nulls (block 10 TRs)", coverage_table(a.coverage_reps))
    if a.real_bold:
        print_table("recorded BOLD at alpha 0.05", real_bold_table(work, a.real_bold, a.real_trs, a.cnn_epochs))


def print_table(title: str, table: pd.DataFrame) -> None:
    print(f"\n{title}:")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
