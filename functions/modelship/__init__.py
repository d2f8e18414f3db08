"""modelship: serve ONNX models over the Open Inference Protocol, on Lambda, locally and at the edge."""

__version__ = "0.1.0"
SERVER_NAME = "modelship"
