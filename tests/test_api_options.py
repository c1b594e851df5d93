"""The Python API takes exactly the command line's option names (issue 27), checked from the parser itself: for
every option of every command, ``cinevox.resolve(command, **{dest: value})`` accepts the option and hands the step
something different from the defaults (an option the API dropped or renamed would fail here)."""

import argparse
import warnings
from pathlib import Path

import pytest

from cinevox import api as cinevox  # (cinevox.report, .demo, .simulate are also subpackages)
from cinevox.cli import build_parser

GLOBAL = {"help", "verbose", "quiet", "debug"}
# a valid value, other than the default, for options whose type alone does not give one
SAMPLES = {
    "preset": "demo", "subjects": "S01,S02", "films": "YouAgain", "only_films": "YouAgain", "films_dir": ".",
    "profile": "authors",
    "features": "motion", "delays": "0,1", "eps_grid": "0,0.5", "epoch_grid": "5-6", "devices": "cpu,cpu",
    "concepts": "motion", "layers": "conv4", "concept_dir": ["cats=/data/cats"], "filters": ["acq=dico"],
    "tasks": "movie", "lead_in": "overlap", "regions": "Occipital", "visual_parcels": "kong2022",
    "confounds": "motion", "segments": "none", "title": "my report", "model": "decoder", "n_subjects": 4,
    "p_missing": 0.5, "null_fraction": 0.5, "snr_top": 0.5, "top": 0.5, "scale": 0.5, "frame_size": 48,
    "frames_per_tr": 4, "perceptual_resize": 64, "motion_size": 16, "n_folds": 3, "n_examples": 7, "n_random": 7,
    "min_examples": 3, "layout": "bids", "split": "stimuli", "detrend": "linear", "snr": "ceiling", "dropout": 0.3,
    "eps": 0.25, "max_trs": 20, "stage": True, "events": "events.tsv",
}


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for act in p._actions:
            # required options (--out of train ...) and demo/compare/report's --out are the functions' positionals
            if act.option_strings and act.dest not in GLOBAL and not act.required and \
                    not (act.dest == "out" and name in ("demo", "compare", "report")):
                yield name, act


def _value(act, tmp_path):
    if act.dest == "config":
        path = tmp_path / "prepare.toml"
        path.write_text("snr_top = 0.4\n")
        return str(path)
    if act.dest in SAMPLES:
        return SAMPLES[act.dest]
    if isinstance(act, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        return True
    if act.choices:
        return next(c for c in act.choices if c != act.default)
    if isinstance(act.default, bool):
        return not act.default
    if isinstance(act.default, int):
        return act.default + 1
    if isinstance(act.default, float):
        return act.default / 2 if act.default else 0.5
    return "x" if act.type is None or act.type is str else 3


# options whose only valid value is the default: concepts feeds the decoder its encoder's predictions, so --inputs
# takes only "model" (and refuses "measured", test_concepts_refuses_measured_inputs)
ONLY_DEFAULT = {("concepts", "inputs"): "model"}

CASES = sorted({(name, act.option_strings[-1]) for name, act in _commands()})


def test_every_command_has_an_api_function():
    names = {name for name, _ in CASES}
    assert not [n for n in names if not callable(getattr(cinevox, n, None))]


@pytest.mark.parametrize("command", sorted({c for c, _ in CASES}))
def test_api_accepts_every_cli_option(command, tmp_path):
    acts = [act for name, act in _commands() if name == command]
    base = cinevox.resolve(command)
    bad = []
    for act in acts:
        value = ONLY_DEFAULT.get((command, act.dest)) or _value(act, tmp_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                got = cinevox.resolve(command, **{act.dest: value})
            except TypeError as err:
                bad.append(f"{command} {act.option_strings[0]} ({act.dest}={value!r}): {err}")
                continue
        if got == base and (command, act.dest) not in ONLY_DEFAULT:
            bad.append(f"{command} {act.option_strings[0]} ({act.dest}={value!r}): ignored")
        if getattr(act, "new", None) and act.dest != act.option_strings[0].lstrip("-").replace("-", "_"):
            # an old spelling (cli._Deprecated): the API takes it under its old name too, with a warning
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                old = cinevox.resolve(command, **{act.option_strings[0].lstrip("-").replace("-", "_"): value})
            if old != got or not any(issubclass(w.category, DeprecationWarning) for w in caught):
                bad.append(f"{command} {act.option_strings[0]}: the old name does not reach {act.new} with a warning")
    assert not bad, "\n".join(bad)


def test_deprecated_spellings_reach_the_new_option():
    with pytest.warns(DeprecationWarning, match="regions_atlas"):
        old = cinevox.resolve("saliency", atlas="aal.nii.gz")
    assert old == cinevox.resolve("saliency", regions_atlas="aal.nii.gz")
    assert old["config"].atlas == "aal.nii.gz"
    with pytest.warns(DeprecationWarning):
        assert cinevox.resolve("prepare", films=["A", "B"])["config"].films == ["A", "B"]  # the old API's subset
    assert cinevox.resolve("prepare", only_films="A,B")["config"].films == ["A", "B"]
    with pytest.warns(DeprecationWarning, match="encdec"):
        assert cinevox.resolve("train", model="E-D")["config"].model == "encdec"
    with pytest.warns(DeprecationWarning, match="reference_video"):
        old = cinevox.resolve("decode", video="film.mp4")
    assert old == cinevox.resolve("decode", reference_video="film.mp4") and old["kwargs"]["video"] == "film.mp4"
    with pytest.raises(TypeError, match="unknown option 'epochz'"):
        cinevox.resolve("train", epochz=3)


def test_old_films_option_one_rule_for_prepare_and_simulate(tmp_path):
    """The old ``films=``: an existing folder is films_dir, anything else only_films, in prepare and simulate alike
    (prepare used to take any string for a folder)."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for value in (str(folder), folder):
        with pytest.warns(DeprecationWarning, match="films_dir"):
            p = cinevox.resolve("prepare", films=value)["config"]
        assert Path(p.films_dir) == folder and p.films is None
        with pytest.warns(DeprecationWarning, match="films_dir"):
            assert Path(cinevox.resolve("simulate", films=value)["config"].films_dir) == folder
    for value in ("Harbour,Orbit", ["Harbour", "Orbit"]):
        with pytest.warns(DeprecationWarning, match="only_films"):
            p = cinevox.resolve("prepare", films=value)["config"]
        assert p.films == ["Harbour", "Orbit"] and p.films_dir == cinevox.resolve("prepare")["config"].films_dir
        with pytest.warns(DeprecationWarning, match="only_films"):
            s = cinevox.resolve("simulate", preset="demo", films=value)["config"]
        assert sorted(s.films) == ["Harbour", "Orbit"]


def test_cli_deprecated_spellings(capsys):
    """Old spellings on the command line: the same namespace as the new ones, and one warning line."""
    parser = build_parser()
    for old, new in ((["saliency", "R", "--atlas", "a.nii", "--atlas-labels", "a.tsv"],
                      ["saliency", "R", "--regions-atlas", "a.nii", "--regions-labels", "a.tsv"]),
                     (["prepare", "B", "O", "--films", "F"], ["prepare", "B", "O", "--films-dir", "F"]),
                     (["predict", "M", "v.mp4", "--out", "o", "--atlas", "a.nii"],
                      ["predict", "M", "v.mp4", "--out", "o", "--regions-atlas", "a.nii"]),
                     (["train", "P", "--out", "r", "--model", "ED"],
                      ["train", "P", "--out", "r", "--model", "encdec"]),
                     (["decode", "M", "b.nii", "--out", "o", "--video", "f.mp4"],
                      ["decode", "M", "b.nii", "--out", "o", "--reference-video", "f.mp4"])):
        a, b = vars(parser.parse_args(old)), vars(parser.parse_args(new))
        assert a == b, (old, a, b)
        err = capsys.readouterr().err
        assert "deprecated, use" in err and len(err.strip().splitlines()) == len([x for x in old if x in (
            "--atlas", "--atlas-labels", "--films", "ED", "--video")]), err
    # decode's film to compare against is --reference-video; saliency/concepts' --video (films to analyse) stays
    assert vars(parser.parse_args(["decode", "M", "b.nii", "--out", "o", "--reference-video", "f.mp4"]))[
        "reference_video"] == Path("f.mp4")
    assert vars(parser.parse_args(["saliency", "R", "--video", "f.mp4"]))["videos"] == [Path("f.mp4")]
    assert not capsys.readouterr().err


def test_concepts_refuses_measured_inputs():
    """`concepts --inputs measured` used to be accepted and silently ignored."""
    from cinevox.cli import main

    with pytest.raises(ValueError, match="inputs"):
        cinevox.resolve("concepts", inputs="measured")
    assert main(["concepts", "RUN", "--inputs", "measured", "-q"]) == 2
