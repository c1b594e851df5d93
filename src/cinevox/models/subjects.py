"""Encoders over several viewers: one shared trunk, a per-viewer linear read-out and an "average viewer" head.

``SubjectEncoder`` is the paper's encoder (its ``fc`` is the average-viewer head, so ``forward`` and every tool
that takes an encoder use the average head) with, per viewer ``j``, a low-rank linear correction of that read-out::

    h = dropout(trunk(clip))                      (B, 64 (S/8)^2), the input of ``fc``
    avg(h)  = fc(h)                               (B, V)
    y_j(h)  = fc(h) + proj(h) @ D[j] + d[j]       (B, V): viewer j's linear read-out of the trunk
    D[j] = heads[j] - mean_k heads[k],  d[j] = bias[j] - mean_k bias[k]   ("centered", the default)

The corrections start at 0 (every viewer begins as the average viewer) and, centered, sum to 0 over the viewers:
``fc`` is then exactly the mean of the viewers' read-outs, so what the viewers share cannot hide in their
corrections (without the constraint, Adam splits it between ``fc`` and every head, and the average head of a
viewer never trained on was at chance where a fitted head was not). Training also drops a viewer's correction
with probability ``subject_dropout`` (TRIBE v2's subject dropout). ``centered=False``: the free corrections of
``--target subjects`` runs made before the constraint. One trunk pass per clip serves every viewer
(:meth:`forward_subjects`).
Per viewer: ``rank * (V + 1) + V`` parameters (rank 64, 4,609 voxels: 0.3 M; 30 viewers: 9 M beside the
encoder's 75 M).

``SubjectDecoder`` is the paper's decoder (its ``fc``, voxels -> the first feature map, is the average-viewer input
layer) with, per viewer ``j``, a low-rank correction of that input layer (the mirror of the encoder's read-out)::

    h_avg(x)  = fc(x)                                        (B, 48 (S/8)^2)
    h_j(x)    = fc(x) + lift(x @ D[j]) + d[j]                 viewer j's input layer, D[j]: (V, rank)
    D[j] = in_heads[j] - mean_k in_heads[k],  d[j] = in_bias[j] - mean_k in_bias[k]   (centered)

and the up-sampling stack shared. ``SubjectEncoderDecoder`` joins the two: viewer ``j``'s pipeline is clip ->
``j``'s read-out -> ``j``'s input layer -> frame; its ``forward`` is the average viewer's. Per viewer the decoder
adds ``V * rank + 48 (S/8)^2`` parameters (rank 64, 4,609 voxels: 0.3 M).
"""

from __future__ import annotations

import torch
from torch import nn

from cinevox.models.decoder import Decoder
from cinevox.models.encoder import Encoder


def centered(p: torch.Tensor, on: bool) -> torch.Tensor:
    """Per-viewer parameters (N, ...) minus their mean over the viewers when ``on`` (they then sum to 0)."""
    return p - p.mean(0, keepdim=True) if on else p


class SubjectEncoder(Encoder):
    """``forward(clip) -> (B, V)`` (average head); ``forward_subjects(clip) -> (avg (B, V), per viewer (B, N, V))``."""

    def __init__(self, n_voxels: int, n_subjects: int, rank: int = 64, n_frames: int = 32, frame_size: int = 112,
                 dropout: float = 0.5, centered: bool = True) -> None:
        super().__init__(n_voxels, n_frames, frame_size, dropout)
        if n_subjects < 1 or rank < 1:
            raise ValueError(f"n_subjects and rank must be >= 1, got {n_subjects}, {rank}")
        self.n_subjects, self.rank, self.centered = n_subjects, rank, centered
        self.proj = nn.Linear(self.fc.in_features, rank, bias=False)
        self.heads = nn.Parameter(torch.zeros(n_subjects, rank, n_voxels))
        self.head_bias = nn.Parameter(torch.zeros(n_subjects, n_voxels))

    def trunk(self, clip: torch.Tensor) -> torch.Tensor:
        """The read-out's input, after dropout: (B, 3, S, S, T) -> (B, 64 (S/8)^2)."""
        return self.dropout(self.activations(clip, "conv4").contiguous().flatten(1))

    def corrections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The viewers' read-out corrections as used: ``(D (N, rank, V), d (N, V))``."""
        return centered(self.heads, self.centered), centered(self.head_bias, self.centered)

    def readout(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F) -> (average (B, V), every viewer (B, N, V))."""
        avg = self.fc(h)
        heads, bias = self.corrections()
        corr = torch.einsum("br,nrv->bnv", self.proj(h), heads) + bias
        return avg, avg[:, None, :] + corr

    def forward(self, clip: torch.Tensor, subjects: bool = False):
        """The average head (B, V); with ``subjects`` :meth:`forward_subjects` (so that DDP sees the call)."""
        return self.forward_subjects(clip) if subjects else super().forward(clip)

    def forward_subjects(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.readout(self.trunk(clip))


class SubjectDecoder(Decoder):
    """``forward(voxels (B, V)) -> frame (B, 3, S, S)`` through the average input layer;
    ``forward(voxels, viewer=j (B,) long)`` through each row's viewer's input layer (``-1``: the average one)."""

    def __init__(self, n_voxels: int, n_subjects: int, rank: int = 64, frame_size: int = 112, channels: int = 48,
                 final_batchnorm: bool = False, centered: bool = True) -> None:
        super().__init__(n_voxels, frame_size, channels, final_batchnorm)
        if n_subjects < 1 or rank < 1:
            raise ValueError(f"n_subjects and rank must be >= 1, got {n_subjects}, {rank}")
        self.n_subjects, self.rank, self.centered = n_subjects, rank, centered
        self.in_heads = nn.Parameter(torch.zeros(n_subjects, n_voxels, rank))
        self.lift = nn.Linear(rank, self.fc.out_features, bias=False)
        self.in_bias = nn.Parameter(torch.zeros(n_subjects, self.fc.out_features))

    def input_layer(self, voxels: torch.Tensor, viewer: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V), viewer (B,) long or None -> the first feature map's input (B, 48 (S/8)^2), before the ReLU.

        Rows with ``viewer == -1`` (and every row when ``viewer`` is None) take the average input layer ``fc``;
        the correction is multiplied by 0 there rather than skipped, so every parameter is in the graph (DDP)."""
        h = self.fc(voxels)
        if viewer is None:
            return h
        heads, bias = centered(self.in_heads, self.centered), centered(self.in_bias, self.centered)
        # rows select their viewer by a one-hot product, not by indexing: indexing a parameter with repeated
        # viewers accumulates its gradient in a thread-dependent order, and a resumed run would differ in the last
        # bits; a row of -1 (the average viewer) selects nothing
        onehot = torch.nn.functional.one_hot(viewer.clamp(min=0), self.n_subjects).to(heads.dtype)
        onehot = onehot * (viewer >= 0).to(heads.dtype)[:, None]  # (B, N)
        low = torch.einsum("bv,nvr->bnr", voxels.to(heads.dtype), heads)  # (B, N, rank): every viewer's
        low = (low * onehot[..., None]).sum(1)  # (B, rank)
        return h + onehot.sum(1, keepdim=True) * self.lift(low) + onehot @ bias

    def forward(self, voxels: torch.Tensor, viewer: torch.Tensor | None = None) -> torch.Tensor:
        """voxels (B, V) -> frame (B, 3, S, S)."""
        return self.decode_features(self.input_layer(voxels, viewer))


class SubjectEncoderDecoder(nn.Module):
    """``clip (B, 3, S, S, T) -> (voxels (B, V), frame (B, 3, S, S))`` of the average viewer; with ``subjects``
    :meth:`forward_subjects`."""

    def __init__(self, n_voxels: int, n_subjects: int, rank: int = 64, n_frames: int = 32, frame_size: int = 112,
                 dropout: float = 0.5, final_batchnorm: bool = False, centered: bool = True) -> None:
        super().__init__()
        self.encoder = SubjectEncoder(n_voxels, n_subjects, rank, n_frames, frame_size, dropout, centered)
        self.decoder = SubjectDecoder(n_voxels, n_subjects, rank, frame_size, final_batchnorm=final_batchnorm,
                                      centered=centered)
        self.n_subjects = n_subjects

    def forward(self, clip: torch.Tensor, subjects: bool = False, pick: torch.Tensor | None = None,
                rows: torch.Tensor | None = None):
        """The average viewer ``(voxels, frame)``; with ``subjects`` :meth:`forward_subjects` (DDP sees the call)."""
        if subjects:
            return self.forward_subjects(clip, pick, rows)
        voxels = self.encoder(clip)
        return voxels, self.decoder(voxels)

    def forward_subjects(self, clip: torch.Tensor, pick: torch.Tensor, rows: torch.Tensor | None = None):
        """One trunk pass: ``(average (B, V), every viewer's read-out (B, N, V), frames (P, 3, S, S))``: frame ``p``
        is clip ``rows[p]`` (default: ``arange(B)``) decoded through viewer ``pick[p]``'s pipeline (its read-out,
        then its input layer; ``-1``: the average viewer's)."""
        avg, per = self.encoder.forward_subjects(clip)
        rows = torch.arange(len(pick), device=per.device) if rows is None else rows
        v = torch.where((pick >= 0)[:, None], per[rows, pick.clamp(min=0)], avg[rows])
        return avg, per, self.decoder(v, pick)


def _check_viewer(base: nn.Module, j: int) -> None:
    """ValueError unless ``j`` is a viewer of ``base`` (a model with per-viewer parts)."""
    if not 0 <= j < base.n_subjects:
        raise ValueError(f"viewer {j} out of range ({base.n_subjects} viewers)")


class ViewerEncoder(nn.Module):
    """One viewer's encoder from a :class:`SubjectEncoder`: ``clip (B, 3, S, S, T) -> (B, V)``; weights shared."""

    def __init__(self, base: SubjectEncoder, j: int) -> None:
        super().__init__()
        _check_viewer(base, j)
        self.base, self.j = base, j
        self.n_voxels, self.n_frames, self.frame_size = base.n_voxels, base.n_frames, base.frame_size

    def _readout(self, h: torch.Tensor) -> torch.Tensor:
        b = self.base
        heads, bias = b.corrections()
        return b.fc(h) + b.proj(h) @ heads[self.j] + bias[self.j]

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self._readout(self.base.trunk(clip))

    def activations(self, clip: torch.Tensor, layer: str) -> torch.Tensor:
        """The shared trunk's activations (:meth:`Encoder.activations`)."""
        return self.base.activations(clip, layer)

    def head(self, act: torch.Tensor, layer: str) -> torch.Tensor:
        """This viewer's read-out from a layer's activations: ``head(activations(x, l), l) == forward(x)``."""
        b = self.base
        if layer == "pool2":
            act = b.temporal.bn(torch.relu(b.temporal.conv(act)))
        if layer in ("pool2", "temporal"):
            act = b.bn4(torch.relu(b.conv4(act)))
        return self._readout(b.dropout(act.contiguous().flatten(1)))


class ViewerDecoder(nn.Module):
    """One viewer's decoder from a :class:`SubjectDecoder`: ``voxels (B, V) -> frame (B, 3, S, S)``; weights shared."""

    def __init__(self, base: SubjectDecoder, j: int) -> None:
        super().__init__()
        _check_viewer(base, j)
        self.base, self.j = base, j
        self.n_voxels, self.frame_size = base.n_voxels, base.frame_size

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        return self.base(voxels, torch.full((len(voxels),), self.j, dtype=torch.long, device=voxels.device))


class ViewerEncoderDecoder(nn.Module):
    """One viewer's pipeline of a :class:`SubjectEncoderDecoder`: ``clip -> (its read-out (B, V), frame)``."""

    def __init__(self, base: SubjectEncoderDecoder, j: int) -> None:
        super().__init__()
        self.encoder, self.decoder = ViewerEncoder(base.encoder, j), ViewerDecoder(base.decoder, j)

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        voxels = self.encoder(clip)
        return voxels, self.decoder(voxels)


def is_subject_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` has per-viewer parts (a ``--target subjects`` run's model)."""
    return isinstance(model, (SubjectEncoder, SubjectDecoder, SubjectEncoderDecoder))


def viewer_model(model: torch.nn.Module, subject: str | None, subjects: list[str] | None, source="the model"):
    """``model`` for one viewer: ``None`` (or "average") -> the model itself (a ``--target subjects`` model's
    average viewer); ``"S07"`` -> that viewer's read-out / input layer / pipeline (:class:`ViewerEncoder`,
    :class:`ViewerDecoder`, :class:`ViewerEncoderDecoder`). ValueError naming the viewers with one."""
    if subject in (None, "average"):
        return model
    s = subject.removeprefix("sub-")
    if not is_subject_model(model) or not subjects:
        raise ValueError(f"--subject {subject}: {source} has no per-viewer read-outs or input layers (train it with "
                         "--target subjects; a --target subject:<ID> run is that viewer's model already)")
    if s not in subjects:
        raise ValueError(f"--subject {subject}: no read-out for this viewer in {source} (viewers with one: "
                         f"{', '.join(subjects)}; use --subject average for a viewer never trained on)")
    j = subjects.index(s)
    view = {SubjectEncoder: ViewerEncoder, SubjectDecoder: ViewerDecoder, SubjectEncoderDecoder: ViewerEncoderDecoder}
    return view[type(model)](model, j).eval()
