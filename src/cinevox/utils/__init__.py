"""Lowest layer: atomic files, hashes, manifests, versions, logging set-up."""
