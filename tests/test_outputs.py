"""The table of outputs (``cinevox.outputs``): the generated reference is current, the tiny pipeline writes no file
or column the table does not describe, every NIfTI has its sidecar and units, BIDS-derivatives descriptions, the
p/q/significance maps, and manifests that record the values used."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import undescribed

from cinevox import __version__, outputs
from cinevox.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"
SIDECAR_KEYS = {"Description", "Units", "Space", "Statistic", "Null", "Correction", "Sources", "GeneratedBy"}


def _niftis(*roots: Path) -> list[Path]:
    """cinevox's NIfTI outputs (the simulated BOLD runs have BIDS BOLD sidecars instead)."""
    return [p for r in roots for p in sorted(r.rglob("*.nii.gz")) if not p.name.endswith("_bold.nii.gz")]


def test_docs_outputs_is_generated_from_the_table():
    assert DOCS.read_text() == outputs.markdown(), "regenerate: python -m cinevox.outputs > docs/outputs.md"
    readme = (DOCS.parents[1] / "README.md").read_text()
    assert "docs/outputs.md" in readme


def test_table_entries_are_well_formed():
    assert {o.step for o in outputs.OUTPUTS} == set(outputs.STEPS)
    seen = set()
    for o in outputs.OUTPUTS:
        key = (o.step, o.folder, o.path)
        assert key not in seen, key
        seen.add(key)
        assert o.what.strip(), key
        if o.path.endswith((".csv", ".tsv")):
            assert o.columns, f"{key}: a table needs its columns' meanings"
    # one intent per map name, whichever step writes it
    intents = {}
    for o in outputs.OUTPUTS:
        if o.intent:
            name = o.path.rsplit("/", 1)[-1]
            assert intents.setdefault(name, o.intent) == o.intent, name
    # patterns: a film name matches one path component, a column pattern any name
    e = outputs.find("RUN_DIR/eval", "voxels.csv")
    assert e.column_meaning("r_FilmA") and e.column_meaning("p_circular") and e.column_meaning("nope") is None
    assert outputs.find("PREPARED", "frames/FilmA.npy") and not outputs.find("PREPARED", "frames/a/b.npy")


def test_tiny_pipeline_writes_only_described_files(tiny_sim, tiny_prepared, tiny_runs, tiny_ridge, tmp_path):
    """simulate, prepare, train (E-D, E), baseline, evaluate, plus saliency, export, predict, decode, regions and
    compare on the session's runs: every file and every table column is in the table of outputs."""
    from cinevox.analysis.saliency import SaliencyConfig, saliency

    ed = tiny_runs["encdec"]
    sal = tmp_path / "saliency"
    saliency(ed, SaliencyConfig(max_clips=12), out=sal)
    sim = tiny_sim / "derivatives" / "simulation"
    film = tiny_sim / "stimuli" / "YouAgain.mp4"
    bolds = sorted(tiny_sim.glob("derivatives/preprocessing/sub-*/ses-*/func/*task-YouAgain*_bold.nii.gz"))
    events = sorted(tiny_sim.glob("sub-*/ses-*/func/*acq-YouAgain_events.tsv"))
    for argv in (["export", str(ed), "--out", str(tmp_path / "model")],
                 ["predict", str(tmp_path / "model"), str(film), "--out", str(tmp_path / "predict")],
                 ["decode", str(ed), str(bolds[0]), "--events", str(events[0]), "--reference-video", str(film), "--out",
                  str(tmp_path / "decode")],
                 ["regions", str(tiny_prepared / "mask.nii.gz"), "--atlas", str(sim / "atlas.nii.gz"),
                  "--atlas-labels", str(sim / "atlas_labels.tsv"), "--saliency", str(sal / "saliency.nii.gz"),
                  "--out", str(tmp_path / "regions")],
                 ["compare", str(ed), str(tiny_runs["encoder"]), str(tiny_ridge), "--out", str(tmp_path / "compare"),
                  "--n-boot", "50", "--n-perm", "50"]):
        assert main([*argv, "-q"]) == 0, argv
    bad = undescribed(tiny_sim, "BIDS_DIR") + undescribed(tiny_prepared, "PREPARED")
    for run in (*tiny_runs.values(), tiny_ridge):
        bad += undescribed(run, "RUN_DIR")
    bad += undescribed(sal, "RUN_DIR/saliency") + undescribed(tmp_path / "model", "MODEL_DIR")
    for step in ("predict", "decode", "regions", "compare"):
        bad += undescribed(tmp_path / step, "OUT", step)
    assert not bad, bad
    # the negative control: a stray file and a stray column are caught
    (tmp_path / "compare" / "extra.npy").write_bytes(b"")
    tab = pd.read_csv(tmp_path / "compare" / "tests.csv").assign(mystery=1)
    tab.to_csv(tmp_path / "compare" / "tests.csv", index=False)
    assert sorted(undescribed(tmp_path / "compare", "OUT", "compare")) == [
        "OUT/extra.npy: not in the table", "OUT/tests.csv: column 'mystery' not described"]
    # every NIfTI has its sidecar (from the table) and its units
    maps = _niftis(tiny_sim, tiny_prepared, *tiny_runs.values(), tiny_ridge, sal, tmp_path / "model",
                   tmp_path / "predict")
    assert len(maps) >= 20
    for p in maps:
        meta = json.loads(p.with_name(p.name[: -len(".nii.gz")] + ".json").read_text())
        assert SIDECAR_KEYS <= set(meta), (p, set(meta))
        assert meta["GeneratedBy"]["Version"] == __version__ and meta["Space"] not in ("", None)
        assert nib.load(p).header.get_xyzt_units() == ("mm", "sec"), p
    pred = json.loads((tmp_path / "predict" / "YouAgain_pred.json").read_text())
    assert pred["Sources"] == [str(tmp_path / "model")] and pred["RepetitionTime"] == pred["tr"]


def test_evaluate_writes_p_q_and_significance_maps(tiny_runs, tiny_prepared):
    """The p and q maps hold voxels.csv's values at each voxel's grid position; the mask is q_circular < 0.05."""
    ev = tiny_runs["encoder"] / "eval"
    vox = pd.read_csv(ev / "voxels.csv")
    ijk = np.load(tiny_prepared / "voxels_ijk.npy")
    space = outputs.space_label(json.loads((tiny_prepared / "manifest.json").read_text()))
    assert space == "MNI"
    for stat, null in (("p", "shuffle"), ("p", "circular"), ("q", "circular"), ("p", "phase"), ("q", "phase")):
        img = nib.load(ev / f"space-MNI_stat-{stat}_desc-{null}_statmap.nii.gz")
        vol = np.asarray(img.dataobj)
        np.testing.assert_allclose(vol[tuple(ijk.T)], vox[f"{stat}_{null}"], rtol=1e-5)  # the CSV keeps 6 digits
        outside = np.ones(vol.shape, bool)
        outside[tuple(ijk.T)] = False
        assert not vol[outside].any()
        assert img.header.get_intent()[0] == "p value"
        meta = json.loads((ev / f"space-MNI_stat-{stat}_desc-{null}_statmap.json").read_text())
        n_perm = json.loads((ev / "manifest.json").read_text())["config"]["n_perm"]  # (another test re-evaluates)
        assert null.split("_")[0] in meta["Null"] and meta["NumberOfPermutations"] == n_perm
        assert ("Benjamini" in meta["Correction"]) == (stat == "q")
        assert meta["Sources"] == [str(tiny_runs["encoder"].resolve())]
    sig = np.asarray(nib.load(ev / "space-MNI_desc-significant_mask.nii.gz").dataobj)
    np.testing.assert_array_equal(sig[tuple(ijk.T)].astype(bool), (vox["q_circular"] < 0.05).to_numpy())
    assert sig.sum() == (vox["q_circular"] < 0.05).sum()
    r = nib.load(ev / "voxel_r.nii.gz")
    assert r.header.get_xyzt_units() == ("mm", "sec") and r.header.get_intent()[0] == "estimate"


def test_significance_mask_follows_its_threshold(tiny_ridge, tiny_prepared, tmp_path):
    """Re-evaluated with the fixture's options (same p and q) and a threshold between the voxels' q values: the
    mask holds exactly the voxels below it, and metrics.json says so."""
    import shutil

    from cinevox.evaluation.evaluate import EvalConfig, evaluate

    q = pd.read_csv(tiny_ridge / "eval" / "voxels.csv")["q_circular"]
    cut = float(np.median(q.unique()))
    run = Path(shutil.copytree(tiny_ridge, tmp_path / "ridge"))
    m = evaluate(run, EvalConfig(n_perm=49, n_perm_frames=5, significance_q=cut))["encoder"]
    vox = pd.read_csv(run / "eval" / "voxels.csv")
    np.testing.assert_allclose(vox["q_circular"], q)
    expected = (vox["q_circular"] < cut).to_numpy()
    assert expected.any() and (~expected).any()
    ijk = np.load(tiny_prepared / "voxels_ijk.npy")
    sig = np.asarray(nib.load(run / "eval" / "space-MNI_desc-significant_mask.nii.gz").dataobj)
    np.testing.assert_array_equal(sig[tuple(ijk.T)].astype(bool), expected)
    assert sig.sum() == expected.sum()
    assert m["significance_mask"] == {"rule": f"q_circular < {cut}", "n_voxels": int(expected.sum())}
    meta = json.loads((run / "eval" / "space-MNI_desc-significant_mask.json").read_text())
    assert meta["Threshold"] == {"q_circular": cut} and meta["NumberOfSignificantVoxels"] == int(expected.sum())


def test_dataset_descriptions(tiny_sim, tiny_prepared, tiny_runs, tiny_ridge):
    """Every prepared folder, run and simulation derivative is a BIDS derivative naming its source (the simulated
    derivatives/preprocessing keeps ds004892's files exactly, which hold no description)."""
    cases = [(tiny_prepared, tiny_sim), (tiny_ridge, tiny_prepared), *[(r, tiny_prepared) for r in tiny_runs.values()]]
    for folder, source in [*cases, (tiny_sim / "derivatives" / "simulation", None)]:
        dd = json.loads((folder / "dataset_description.json").read_text())
        assert {"Name", "BIDSVersion", "DatasetType", "GeneratedBy", "SourceDatasets"} <= set(dd), folder
        assert dd["DatasetType"] == "derivative" and dd["Name"]
        gen = dd["GeneratedBy"][0]
        assert gen["Name"] == "cinevox" and gen["Version"] == __version__ and "Python API" in gen["Description"]
        urls = [s["URL"] for s in dd["SourceDatasets"]]
        assert urls == ([Path(source).resolve().as_uri()] if source else ["../.."]), folder
    # the raw simulated dataset is the simulation's source, named by its own description
    assert json.loads((tiny_sim / "derivatives" / "simulation" / "dataset_description.json").read_text())[
        "SourceDatasets"][0]["Name"] == "cinevox simulated Emo-FilM"


def test_cli_records_the_command(tiny_prepared, tmp_path):
    from helpers import FAST_RIDGE  # noqa: F401  (the fixtures' ridge options)

    argv = ["baseline", str(tiny_prepared), "--out", str(tmp_path / "b"), "--n-iter", "1", "--n-folds", "2", "-q"]
    assert main(argv) == 0
    dd = json.loads((tmp_path / "b" / "dataset_description.json").read_text())
    assert dd["GeneratedBy"][0]["Description"] == "cinevox " + " ".join(argv)
    assert outputs.COMMAND is None  # reset after the command: a later API call is not taken for it


def test_manifests_record_the_values_used(tiny_sim, tiny_prepared):
    m = json.loads((tiny_prepared / "manifest.json").read_text())
    assert m["config"]["heldout_film"] is None and m["layout"] == "emofilm"
    assert m["heldout_film"] == "YouAgain"  # the default of the Emo-FilM layout, recorded as used
    assert m["bold"] == {"derivatives": "derivatives/preprocessing", "space": "MNI", "desc": "ppres", "res": None}
    assert m["versions"]["pytorch_msssim"] == version("pytorch-msssim") != "?"
    assert m["versions"]["himalaya"] == version("himalaya") and m["versions"]["cinevox"] == __version__
    for run in m["inputs"]["runs"]:
        for key in ("bold", "events"):
            rel = Path(run[key]["path"])
            assert not rel.is_absolute() and (tiny_sim / rel).is_file(), rel
        assert not Path(run["sidecar"]).is_absolute()
    assert all(not Path(f["path"]).is_absolute() for f in m["inputs"]["films"].values())
    assert m["inputs"]["mask"]["atlas"]["path"] == "derivatives/simulation/atlas.nii.gz"


@pytest.mark.parametrize("name", ["voxel_r.nii.gz", "space-MNI_stat-p_desc-circular_statmap.nii.gz"])
def test_sidecar_of_an_unknown_map_fails(name):
    assert outputs.sidecar("RUN_DIR/eval", name)["GeneratedBy"]["Step"] == "evaluate"
    with pytest.raises(KeyError, match="not in cinevox.outputs"):
        outputs.sidecar("RUN_DIR/eval", "mystery.nii.gz")
