"""Synthetic galaxies in the Galaxy10 DECaLS look, and the statistics that compare them with real ones.

    python -m simulation.synthetic --out data/synthetic.h5 --n 6000     # the generator
    python -m simulation.stats --per-class 40                           # synthetic vs the real samples
"""
