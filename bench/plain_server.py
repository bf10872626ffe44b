"""The baseline of ``runtime_bench.py``: a plain FastAPI + uvicorn server, no batching.

It serves a TorchScript file the way a competent user would without a serving framework: an
``async def`` endpoint reads the JSON body with ``await request.json()``, runs the model once
per request under ``torch.inference_mode`` and answers with the output as a JSON list. Same
stack as the hubserve runtime (uvicorn with uvloop and httptools, access log off, one torch
thread), so the comparison measures what the runtime does, not a slower HTTP stack.

Two choices keep the baseline honest rather than artificially slow:

* The model runs directly in the ``async def`` endpoint. On one core that is the fastest
  plain option: a ``def`` endpoint would hop to a thread pool for every request and pay for
  the hand-off and the GIL ping-pong, without any parallelism to gain.
* The reply is a ``JSONResponse`` built from ``tensor.tolist()``. Returning the list itself
  would send it through FastAPI's ``jsonable_encoder``, which walks every element in Python:
  about 2.8 ms for a 64x64 mask, more than the JSON encoding itself. FastAPI's documentation
  recommends returning a response directly when performance matters.

Usage::

    python bench/plain_server.py MODEL.pt --port 8001 [--argmax] [--threads 1]

``--argmax`` returns the per-pixel class (``argmax`` over axis 1, as uint8 values) instead of
the raw output, as the Tiramisu service does (computed as ``max(dim=1).indices``, like the
service: torch's CPU ``argmax`` over a non-innermost axis is about 10x slower).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_app(model_path: str, *, argmax: bool = False) -> FastAPI:
    """An app serving ``POST /predict`` (JSON nested list in and out) and ``GET /readyz``."""
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript but still loads it
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(model_path, map_location="cpu").eval()

    app = FastAPI(title="plain TorchScript server")

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        data = await request.json()
        with torch.inference_mode():
            x = torch.tensor(data, dtype=torch.float32)
            y = model(x)
            if argmax:  # max().indices: as argmax, but ~10x faster over axis 1 on CPU
                y = y.max(dim=1).indices.to(torch.uint8)
        return JSONResponse(y.tolist())

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="TorchScript file (.pt)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--argmax", action="store_true", help="reply with argmax over axis 1")
    args = parser.parse_args(argv)

    # One core, one thread: torch's own pool would only contend with the event loop.
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    app = create_app(args.model, argmax=args.argmax)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
