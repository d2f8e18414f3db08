"""Lambda layer builds for modelship (see ``layers/build_layer.py``)."""
