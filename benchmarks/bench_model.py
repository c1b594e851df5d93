"""Forward + backward time per clip of the full-size encoder-decoder (112 x 112 x 32 frames, 4609 voxels).

    python benchmarks/bench_model.py [--device cpu|cuda] [--batch 4] [--repeats 3] [--perceptual]

Prints a table: time per clip for the encoder, the decoder and the end-to-end model with its loss.
"""

from __future__ import annotations

import argparse
import time

import torch

from cinevox.losses import DecoderLoss, EncoderLoss, EndToEndLoss, PerceptualLoss
from cinevox.models import Decoder, Encoder, EncoderDecoder, VGG16Features


def timeit(fn, repeats: int, device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--perceptual", action="store_true", help="include the VGG16 perceptual term (random weights)")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    b, v = a.batch, 4609
    clip = torch.rand(b, 3, 112, 112, 32, device=dev)
    vox = torch.randn(b, v, device=dev)
    frame = torch.rand(b, 3, 112, 112, device=dev)
    enc, dec, ed = Encoder(v).to(dev), Decoder(v).to(dev), EncoderDecoder(v).to(dev)
    perceptual = PerceptualLoss(VGG16Features().to(dev).eval()) if a.perceptual else None
    crit = EndToEndLoss(EncoderLoss(), DecoderLoss(perceptual, beta=0.35 if perceptual else 0.0))
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.amp else torch.enable_grad

    def step_enc():
        with ctx():
            loss = EncoderLoss()(enc(clip), vox)
        loss.backward()

    def step_dec():
        with ctx():
            loss = DecoderLoss(None, beta=0.0)(dec(vox), frame)
        loss.backward()

    def step_ed():
        with ctx():
            v_hat, f_hat = ed(clip)
            loss = crit(v_hat, vox, f_hat, frame)[0]
        loss.backward()

    rows = [("encoder", step_enc), ("decoder", step_dec),
            ("encoder-decoder + L_ED" + (" (with VGG16)" if perceptual else ""), step_ed)]
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else torch.get_num_threads()} "
          f"{'GPU' if dev.type == 'cuda' else 'CPU threads'}), batch {b}, torch {torch.__version__}")
    print(f"{'model':<44}{'s / batch':>12}{'ms / clip':>12}")
    for name, fn in rows:
        t = timeit(fn, a.repeats, dev)
        print(f"{name:<44}{t:>12.3f}{1000 * t / b:>12.1f}")


if __name__ == "__main__":
    main()
