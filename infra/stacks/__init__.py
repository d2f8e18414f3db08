"""The deployable stacks: model store, inference API, and the (placeholder) edge stack."""
