"""The deployable stacks: model store, inference API, and the edge stack (Greengrass v2)."""
