"""A LocalStack Lambda runtime executor that runs execution environments as local processes.

Select it with ``LAMBDA_RUNTIME_EXECUTOR=process``. See ``docs/localstack.md``.
"""
