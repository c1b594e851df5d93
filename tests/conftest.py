"""Shared fixtures. ``../shared/data`` holds real atlases and videos; tests using it skip without it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    logging.getLogger("cinevox").setLevel(logging.INFO)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real reference data not found at {SHARED}")
    return SHARED


# ------------------------------------------------------------------ shared tiny pipeline (session scoped)
@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory) -> Path:
    """A VGG16 state dict in torchvision's key layout (random weights: no download in tests)."""
    from cinevox.models import VGG16Features

    path = tmp_path_factory.mktemp("vgg") / "vgg16-test.pth"
    torch.manual_seed(123)
    torch.save(VGG16Features().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory) -> Path:
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate

    return simulate(tmp_path_factory.mktemp("tiny") / "bids",
                    preset("tiny", films={"FilmA": 90.0, "FilmB": 90.0, "YouAgain": 40.0}), progress=False)


@pytest.fixture(scope="session")
def tiny_prepared(tiny_sim, tmp_path_factory) -> Path:
    from helpers import sim_config

    from cinevox.data.prepare import prepare

    return prepare(tiny_sim, tmp_path_factory.mktemp("tiny") / "prepared", sim_config(tiny_sim), progress=False)


def tiny_train_config(vgg_file, **kw):
    from cinevox.losses import LossConfig
    from cinevox.training import TrainConfig

    base = dict(model="encdec", epochs=2, batch_size=8, tensorboard=False, loss=LossConfig(vgg_weights=str(vgg_file)))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def tiny_runs(tiny_prepared, vgg_file, tmp_path_factory) -> dict[str, Path]:
    """An evaluated E-D run and an evaluated E run on the tiny dataset."""
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.training import train

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for kind in ("encdec", "encoder"):
        run = train(tiny_prepared, root / kind, tiny_train_config(vgg_file, model=kind, epochs=3, lr=1e-3),
                    progress=False)
        evaluate(run, EvalConfig(n_perm=99, n_perm_frames=19))
        runs[kind] = run
    return runs


@pytest.fixture(scope="session")
def tiny_ridge(tiny_prepared, tmp_path_factory) -> Path:
    """An evaluated ridge baseline run on the tiny dataset."""
    from helpers import FAST_RIDGE

    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.training.ridge import RidgeConfig, baseline

    run = baseline(tiny_prepared, tmp_path_factory.mktemp("ridge") / "ridge", RidgeConfig(**FAST_RIDGE), progress=False)
    evaluate(run, EvalConfig(n_perm=49, n_perm_frames=5))
    return run


@pytest.fixture(scope="session")
def tiny_sim_subjects(tmp_path_factory) -> Path:
    """A tiny simulation whose viewers have their own tuning (``subject_variability`` 1.0, 4 viewers; issue 26)."""
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate

    return simulate(tmp_path_factory.mktemp("tinysub") / "bids",
                    preset("tiny", n_subjects=4, subject_variability=1.0,
                           films={"FilmA": 60.0, "FilmB": 60.0, "YouAgain": 26.0}), progress=False)


@pytest.fixture(scope="session")
def tiny_prepared_subjects(tiny_sim_subjects, tmp_path_factory) -> Path:
    from helpers import sim_config

    from cinevox.data.prepare import prepare

    return prepare(tiny_sim_subjects, tmp_path_factory.mktemp("tinysub") / "prepared", sim_config(tiny_sim_subjects),
                   progress=False)


@pytest.fixture(scope="session")
def tiny_subject_run(tiny_prepared_subjects, tmp_path_factory) -> Path:
    """An evaluated ``--target subjects`` encoder on the 4-viewer simulation, viewer S04 held out (issue 26)."""
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.training import TrainConfig, train

    run = train(tiny_prepared_subjects, tmp_path_factory.mktemp("subjrun") / "run",
                TrainConfig(model="encoder", epochs=2, batch_size=8, lr=1e-3, tensorboard=False, target="subjects",
                            holdout_subjects=["S04"]), progress=False)
    evaluate(run, EvalConfig(n_perm=19, n_perm_frames=5))
    return run


@pytest.fixture(scope="session")
def tiny_subject_decoders(tiny_prepared_subjects, vgg_file, tmp_path_factory) -> dict[str, Path]:
    """Evaluated ``--target subjects`` decoder and encoder-decoder on the 4-viewer simulation, S04 held out."""
    from cinevox.evaluation.evaluate import EvalConfig, evaluate
    from cinevox.training import train

    root = tmp_path_factory.mktemp("subjdec")
    runs = {}
    for kind in ("decoder", "encdec"):
        runs[kind] = train(tiny_prepared_subjects, root / kind,
                           tiny_train_config(vgg_file, model=kind, epochs=1, lr=1e-3, target="subjects",
                                             holdout_subjects=["S04"]), progress=False)
        evaluate(runs[kind], EvalConfig(n_perm=9, n_perm_frames=5))
    return runs
