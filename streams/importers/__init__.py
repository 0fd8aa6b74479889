"""Importers of published P3D weights (Caffe .caffemodel, pseudo-3d-pytorch checkpoints)."""
