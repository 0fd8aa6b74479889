"""The transfer stage: one frozen P3D representation, linear classifiers, several benchmarks (docs/transfer.md)."""
