"""The ``cinevox`` command line. Thin: each subcommand parses its options and calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cinevox import __version__
from cinevox.utils.log import setup_logging

logger = logging.getLogger("cinevox.cli")


def _csv_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


# ---------------------------------------------------------------- simulate
def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="write a synthetic Emo-FilM (BIDS, ds004892 layout) with known truth")
    p.add_argument("out", type=Path, help="output BIDS folder")
    p.add_argument("--preset", default="tiny", choices=["tiny", "demo", "emofilm"])
    p.add_argument("--seed", type=int)
    p.add_argument("--n-subjects", type=int)
    p.add_argument("--subjects", help="comma-separated subset to write, e.g. S01,S02")
    p.add_argument("--films", help="a folder of real videos to use, or a comma-separated subset of the preset's films")
    p.add_argument("--max-trs", type=int, help="cap every film at this many TRs")
    p.add_argument("--tr", type=float)
    p.add_argument("--voxel-size", type=float, help="synthetic grid spacing in mm")
    p.add_argument("--atlas", help="Schaefer-1000 NIfTI (visual mask by parcel name)")
    p.add_argument("--atlas-labels", help="its label table (TSV with index and name)")
    p.add_argument("--regions-atlas", help="AAL3 NIfTI (regions)")
    p.add_argument("--regions-labels", help="AAL3 label table")
    p.add_argument("--p-missing", type=float, help="probability that a subject misses a film")
    p.set_defaults(func=_run_simulate)


def _run_simulate(a) -> int:
    from cinevox.simulate.config import preset
    from cinevox.simulate.run import simulate

    films_dir, film_subset = None, None
    if a.films:
        if Path(a.films).is_dir():
            films_dir = str(a.films)
        else:
            film_subset = _csv_list(a.films)
    cfg = preset(a.preset, seed=a.seed, n_subjects=a.n_subjects, subjects=_csv_list(a.subjects), max_trs=a.max_trs,
                 tr=a.tr, voxel_size=a.voxel_size, atlas=a.atlas, atlas_labels=a.atlas_labels,
                 regions_atlas=a.regions_atlas, regions_labels=a.regions_labels, p_missing=a.p_missing,
                 films_dir=films_dir)
    if film_subset:
        unknown = sorted(set(film_subset) - set(cfg.films))
        if unknown:
            raise ValueError(f"--films {unknown}: not films of preset {a.preset!r} ({sorted(cfg.films)}) "
                             "and not a folder")
        cfg.films = {k: v for k, v in cfg.films.items() if k in film_subset}
    simulate(a.out, cfg)
    print(f"simulated dataset: {a.out}")
    return 0


# ---------------------------------------------------------------- prepare
def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="BIDS dataset + films -> training-ready dataset (paper II-A)")
    p.add_argument("bids_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--films", dest="films_dir", help="folder of the film videos (<Film>.mp4 ...)")
    p.add_argument("--config", type=Path, help="JSON or TOML file with any of the options below")
    p.add_argument("--mask", help="ready mask: NIfTI on the BOLD grid, or the authors' .npy (FSL 2 mm grid)")
    p.add_argument("--atlas", help="Schaefer-style atlas NIfTI (visual parcels picked by name)")
    p.add_argument("--atlas-labels", help="its label table")
    p.add_argument("--bold-pattern", help="glob of the preprocessed BOLD files, relative to BIDS_DIR")
    p.add_argument("--subjects", help="comma-separated subset (S01,S02)")
    p.add_argument("--only-films", dest="film_subset", help="comma-separated subset of films")
    p.add_argument("--delay-trs", type=int, help="hemodynamic shift in TRs (default 4)")
    p.add_argument("--detrend", choices=["mean", "linear"])
    p.add_argument("--snr", choices=["paper", "ceiling"], help="SNR definition for voxel selection")
    p.add_argument("--snr-top", type=float, help="fraction of visual voxels kept (default 0.3)")
    p.add_argument("--frame-size", type=int, help="frame side in pixels (default 112)")
    p.add_argument("--frames-per-tr", type=int, help="frames per TR (default 32)")
    p.add_argument("--heldout-film", help="film kept entirely for test (default YouAgain)")
    p.add_argument("--val-mode", choices=["blocked", "interleaved"])
    p.add_argument("--gap-trs", type=int, help="TRs left out around validation blocks (blocked mode)")
    p.add_argument("--val-blocks", type=int)
    p.add_argument("--hash", dest="hash_inputs", action="store_true", default=None, help="sha256 every input")
    p.add_argument("--jobs", type=int, help="worker processes for the runs")
    p.set_defaults(func=_run_prepare)


def _run_prepare(a) -> int:
    from cinevox.data.prepare import PrepareConfig, load_config_file, prepare

    opts = load_config_file(a.config) if a.config else {}
    for name in ("films_dir", "mask", "atlas", "atlas_labels", "bold_pattern", "delay_trs", "detrend", "snr",
                 "snr_top", "frame_size", "frames_per_tr", "heldout_film", "val_mode", "gap_trs", "val_blocks",
                 "hash_inputs", "jobs"):
        if getattr(a, name) is not None:
            opts[name] = getattr(a, name)
    if a.subjects:
        opts["subjects"] = _csv_list(a.subjects)
    if a.film_subset:
        opts["films"] = _csv_list(a.film_subset)
    prepare(a.bids_dir, a.out_dir, PrepareConfig(**opts))
    print(f"prepared dataset: {a.out_dir}")
    return 0


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cinevox",
        description="Relate fMRI brain activity to naturalistic movies: simulate -> prepare -> train -> "
        "evaluate / saliency / lesion -> compare / report (or `cinevox demo` for all of it).",
    )
    parser.add_argument("--version", action="version", version=f"cinevox {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


_COMMANDS = [_add_simulate, _add_prepare]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    setup_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        logger.debug("details", exc_info=True)
        print(f"cinevox {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
