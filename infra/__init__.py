"""modelship's AWS CDK app: reusable constructs (``infra.constructs``) composed into ``infra.stacks``."""
