"""jupyter_extension: hubserve inside Jupyter.

The Jupyter server extension (REST endpoints under ``/hubserve/`` that call the hub service
with the server's own token), the ``%hubserve`` magics, the ipywidgets deploy panel and the
Python client. It depends on :mod:`model_runtime` and reaches ``hub_service`` over HTTP only.
"""
