"""The TensorFlow-free runtime of mnist-vae: numpy, onnxruntime and Pillow only.

Never import tensorflow, keras or tf2onnx from this package, not even lazily at module level.
"""
