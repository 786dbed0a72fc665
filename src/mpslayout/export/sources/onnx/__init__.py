"""The ONNX source: :func:`.reader.read` reads an ONNX model into a plan."""
