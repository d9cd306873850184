"""The TensorFlow-free runtime of mnist-vae: numpy, onnxruntime and Pillow only.

    from export.bundle import Bundle
    digits = Bundle.load("artifacts/export").sample(16, seed=0)   # (16, 28, 28) float32

Modules: ``bundle`` (the ONNX models of an export bundle and what they compute), ``inputs``
(the one reader of every input format, chunk by chunk, reporting bad records), ``streaming``
(the bounded-memory score loop), ``scorefile`` (the score and errors files: columns, writer and
reader, CSV or Parquet, written atomically), ``labelled`` (a score file against labels),
``scoring`` and ``metrics`` (numpy definitions shared with the pipeline), ``maps`` (per-pixel
score maps), ``images`` (PNG grids), ``provenance`` (what made a generated PNG, recorded in it,
and its check), ``explorer`` (the latent explorer web page), ``edge`` (ORT-format models for
devices), ``lattice``, ``files`` and ``progress``. ``python -m export`` is the command line, one
module per subcommand in ``export.cli``. ``beam`` (``python -m export.beam``) runs the scoring
on Apache Beam and needs the ``beam`` extra; Parquet needs ``parquet``, the edge kit ``edge``.

Never import tensorflow, keras or tf2onnx from this package, not even lazily at module level.
"""
