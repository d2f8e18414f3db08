"""The edge door: modelship as an AWS IoT Greengrass v2 component, and its packaging (docs/edge.md)."""
