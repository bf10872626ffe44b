"""Copy-and-paste code that calls a deployed API: curl and Python.

The snippets are what a user hands to a colleague or pastes in a script, so they must work
as they are, and they must never carry a secret: the token is read from the environment
variable ``$JUPYTERHUB_API_TOKEN``, which every JupyterHub single-user server sets (anyone
else gets a token at ``<hub>/hub/token``). The request body is an example built from the
API's input kind (and, when known, its dtype, shape or columns), so a pasted snippet runs
and gets a real answer — or a precise 422 saying what the API wants.
"""

from __future__ import annotations

import html
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TOKEN_ENV = "JUPYTERHUB_API_TOKEN"  # noqa: S105 (the name of the variable, not a token)
#: Example arrays never get bigger than this many numbers.
_MAX_EXAMPLE_ITEMS = 64


@dataclass(frozen=True)
class Snippets:
    """The URL of one API of a deployment and code calling it."""

    url: str
    curl: str
    python: str


def example_input(spec: Mapping[str, Any]) -> Any:
    """A small valid-looking input for an API's input spec (``IOSpec.to_json()`` form)."""
    kind = spec.get("kind", "json")
    if kind in ("ndarray", "tensor"):
        return _example_array(spec.get("dtype"), spec.get("shape"))
    if kind == "dataframe":
        columns = spec.get("columns") or ["x"]
        return [dict.fromkeys(columns, 0)]
    if kind == "text":
        return "hello"
    if kind == "path":
        return {"input": "/path/to/inputs", "output": "/path/to/outputs"}
    return []


def _example_array(dtype: str | None, shape: Any) -> Any:
    if dtype is not None and dtype.startswith("bool"):
        value: Any = False
    elif dtype is not None and (dtype.startswith("int") or dtype.startswith("uint")):
        value = 0
    else:
        value = 0.0
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in (shape or [-1, 1])]
    total = 1
    for d in dims:
        total *= d
    if total > _MAX_EXAMPLE_ITEMS:  # an image-sized input: show the structure, not 50k zeros
        dims = [1] * len(dims)

    def nested(rest: list[int]) -> Any:
        return [nested(rest[1:]) for _ in range(rest[0])] if rest else value

    return nested(dims)


def make_snippets(endpoint: str, api: str, spec: Mapping[str, Any]) -> Snippets:
    """Snippets calling ``api`` of the deployment at ``endpoint`` (its URL ending in ``/``)."""
    kind = spec.get("kind", "json")
    url = f"{endpoint}jobs/{api}" if kind == "path" else f"{endpoint}{api}"  # path: batch jobs
    example = example_input(spec)
    return Snippets(url=url, curl=_curl(url, kind, example), python=_python(url, kind, example))


def _curl(url: str, kind: str, example: Any) -> str:
    auth = f'-H "Authorization: token ${TOKEN_ENV}"'
    if kind in ("image", "file"):
        name = "image.png" if kind == "image" else "input.bin"
        body = f"-F {shlex.quote('file=@' + name)}"
    elif kind == "text":
        body = f"-H 'Content-Type: text/plain' --data-binary {shlex.quote(example)}"
    else:
        body = f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(example))}"
    return f"curl {auth} \\\n     {body} \\\n     {shlex.quote(url)}"


def _python(url: str, kind: str, example: Any) -> str:
    if kind in ("image", "file"):
        name = "image.png" if kind == "image" else "input.bin"
        body = f'files={{"file": open({name!r}, "rb")}}'
    elif kind == "text":
        body = f"data={example!r}.encode(), headers={{**auth, 'Content-Type': 'text/plain'}}"
    else:
        body = f"json={json.dumps(example)}"
    headers = "" if kind == "text" else "    headers=auth,\n"
    return (
        "import os\n\n"
        "import requests\n\n"
        f'auth = {{"Authorization": f"token {{os.environ[{TOKEN_ENV!r}]}}"}}\n'
        "response = requests.post(\n"
        f"    {url!r},\n"
        f"    {body},\n"
        f"{headers}"
        "    timeout=60,\n"
        ")\n"
        "response.raise_for_status()\n"
        "print(response.json())\n"
    )


def snippet_html(title: str, code: str) -> str:
    """``code`` in a ``<pre>`` with a button copying it to the clipboard.

    The button reads the text of the ``<pre>`` next to it, so the code is written once;
    where the browser refuses clipboard access (plain ``http`` to another host), it selects
    the text instead, ready for Ctrl-C.
    """
    copy = (
        "const pre = this.parentElement.querySelector('pre');"
        "const select = () => { const r = document.createRange(); r.selectNodeContents(pre);"
        " const s = window.getSelection(); s.removeAllRanges(); s.addRange(r); };"
        "if (navigator.clipboard) { navigator.clipboard.writeText(pre.innerText)"
        ".then(() => { this.textContent = 'Copied'; }, select); } else { select(); }"
    )
    return (
        '<div style="margin: 4px 0">'
        f"<b>{html.escape(title)}</b> "
        f'<button onclick="{html.escape(copy)}" title="Copy to the clipboard">Copy</button>'
        '<pre style="margin: 4px 0; padding: 6px; overflow-x: auto; '
        'background: var(--jp-layout-color2, #f5f5f5)">'
        f"{html.escape(code)}</pre></div>"
    )
