"""The Keras source (``.keras`` and Keras 2 ``.h5`` files, read with h5py, no TensorFlow):
:func:`.reader.read` reads a Keras model into a plan."""
