"""``cinevox features``: a frozen network's activations for every film of a prepared dataset, cached.

Sampling. Samples are taken at ``rate`` per second of film, sample ``j`` at ``t_j = (j + 0.5) / rate`` (or one
per TR at its centre, ``rate=None``); an image model sees the frame showing ``t_j``, a video model a clip of its
``n_frames`` frames spread evenly over ``clip_seconds`` (default one TR) centred on ``t_j`` (clamped to the film).
With ``source="video"`` (the default) the frames are decoded from the films' videos at those times, with
``prepare``'s rule (the frame shown at a time, the film's segments placed as prepared) and its resize method, at
the model's input size: one pass over each video, memory bounded by a batch (and, for clips, one clip span).
With ``source="frames"`` they are the prepared frames (frame ``i`` shows film time ``(i + 0.5) TR / T`` for ``T``
frames per TR, at the prepared size, upsampled to the model's input).

Cache. ``FEATURES_DIR/cache/<key>/<film>/<layer>.npy`` float32 ``(n_samples, D)``, written through memory maps
batch by batch (memory holds one batch of frames and its activations, never a film), ``<key>`` the hash of every
setting that changes a value (model id and weights sha256, layers, rate, pooling, clip span, frame size and rate,
cinevox version). ``cache.json`` records each finished film (its frames' sha256 and every file's size, shape and
hash): a second call with the same settings reads the cache, a killed call resumes at the first unfinished film,
a changed setting writes a new ``<key>``, and a cache file that differs from its record is refused.
``FEATURES_DIR/manifest.json`` names the current key and its settings (what ``cinevox baseline --features`` and
``predict`` read).

To TRs. :func:`tr_features` averages the samples inside each TR ``[k TR, (k + 1) TR)`` (a TR with none takes the
nearest sample) and applies the PCA (``--pca N``, fitted on the TR features of the training split only, stored as
``pca_<layer>.npz``).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from cinevox.configs import PretrainedConfig, band_name
from cinevox.utils.folders import IntegrityError, clean_stale_temps, exclusive_folder, file_record
from cinevox.utils.io import atomic_path, config_hash, read_json, write_json, write_manifest

logger = logging.getLogger(__name__)

CACHE_RECORD = "cache.json"


# ---------------------------------------------------------------- sampling
def sample_times(n_trs: int, tr: float, rate: float | None) -> np.ndarray:
    """Film times (s) of the samples of a film of ``n_trs`` TRs. -> (n,)"""
    if rate is None:
        return (np.arange(n_trs) + 0.5) * tr
    return (np.arange(max(1, int(np.floor(n_trs * tr * rate)))) + 0.5) / rate


def frame_indices(times: np.ndarray, n_frames: int, fpt: int, tr: float, clip_frames: int = 1,
                  span: float | None = None) -> np.ndarray:
    """Prepared-frame index of each sample: (n,) for images, (n, clip_frames) for clips spread over ``span``
    seconds centred on each time."""
    if clip_frames == 1:
        t = times
    else:
        span = tr if span is None else span
        t = times[:, None] + ((np.arange(clip_frames) + 0.5) / clip_frames - 0.5) * span
    return np.clip(np.floor(t * fpt / tr + 1e-9), 0, n_frames - 1).astype(np.int64)  # 1e-9: times on a boundary


def tr_aggregate(x: np.ndarray, times: np.ndarray, n_trs: int, tr: float) -> np.ndarray:
    """Samples (n, D) at ``times`` -> (n_trs, D): the mean of the samples inside each TR, else the nearest."""
    k = np.floor(times / tr).astype(np.int64)
    inside = (k >= 0) & (k < n_trs)
    out = np.zeros((n_trs, x.shape[1]), np.float64)
    np.add.at(out, k[inside], np.asarray(x[inside], np.float64))
    count = np.bincount(k[inside], minlength=n_trs)
    empty = np.flatnonzero(count == 0)
    if len(empty):
        centre = (empty + 0.5) * tr
        near = np.abs(times[None, :] - centre[:, None]).argmin(1)
        out[empty] = x[near]
        count[empty] = 1
    return (out / count[:, None]).astype(np.float32)


def film_end(data, film: str) -> float:
    return int(data.manifest["films"][film]["n_trs"]) * float(data.manifest["tr"])


def sample_frame_times(backbone, times: np.ndarray, tr: float, end: float, clip_seconds: float | None) -> np.ndarray:
    """Film times of the frames each sample needs: (n,) for images, (n, n_frames) for clips; within [0, end)."""
    if backbone.kind != "video":
        return np.clip(times, 0.0, np.nextafter(end, 0))
    span = tr if clip_seconds is None else clip_seconds
    k = backbone.n_frames
    t = times[:, None] + ((np.arange(k) + 0.5) / k - 0.5) * span
    return np.clip(t, 0.0, np.nextafter(end, 0))


def _segment_streams(segments: list[dict], ft: np.ndarray, tr: float, side: int, resize: str, block: int):
    """uint8 frames at the sorted film times ``ft``, in order, from the films' segments (video, start_s, film_tr,
    n_trs): one decoding pass per segment."""
    from cinevox.data.video import stream_frames

    starts = np.array([s["film_tr"] * tr for s in segments])
    which = np.clip(np.searchsorted(starts, ft, side="right") - 1, 0, len(segments) - 1)
    for k, seg in enumerate(segments):
        sel = ft[which == k]
        if len(sel):
            vt = np.maximum(seg["start_s"] + sel - seg["film_tr"] * tr, 0.0)
            yield from stream_frames(seg["video"], vt, side, resize=resize, block=block)


def iter_video_batches(backbone, segments: list[dict], times: np.ndarray, tr: float, end: float, layers, pool,
                       batch_size: int, clip_seconds: float | None, resize: str = "area"):
    """:func:`iter_batches` from the videos: ``(start, {layer: (b, D)})``, decoding each segment once at the
    model's input side. Clips share frames: the sorted unique frame times are decoded in order and each frame is
    kept until the last clip that needs it is complete."""
    need = sample_frame_times(backbone, times, tr, end, clip_seconds)
    flat = need.reshape(len(times), -1)
    uniq, inv = np.unique(flat, return_inverse=True)
    inv = inv.reshape(flat.shape)
    last = inv.max(1)  # the last unique frame each sample needs (non-decreasing in j)
    buf, lo, done = None, 0, 0  # buf holds unique frames [lo, lo + len(buf))
    j = 0
    for block in _segment_streams(segments, uniq, tr, backbone.input_side, resize, max(64, batch_size)):
        buf = block if buf is None else np.concatenate([buf, block])
        done += len(block)
        while j < len(times) and (last[min(j + batch_size, len(times)) - 1] < done or done == len(uniq)):
            b = slice(j, min(j + batch_size, len(times)))
            u8 = buf[(inv[b] - lo).reshape(-1)].reshape(*inv[b].shape, *buf.shape[1:])
            if backbone.kind != "video":
                u8 = u8[:, 0]
            yield j, backbone(u8, layers, pool)
            j = b.stop
            if j < len(times):
                keep = int(inv[j:].min())
                buf, lo = buf[keep - lo :], keep
    if j < len(times):
        raise ValueError("the videos gave fewer frames than the samples need")


def iter_batches(backbone, frames: np.ndarray, times: np.ndarray, fpt: int, tr: float, layers, pool,
                 batch_size: int, clip_seconds: float | None):
    """``(start, {layer: (b, D)})`` for consecutive batches of samples of one film (frames memory-mapped)."""
    idx = frame_indices(times, len(frames), fpt, tr, backbone.n_frames if backbone.kind == "video" else 1,
                        clip_seconds)
    for a in range(0, len(times), batch_size):
        sel = idx[a : a + batch_size]
        u8 = np.asarray(frames[sel.reshape(-1)]).reshape(*sel.shape, *frames.shape[1:])
        yield a, backbone(u8, layers, pool)


# ---------------------------------------------------------------- identities
def film_identity(data, film: str, source: str = "frames", _memo: dict | None = None) -> str:
    """``source="video"``: one sha256 over the film's segments (each video's sha256, start and TRs). ``"frames"``:
    the prepared frames' sha256 (from the dataset's integrity record), else their frames key."""
    if source == "video":
        import hashlib

        from cinevox.utils.io import sha256_file

        memo = {} if _memo is None else _memo
        h = hashlib.sha256()
        for seg in film_segments(data, film):
            if seg["video"] not in memo:
                memo[seg["video"]] = sha256_file(seg["video"])
            h.update(f"{memo[seg['video']]}:{seg['start_s']}:{seg['film_tr']}:{seg['n_trs']};".encode())
        return h.hexdigest()
    rec = data.manifest.get("integrity", {}).get(f"frames/{film}.npy", {})
    if "sha256" in rec:
        return rec["sha256"]
    return "frames_key:" + str(data.manifest["films"][film].get("frames_key", "?"))


def film_segments(data, film: str) -> list[dict]:
    """The videos a prepared film was sampled from: ``[{video, start_s, film_tr, n_trs}]``; one line naming the
    missing video (and ``--source frames``) when one is gone."""
    meta = data.manifest["films"][film]
    segs = meta.get("segments") or [{"video": meta.get("video"), "start_s": 0.0, "film_tr": 0,
                                      "n_trs": int(meta["n_trs"])}]
    for s in segs:
        if not s.get("video") or not Path(s["video"]).is_file():
            raise FileNotFoundError(f"film {film}: its video {s.get('video')} (recorded by prepare) is not there; "
                                    "put it back, or use --source frames (the prepared frames)")
    return sorted(segs, key=lambda s: s["film_tr"])


# ---------------------------------------------------------------- the command
def extract_features(prepared_dir: str | Path, out: str | Path, cfg: PretrainedConfig,
                     progress: bool = True) -> dict:
    """Extract (or read from the cache) ``cfg.model``'s features for every film of ``prepared_dir`` into
    ``out``. Returns the manifest's summary."""
    from cinevox.data.dataset import PreparedData
    from cinevox.utils.folders import check_output_folder

    cfg.validate()
    data = PreparedData(prepared_dir)
    out = Path(out)
    check_output_folder(out, ("manifest.json", "cache"), "features folder")
    with exclusive_folder(out, "features"):
        clean_stale_temps(out)
        if cfg.model == "simulator":
            from cinevox.pretrained.oracle import simulator_films

            settings, films_iter = simulator_films(data, cfg)
            layers = settings["layers"]
        else:
            from cinevox.pretrained.backbones import load_backbone, parse_pool

            bb = load_backbone(cfg.model, cfg.device, cfg.dtype, cfg.vgg_weights, cfg.image_size)
            layers = bb.check_layers(cfg.layers)
            settings = network_settings(bb, layers, cfg, data)
            films_iter = _network_films(data, cfg, bb, layers, parse_pool(cfg.pool))
        key = config_hash(settings)
        cache = out / "cache" / key
        record = read_json(cache / CACHE_RECORD) if (cache / CACHE_RECORD).is_file() else {"films": {}}
        n_cached, memo = 0, {}
        source = settings.get("source", "frames")
        for film, compute in films_iter:
            ident = film_identity(data, film, source, memo)
            rec = record["films"].get(film)
            if rec is not None and rec["film_sha256"] == ident:
                check_cache_files(cache, film, rec)
                n_cached += 1
                continue
            record["films"][film] = _write_film(cache, film, compute, layers, ident)
            write_json(cache / CACHE_RECORD, {"settings": settings, **record})
        if n_cached:
            logger.info("features: %d of %d films read from the cache %s", n_cached, len(record["films"]), cache)
        write_json(cache / CACHE_RECORD, {"settings": settings, **record})
        pca = fit_pca(data, cache, record, settings, cfg.pca) if cfg.pca else {}
        dims = {la: int(record["films"][next(iter(record["films"]))]["files"][la]["shape"][1]) for la in layers}
        summary = {"current": key, "layers": list(layers), "dims": dims, "n_films": len(record["films"]),
                   "n_cached": n_cached, "pca": {la: int(v) for la, v in pca.items()}}
        write_manifest(out, "features", cfg, inputs={"prepared": str(Path(prepared_dir).resolve())},
                       settings=settings, **summary)
        return summary


def network_settings(bb, layers, cfg: PretrainedConfig, data) -> dict:
    """What keys a network's cache: the model's identity, the resolved dtype (after ``auto``) and the sampling."""
    return {"identity": bb.identity, "layers": list(layers), "rate": cfg.rate, "pool": cfg.pool,
            "clip_seconds": cfg.clip_seconds if bb.kind == "video" else None, "source": cfg.source,
            "frame_size": bb.input_side if cfg.source == "video" else data.frame_size,
            "frame_resize": data.manifest["config"].get("frame_resize") or "area",
            "frames_per_tr": data.frames_per_tr,
            "tr": float(data.manifest["tr"]), "frame_intensity": data.frame_intensity,
            "dtype": str(bb.dtype).replace("torch.", ""), "version": _version()}


def _version() -> str:
    from cinevox import __version__

    return __version__


def _network_films(data, cfg: PretrainedConfig, bb, layers, pool):
    """``(film, compute)`` for every film; ``compute()`` yields ``(start, {layer: (b, D)}, n_samples)``."""
    fpt, tr = data.frames_per_tr, float(data.manifest["tr"])
    resize = data.manifest["config"].get("frame_resize") or "area"
    for film in sorted(data.manifest["films"]):
        def compute(film=film):
            n_trs = int(data.manifest["films"][film]["n_trs"])
            times = sample_times(n_trs, tr, cfg.rate)
            if cfg.source == "video":
                it = iter_video_batches(bb, film_segments(data, film), times, tr, film_end(data, film), layers,
                                        pool, cfg.batch_size, cfg.clip_seconds, resize)
            else:
                it = iter_batches(bb, data.frames(film)[: n_trs * fpt], times, fpt, tr, layers, pool,
                                  cfg.batch_size, cfg.clip_seconds)
            for a, feats in it:
                yield a, feats, len(times)
        yield film, compute


def _write_film(cache: Path, film: str, compute, layers, ident: str) -> dict:
    """Stream one film's batches into memory-mapped ``.npy`` files (atomic: a killed film leaves no file)."""
    folder = cache / film
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        maps: dict = {}
        for a, feats, n in compute():
            if not maps:
                for la in layers:
                    tmp = stack.enter_context(atomic_path(folder / f"{la}.npy"))
                    maps[la] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                         shape=(n, feats[la].shape[1]))
            for la in layers:
                maps[la][a : a + len(feats[la])] = feats[la]
        for m in maps.values():
            m.flush()
        maps.clear()
    logger.info("features: %s done", film)
    return {"film_sha256": ident, "files": {la: file_record(folder / f"{la}.npy") for la in layers}}


def check_cache_files(cache: Path, film: str, rec: dict) -> None:
    """Refuse a cached film whose files differ from their record."""
    for la, r in rec["files"].items():
        p = cache / film / f"{la}.npy"
        now = file_record(p) if p.is_file() else None
        if now is None or any(now.get(k) != v for k, v in r.items()):
            raise IntegrityError(f"{p}: the cached features differ from their record in {cache / CACHE_RECORD} "
                                 f"(a corrupted or edited file); delete {cache / film} to recompute that film")


# ---------------------------------------------------------------- reading, to TRs
def read_manifest(features_dir: str | Path) -> dict:
    path = Path(features_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{features_dir}: not a features folder (no manifest.json); run `cinevox features`")
    man = read_json(path)
    if man.get("step") != "features":
        raise ValueError(f"{path}: not written by `cinevox features`")
    return man


def film_samples(features_dir: str | Path, layer: str, film: str) -> tuple[np.ndarray, np.ndarray]:
    """``(samples (n, D) memory-mapped, times (n,))`` of one film and layer."""
    man = read_manifest(features_dir)
    cache = Path(features_dir) / "cache" / man["current"]
    rec = read_json(cache / CACHE_RECORD)["films"].get(film)
    if rec is None:
        raise ValueError(f"{features_dir}: no features for film {film!r}; run `cinevox features` on this dataset")
    check_cache_files(cache, film, {"files": {layer: rec["files"][layer]}})
    x = np.load(cache / film / f"{layer}.npy", mmap_mode="r")
    s = man["settings"]
    n = np.arange(len(x)) + 0.5
    return x, (n / s["rate"] if s["rate"] else n * s["tr"])


def tr_features(features_dir: str | Path, layer: str, data) -> dict[str, np.ndarray]:
    """``{film: (n_trs, D')}`` for every film of the prepared dataset ``data``: samples averaged per TR, then the
    folder's PCA when it has one. Refuses a folder extracted from other frames or another TR."""
    man = read_manifest(features_dir)
    if layer not in man["layers"]:
        raise ValueError(f"{features_dir}: no layer {layer!r} (layers: {', '.join(man['layers'])})")
    s = man["settings"]
    if abs(float(s["tr"]) - float(data.manifest["tr"])) > 1e-6:
        raise ValueError(f"{features_dir}: extracted at TR {s['tr']} s, {data.root} has TR {data.manifest['tr']} s")
    cache = Path(features_dir) / "cache" / man["current"]
    films = read_json(cache / CACHE_RECORD)["films"]
    out = {}
    memo: dict = {}
    for film, meta in data.manifest["films"].items():
        rec = films.get(film)
        if rec is None or rec["film_sha256"] != film_identity(data, film, s.get("source", "frames"), memo):
            raise ValueError(f"{features_dir}: {'no features for' if rec is None else 'extracted from other frames of'}"
                             f" film {film!r} of {data.root}; run `cinevox features {data.root} --out "
                             f"{features_dir}` again")
        x, times = film_samples(features_dir, layer, film)
        out[film] = tr_aggregate(x, times, int(meta["n_trs"]), float(s["tr"]))
    if man.get("pca") and layer in man["pca"]:
        path = cache / f"pca_{layer}.npz"
        with np.load(path) as z:
            fitted_on = str(z["train_rows"]) if "train_rows" in z.files else None
        if fitted_on != training_rows_hash(data.samples):  # a fold view: fit on its own training rows, in memory
            mean, comp, _ = _pca(_training_rows(data.samples, out), int(man["pca"][layer]))
            logger.info("features: PCA of %s refitted on the %d training TRs of %s's view (not those of %s)", layer,
                        int((data.samples["split"] == "train").sum()), data.root, path)
            return {f: ((x - mean) @ comp.T).astype(np.float32) for f, x in out.items()}
    return apply_pca(features_dir, layer, out)


def features_pin(features_dir: str | Path) -> dict:
    """What a ridge fitted on a features folder depends on: its current cache key and its PCA files' sha256."""
    from cinevox.utils.io import sha256_file

    man = read_manifest(features_dir)
    cache = Path(features_dir) / "cache" / man["current"]
    return {"key": man["current"], "pca": {la: sha256_file(cache / f"pca_{la}.npz") for la in (man.get("pca") or {})}}


def check_features_pin(features_dir: str | Path, pin: dict | None, source: str | Path) -> None:
    """Refuse a features folder that now holds other settings than when ``source`` (a run) was fitted."""
    if pin is not None and features_pin(features_dir) != pin:
        raise ValueError(f"{features_dir}: the features folder now holds other settings (another --rate/--pca/"
                         f"model...) than when {source} was fitted; run `cinevox features` with the run's settings "
                         "into a new folder, or refit the baseline")


def training_rows_hash(samples) -> str:
    """sha256 of the sorted ``(film, tr)`` pairs of the ``train`` split of ``samples`` (a samples table)."""
    import hashlib

    t = samples[samples["split"] == "train"]
    pairs = sorted(zip(t["film"].astype(str), t["tr"].astype(int), strict=True))
    return hashlib.sha256("\n".join(f"{f}\t{r}" for f, r in pairs).encode()).hexdigest()


def _training_rows(samples, feats: dict[str, np.ndarray]) -> np.ndarray:
    """The ``train`` rows of ``{film: (n_trs, D)}`` TR features. -> (n_train, D)"""
    train = samples[samples["split"] == "train"]
    return np.concatenate([feats[film][g["tr"].to_numpy()] for film, g in train.groupby("film")])


def _pca(x: np.ndarray, n: int):
    """PCA of x (N, D) -> ``(mean (D,), components (k, D), explained (k,))``, ``k = min(n, N, D)``."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(n, x.shape[0], x.shape[1]), svd_solver="full").fit(x)
    return (pca.mean_.astype(np.float32), pca.components_.astype(np.float32),
            pca.explained_variance_ratio_.astype(np.float32))


def apply_pca(features_dir: str | Path, layer: str, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    man = read_manifest(features_dir)
    path = Path(features_dir) / "cache" / man["current"] / f"pca_{layer}.npz"
    if not man.get("pca"):
        return feats
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `cinevox features` again")
    with np.load(path) as z:
        mean, comp = z["mean"], z["components"]
    return {f: ((x - mean) @ comp.T).astype(np.float32) for f, x in feats.items()}


def fit_pca(data, cache: Path, record: dict, settings: dict, n: int) -> dict[str, int]:
    """PCA per layer on the TR features of the training split's TRs only; ``pca_<layer>.npz`` records the hash of
    those ``(film, tr)`` rows (``train_rows``). -> {layer: components kept}."""
    kept = {}
    for la in settings["layers"]:
        feats = {}
        for film in data.samples["film"].unique():
            x = np.load(cache / film / f"{la}.npy", mmap_mode="r")
            n_trs = int(data.manifest["films"][film]["n_trs"])
            times = sample_times(n_trs, settings["tr"], settings["rate"])[: len(x)]
            feats[film] = tr_aggregate(x, times, n_trs, settings["tr"])
        x = _training_rows(data.samples, feats)
        mean, comp, explained = _pca(x, n)
        with atomic_path(cache / f"pca_{la}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, mean=mean, components=comp, explained=explained,
                     train_rows=np.asarray(training_rows_hash(data.samples)))
        kept[la] = len(comp)
        logger.info("features: PCA of %s on %d training TRs: %d components, %.0f %% of the variance", la, len(x),
                    len(comp), 100 * explained.sum())
    return kept


def video_tr_features(features_dir: str | Path, layer: str, frames: np.ndarray | None, fpt: int, tr: float,
                      device: str | None = None, video: str | Path | None = None, n_trs: int | None = None,
                      resize: str = "area") -> np.ndarray:
    """The features of a new film with a folder's recorded settings (model, layer, rate, pooling, PCA), from its
    video file (``source="video"``: ``video`` and ``n_trs``) or its prepared-style frames (uint8
    (n_trs * fpt, S, S, 3)). -> (n_trs, D')"""
    from cinevox.pretrained.backbones import load_backbone, parse_pool

    man = read_manifest(features_dir)
    s, c = man["settings"], man["config"]
    if c["model"] == "simulator":
        raise ValueError(f"{features_dir}: the simulator's channels exist only for simulated films; a ridge on "
                         "them cannot predict a new video")
    dtype = s.get("dtype") or c.get("dtype", "auto")  # the dtype the features were extracted with
    bb = load_backbone(c["model"], device, dtype, c.get("vgg_weights"), c.get("image_size", 224))
    if bb.identity.get("weights_sha256") != s["identity"].get("weights_sha256"):
        raise ValueError(f"{features_dir}: model {c['model']} now has other weights than at extraction")
    if s.get("source", "frames") == "video":
        if video is None:
            raise ValueError(f"{features_dir}: features from videos; give the video file")
        times = sample_times(n_trs, tr, s["rate"])
        seg = [{"video": str(video), "start_s": 0.0, "film_tr": 0, "n_trs": n_trs}]
        it = iter_video_batches(bb, seg, times, tr, n_trs * tr, [layer], parse_pool(s["pool"]),
                                int(c.get("batch_size", 16)), s.get("clip_seconds"), s.get("frame_resize", resize))
    else:
        n_trs = len(frames) // fpt
        times = sample_times(n_trs, tr, s["rate"])
        it = iter_batches(bb, frames, times, fpt, tr, [layer], parse_pool(s["pool"]), int(c.get("batch_size", 16)),
                          s.get("clip_seconds"))
    parts = [f[layer] for _, f in it]
    x = tr_aggregate(np.concatenate(parts), times, n_trs, tr)
    return apply_pca(features_dir, layer, {"v": x})["v"]


__all__ = ["PretrainedConfig", "band_name"]  # re-exported from cinevox.configs


def config_from_manifest(man: dict) -> PretrainedConfig:
    c = dict(man["config"])
    c["layers"] = tuple(c.get("layers") or ())
    return PretrainedConfig(**c)

