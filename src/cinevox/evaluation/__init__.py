"""Evaluation as in the paper (voxel r, SSIM, nulls) plus noise ceilings; model comparisons (Table I)."""
