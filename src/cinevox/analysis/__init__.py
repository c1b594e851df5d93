"""Interpretability: decoder saliency with AAL3 region tables (paper Fig. 5, Table II), virtual lesions."""
