"""The TensorFlow-free runtime of mnist-vae: numpy, onnxruntime and Pillow only.

    from export.bundle import Bundle
    digits = Bundle.load("artifacts/export").sample(16, seed=0)   # (16, 28, 28) float32

Modules: ``bundle`` (the ONNX models of an export bundle), ``inputs`` (reading and checking
images from files, chunk by chunk), ``images`` (PNG grids), ``provenance`` (what made a
generated PNG, recorded in it, and its check), ``explorer`` (the latent explorer web page),
``scoring`` and ``metrics`` (numpy definitions shared with the pipeline), ``stream``
(bounded-memory reads that report bad records instead of raising) and ``sinks`` (score and
error files, CSV or Parquet, written atomically); ``python -m export`` is the command line.
``beam`` (``python -m export.beam``) runs the scoring on Apache Beam and needs the ``beam``
extra; Parquet needs ``parquet``.

Never import tensorflow, keras or tf2onnx from this package, not even lazily at module level.
"""
