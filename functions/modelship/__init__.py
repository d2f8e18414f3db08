"""modelship: serve ONNX models over the Open Inference Protocol, on AWS Lambda and locally.

``modelship.core`` is the inference core and knows no door; ``modelship.doors`` holds the API Gateway
translation and the local HTTP server; ``modelship.tools`` the CLI and the client. The import contracts in
pyproject.toml (``lint-imports``) keep it that way.
"""

__version__ = "0.1.0"
