"""A synthetic Emo-FilM with known ground truth (``cinevox simulate``)."""
