"""Reports from the results store: the paper's Tables 1-9 beside ours, and the figures.

This package only formats what `benchmark.store` holds; it never trains, builds or
imports a model. `reports.paper` holds the paper's published numbers, the one copy of
each transcription in the project.
"""
