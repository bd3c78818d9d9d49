"""The judge: whether transfer will pay on the user's data. ``advise`` (before training: data
checks, transferability scores, cost), ``compare`` (arms against training from scratch over data
sizes and seeds), and what they use: learning-rate tuning, learning curves, energy.

It builds on the engine; nothing below imports it.
"""
