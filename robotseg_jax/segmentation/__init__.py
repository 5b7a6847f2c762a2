"""Automatic segmentation of whole robot datasets: many videos tracked in one compiled step, sharded over
processes, resumable (`python -m robotseg_jax.segment`)."""
