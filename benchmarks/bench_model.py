"""Full-size encoder-decoder training steps, cinevox's fast path beside the authors' layer layout, in one process.

    python benchmarks/bench_model.py [--batch 8] [--steps 5] [--threads 2] [--device cpu|cuda] [--compile]

Same math on both sides: E-D forward, MSE on the voxels + MSE on the middle frame, backward, Adam step (4609
voxels, 32 frames of 112 x 112). The reference is ``benchmarks/authors_layout.py`` (3D convolutions and pools,
16 separate Conv2d, ``torch.optim.Adam`` with its defaults); cinevox's fast path is ``cinevox.models`` with its
optimizer (``cinevox.training.train.make_optimizer``). Steps alternate between the two (so that drift hits both
alike); the table gives the median over steps, clips/s and the ratio, then a profile of one fast step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_layout import AuthorsEncoderDecoder, authors_optimizer  # noqa: E402

from cinevox.models import EncoderDecoder  # noqa: E402
from cinevox.training.train import make_optimizer  # noqa: E402
from cinevox.utils.device import cpu_has_bf16  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--voxels", type=int, default=4609)
    ap.add_argument("--compile", action="store_true", help="also torch.compile the fast model")
    ap.add_argument("--profile", action="store_true", help="print a profile of one fast step")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    b, v = a.batch, a.voxels
    clip = torch.rand(b, 32, 112, 112, 3, device=dev).permute(0, 4, 2, 3, 1)  # (B, 3, S, S, T) as the loader gives
    vox = torch.randn(b, v, device=dev)
    frame = clip[..., 15].contiguous()

    ref = AuthorsEncoderDecoder(v).to(dev)
    ref_opt = authors_optimizer(ref)
    fast = EncoderDecoder(v).to(dev)
    fast_opt = make_optimizer(fast, 1e-4, 0.0, dev)
    fast_fn = torch.compile(fast) if a.compile else fast

    def step(model, opt, x, bf16=False):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            v_hat, f_hat = model(x)
        loss = F.mse_loss(v_hat.float(), vox) + F.mse_loss(f_hat.float(), frame)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    ref_clip = clip.contiguous()  # the authors' loader gives a contiguous (B, 3, S, S, T) tensor
    variants = [("authors layout", ref, ref_opt, ref_clip, False), ("cinevox", fast_fn, fast_opt, clip, False)]
    if dev.type == "cuda" or cpu_has_bf16():
        variants.append(("cinevox, bf16 autocast", fast_fn, fast_opt, clip, True))
    times: dict[str, list[float]] = {v[0]: [] for v in variants}
    for k in range(a.steps + 1):  # the first round is a warm-up
        for name, model, opt, x, bf16 in variants:
            t = time.perf_counter()
            step(model, opt, x, bf16)
            if k:
                times[name].append(time.perf_counter() - t)
    print(f"device {dev}, {a.threads} threads, batch {b}, {v} voxels, 32 x 112 x 112 clips, torch {torch.__version__}")
    print("| layout | median s / step | clips / s | vs authors |\n|---|---:|---:|---:|")
    ref_t = statistics.median(times["authors layout"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.3f} | {b / m:.2f} | {ref_t / m:.2f}x |")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(fast_fn, fast_opt, clip)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
