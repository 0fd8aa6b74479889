"""P3D ResNet streams: the network, clips from the flow store, training and checkpoints."""
