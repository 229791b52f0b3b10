"""Per-run measurements hooked into the engine (gradient flow, W&B watch) and their figures;
reports over many runs live in :mod:`labkit.report`."""
