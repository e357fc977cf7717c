"""Data sources: the synthetic world, manifests, real-video folders and datasets."""
