"""The engine: model and data loading, the pre-flight plan, the accelerate training loop,
checkpoints, distributed launch, output folders, the model card, publishing and prediction.

It builds on ``adaptkit.plugin`` and ``adaptkit.recipe``; the judge and the CLI build on it.
"""
