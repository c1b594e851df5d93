"""Data layer: NIfTI streaming, BIDS discovery, masks, video decoding, preparation, torch datasets.

Convention for arrays in this layer: ``(n_trs, n_voxels)`` time series, voxels in C order of the mask.
"""
