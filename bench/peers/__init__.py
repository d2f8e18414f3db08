"""The peer servers of the HTTP series (issue 13, series 6), each run in a virtualenv of its own.

- ``venvs``: makes those virtualenvs on demand with pinned versions (run in the project's interpreter);
- ``kserve_server``: KServe's Python ``ModelServer`` with a small ``kserve.Model`` running onnxruntime
  (run in the KServe virtualenv);
- ``mlserver_runtime``: an MLServer custom runtime running onnxruntime (loaded by ``mlserver start`` in
  the MLServer virtualenv).

The two server files import only what their own virtualenv has: never import them from the project.
"""
