"""CodeDeploy's pre-traffic hook for canary releases of the inference function (docs/deploy.md)."""
