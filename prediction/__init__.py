"""Offline classification without a server: survey catalogues on Ray Data with model actors.

    python -m prediction.ray_predict --input DIR_H5_OR_PARQUET --out catalog.csv [--model ensemble]
    make predict INPUT=... OUT=... [MODEL=b0|b2|ensemble] [RAY_ADDRESS=...]

    prediction.inputs       shards of an image folder, a Galaxy10 HDF5 file or Parquet files
    prediction.parts        per-shard part files (resume) merged into the CSV or Parquet catalogue
    prediction.ray_predict  the CLI and the Ray Data pipeline

The answers are galaxy_morph.Predictor's (the server's answer path, in-process). It depends one way
on the core (galaxy_morph) and on survey I/O (survey.inputs, and survey.rows
for the catalogue's columns, the same as the HTTP bulk path's); nothing imports it.
"""
