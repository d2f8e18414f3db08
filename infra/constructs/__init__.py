"""Reusable constructs: each one owns a resource, its least-privilege wiring and its cdk-nag reasoning."""
