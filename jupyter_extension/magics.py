"""``%hubserve`` and ``%%hubserve_service``: package, push, deploy and call models from cells.

``%load_ext jupyter_extension`` registers two magics (see :func:`load_ipython_extension`):

* ``%hubserve VERB ARGS`` — one line magic whose verbs mirror the ``hubserve`` CLI and the
  hub service's deployment API: ``package``, ``push``, ``deploy``, ``list``, ``status``,
  ``logs``, ``scale``, ``rollback``, ``undeploy`` and ``predict``. ``%hubserve?`` lists them;
  ``%hubserve VERB --help`` gives the options of one.
* ``%%hubserve_service NAME`` — a cell magic whose cell defines the API functions of a new
  :class:`~model_runtime.Service` called ``NAME``; it is packaged at once (and optionally
  pushed and deployed) and bound to ``NAME`` in the notebook.

Why magics on top of :class:`~jupyter_extension.client.Client`: in a notebook, the objects to
ship already live in the kernel. So arguments that name a notebook variable take the object
itself — ``%hubserve push svc`` pushes the ``Service`` in ``svc``, ``%hubserve predict iris
predict x`` sends the array in ``x`` — and results are returned as the client's objects, so
``dep = %hubserve deploy iris --wait`` can be used in code, while notebooks show them as
tables with links to the endpoints (:mod:`jupyter_extension._display`).

Failures the user can act on (the service is unreachable, the token lacks the scope, no such
deployment, a model that cannot be packaged) are shown as one line, ``hubserve: <what went
wrong>``, instead of a traceback through the client: see :class:`HubserveMagicError`. The
token is never printed: the client reads it from ``JUPYTERHUB_API_TOKEN`` and no argument
takes one, so it stays out of the notebook and its history.

This module imports no heavy dependency when loaded (the client, ``model_runtime``, tqdm are
imported by the verbs that need them), so auto-loading it in every kernel costs nothing.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import shlex
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from ._display import (
    DeploymentTable,
    LogView,
    ModelTable,
    VersionTable,
    human_size,
    register_formatters,
    unregister_formatters,
)

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from model_runtime import BuiltBundle, Service

    from .client import Client, Deployment, ModelVersion

__all__ = ["HubserveMagicError", "HubserveMagics", "load_ipython_extension"]

VERBS = (
    "package",
    "push",
    "deploy",
    "list",
    "status",
    "logs",
    "scale",
    "rollback",
    "undeploy",
    "predict",
)


class HubserveMagicError(UsageError):
    """A failure shown as exactly one line: ``hubserve: <message>``.

    IPython renders an exception through its ``_render_traceback_`` when it has one, so the
    notebook shows this line and no traceback; the cell still fails (``Run All`` stops, and
    ``nbclient`` reports an error), and code calling ``run_line_magic`` gets an ordinary
    exception it can catch. It subclasses :class:`~IPython.core.error.UsageError` so that
    code already handling magic errors handles these too.
    """

    def __init__(self, message: str) -> None:
        self.message = " ".join(_redact(message).split())
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"hubserve: {self.message}"

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def _redact(text: str) -> str:
    """Belt and braces: the client's messages hold no token, and this makes sure."""
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    return text.replace(token, "***") if token and len(token) >= 8 else text


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn the errors a user can act on into :class:`HubserveMagicError`.

    Client errors (HTTP status, unreachable service, missing configuration, timeouts) and
    ``model_runtime`` errors (packaging, bad names) carry messages written for people; a
    traceback through the client would only bury them. Anything else is a bug and keeps
    its traceback.
    """
    from model_runtime.errors import HubserveError

    from .client import HubserveClientError

    try:
        yield
    except (HubserveClientError, HubserveError) as exc:
        raise HubserveMagicError(str(exc)) from None
    except OSError as exc:  # a file argument that does not exist, an unwritable directory
        where = f": {exc.filename}" if exc.filename else ""
        raise HubserveMagicError(f"{exc.strerror or exc}{where}") from None


# -- argument parsing ---------------------------------------------------------------------------


class _HelpRequested(Exception):
    """``--help`` was given: show ``text`` instead of running the verb."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _HelpAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> NoReturn:
        raise _HelpRequested(parser.format_help())


class _VerbParser(argparse.ArgumentParser):
    """The options of one verb: errors become ``UsageError``, ``--help`` returns the text.

    argparse's defaults (print to stderr, ``sys.exit``) would kill or confuse the kernel.
    IPython's ``MagicArgumentParser`` (``IPython.core.magic_arguments``) makes the same choice
    for errors, but it has no ``--help``, is one parser per magic (no verbs) and is untyped.
    """

    def __init__(self, verb: str, description: str, *, magic: str = "%hubserve") -> None:
        super().__init__(
            prog=f"{magic} {verb}".strip(),
            description=description,
            add_help=False,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.add_argument("-h", "--help", action=_HelpAction, help="Show this help.")

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _wait_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--wait", action="store_true", help=f"Wait until {what}, with a progress bar."
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="How long --wait waits (default: %(default)s).",
    )


def _package_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label",
        dest="labels",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Label to record in the bundle (repeatable).",
    )
    parser.add_argument("--description", help="Description of the bundle.")
    parser.add_argument(
        "-r",
        "--requirement",
        dest="requirements",
        action="append",
        default=[],
        metavar="SPEC",
        help="Extra requirement line, e.g. 'scipy>=1.11' (repeatable).",
    )
    parser.add_argument(
        "--trust-pickle", action="store_true", help="Allow models that only pickle can save."
    )


def _access_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--public", action="store_true", help="Every hub user may call the deployment."
    )
    parser.add_argument(
        "--user",
        dest="users",
        action="append",
        default=[],
        metavar="NAME",
        help="Hub user who may call it (repeatable).",
    )
    parser.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=[],
        metavar="NAME",
        help="Hub group whose members may call it (repeatable).",
    )


_NAME_HELP = "[OWNER/]NAME of the deployment, or a variable holding a Deployment or a Service."


def _build_parsers() -> dict[str, _VerbParser]:
    p: dict[str, _VerbParser] = {}

    p["package"] = _VerbParser(
        "package",
        "Package a service into a bundle archive (.tar.gz), as `hubserve package` does.\n"
        "Returns the built bundle; `%hubserve push` takes it.",
    )
    p["package"].add_argument(
        "source",
        metavar="SOURCE",
        help="A Service variable of the notebook, a service directory, FILE.py[:VAR] or"
        " MODULE:VAR.",
    )
    p["package"].add_argument(
        "-o",
        "--output",
        default=".",
        metavar="DIR",
        help="Directory for the archive (default: the notebook's directory).",
    )
    _package_options(p["package"])

    p["push"] = _VerbParser(
        "push",
        "Package (when needed) and upload a model version to the hub's registry.\n"
        "Returns the pushed version: `v = %hubserve push svc`, then `%hubserve deploy v`.",
    )
    p["push"].add_argument(
        "source",
        metavar="SOURCE",
        help="A Service or bundle variable of the notebook, a .tar.gz archive, or anything"
        " `%%hubserve package` takes.",
    )
    p["push"].add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="TAG",
        help="Tag to point at the pushed version (repeatable).",
    )
    p["push"].add_argument("--owner", help="Push for this owner (hub admins only).")
    p["push"].add_argument("--no-progress", action="store_true", help="No progress bar.")
    _package_options(p["push"])

    p["deploy"] = _VerbParser(
        "deploy",
        "Run a model version as an authenticated HTTP API behind the hub.\n"
        "Returns the deployment; its endpoint is `dep.url`.",
    )
    p["deploy"].add_argument(
        "model",
        metavar="MODEL",
        help="[OWNER/]NAME[:VERSION|TAG] (default tag: latest), or a variable holding a pushed"
        " version or a Service.",
    )
    p["deploy"].add_argument("--name", help="Deployment name (default: the model's name).")
    p["deploy"].add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="Replicas to run (default: %(default)s).",
    )
    p["deploy"].add_argument("--threads", type=int, metavar="N", help="torch threads per replica.")
    p["deploy"].add_argument(
        "--batch",
        dest="batching",
        action="append",
        default=[],
        metavar="API:SIZE[:MS]",
        help="Batching of a batchable API: max batch size and max wait in ms (repeatable).",
    )
    _access_options(p["deploy"])
    _wait_options(p["deploy"], "every replica is ready")

    p["list"] = _VerbParser(
        "list",
        "List your models (with the deployments running each), or the versions of one.",
    )
    p["list"].add_argument(
        "name", nargs="?", metavar="NAME", help="[OWNER/]NAME of a model: list its versions."
    )
    p["list"].add_argument("--owner", help="Models of this owner (admins: anyone's).")

    p["status"] = _VerbParser(
        "status",
        "Show a deployment (replicas, version, endpoint, APIs), or all of yours as a table.",
    )
    p["status"].add_argument("name", nargs="?", metavar="NAME", help=_NAME_HELP)
    p["status"].add_argument("--owner", help="Deployments of this owner (admins: anyone's).")

    p["logs"] = _VerbParser("logs", "Show the last lines of each replica's output.")
    p["logs"].add_argument("name", metavar="NAME", help=_NAME_HELP)
    p["logs"].add_argument(
        "--tail",
        type=int,
        default=200,
        metavar="N",
        help="Lines per replica (default: %(default)s).",
    )

    p["scale"] = _VerbParser("scale", "Change the number of replicas of a deployment.")
    p["scale"].add_argument("name", metavar="NAME", help=_NAME_HELP)
    p["scale"].add_argument("replicas", type=int, metavar="REPLICAS", help="Replicas to run.")
    _wait_options(p["scale"], "the replicas are ready")

    p["rollback"] = _VerbParser(
        "rollback",
        "Roll a deployment back to the version it ran before, or with --to to any version\n"
        "or tag of its model (a rolling update: new replicas are ready before old ones stop).",
    )
    p["rollback"].add_argument("name", metavar="NAME", help=_NAME_HELP)
    p["rollback"].add_argument(
        "--to", dest="version", metavar="VERSION", help="Roll to this version or tag instead."
    )
    _wait_options(p["rollback"], "the new replicas are ready")

    p["undeploy"] = _VerbParser("undeploy", "Stop and delete a deployment.")
    p["undeploy"].add_argument("name", metavar="NAME", help=_NAME_HELP)

    p["predict"] = _VerbParser(
        "predict",
        "Call an API of a deployment and return its answer.\n\n"
        "DATA, the rest of the line, is a Python expression evaluated in the notebook,\n"
        "usually a variable: numpy arrays and torch tensors go as .npy, DataFrames as JSON\n"
        "records, PIL images and bytes as files, str as text, anything else as JSON.\n"
        "Options come before NAME. Examples:\n"
        "  %hubserve predict iris predict x\n"
        "  %hubserve predict iris predict x[:2]\n"
        "  %hubserve predict iris predict [[5.1, 3.5, 1.4, 0.2]]\n"
        '  %hubserve predict echo shout "hello"\n'
        "  %hubserve predict --file cat.png vision classify",
    )
    p["predict"].add_argument(
        "--file", "-f", metavar="PATH", help="Send this file instead of DATA."
    )
    p["predict"].add_argument(
        "--accept", metavar="TYPE", help="Media type to ask for, e.g. application/json."
    )
    p["predict"].add_argument("deployment", metavar="NAME", help=_NAME_HELP)
    p["predict"].add_argument("api", metavar="API", help="The API to call, e.g. predict.")
    p["predict"].add_argument(
        "data", nargs=argparse.REMAINDER, metavar="DATA", help="The input (see above)."
    )
    p["predict"].usage = "%(prog)s [-h] [--file PATH] [--accept TYPE] NAME API [DATA ...]"
    return p


PARSERS = _build_parsers()


def _split(line: str, prog: str) -> list[str]:
    """Split like a shell, but keep quotes: ``predict``'s DATA is Python source.

    ``"hello"`` must reach :meth:`HubserveMagics._evaluate` as a string literal, quotes and
    all; option values lose theirs in :func:`_unquoted`.
    """
    try:
        return shlex.split(line, posix=False)
    except ValueError as exc:  # an unbalanced quote
        raise UsageError(f"{prog}: {exc}") from None


def _service_parser() -> _VerbParser:
    parser = _VerbParser(
        "",
        "Define a hubserve service in a cell: the functions it defines become its APIs.",
        magic="%%hubserve_service",
    )
    add = parser.add_argument
    add(
        "name",
        metavar="NAME",
        help="Name of the service and of its model in the registry: lower-case letters,"
        " digits, '-', '_', '.'.",
    )
    add(
        "-m",
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="[KEY=]VAR",
        help="A notebook variable holding a model the APIs use, saved as an artifact under"
        " KEY (default: VAR) (repeatable). torch modules, tensors and arrays the functions"
        " use are found without it.",
    )
    add(
        "--as",
        dest="var",
        metavar="VAR",
        help="Variable to bind the Service to (default: NAME, with '-' and '.' as '_').",
    )
    add("--description", help="Description of the service.")
    add(
        "--label",
        dest="labels",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Label to record in the bundle (repeatable).",
    )
    add(
        "-r",
        "--requirement",
        dest="requirements",
        action="append",
        default=[],
        metavar="SPEC",
        help="Extra requirement line (repeatable).",
    )
    add("--push", action="store_true", help="Push the bundle to the hub's registry.")
    add(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="TAG",
        help="Tag for --push (repeatable).",
    )
    add(
        "--deploy",
        action="store_true",
        help="Push, then deploy (or roll the existing deployment NAME to the new version).",
    )
    add("--replicas", type=int, metavar="N", help="Replicas for --deploy (default: 1 when new).")
    add("--public", action="store_true", help="With --deploy: every hub user may call it.")
    _wait_options(parser, "the deployment is ready (with --deploy)")
    parser.epilog = _SERVICE_RULES
    return parser


_SERVICE_RULES = """The cell runs in the notebook's namespace, as any cell does. Then:

* the functions it defines at top level become the APIs of Service(NAME). If any of
  them is marked with @api(...) (from model_runtime import api), only the marked ones
  do and the others are helpers; functions named _like_this never do. Input and output
  kinds come from the @api options or from the annotations
  (def predict(x: np.ndarray) -> np.ndarray);
* the service is packaged at once, so whatever cannot be shipped is reported now, and it
  is bound to NAME in the notebook (--as VAR picks another variable);
* --push pushes it; --deploy pushes and deploys it or, when the deployment NAME exists,
  rolls it to the new version: run the cell again after an edit to ship the edit.

Returns the deployment (--deploy), the pushed version (--push) or the built bundle.

Example:

  %%hubserve_service iris --model net --deploy --wait
  def predict(x: np.ndarray) -> np.ndarray:
      with torch.no_grad():
          return net(torch.from_numpy(x)).numpy()
"""

SERVICE_PARSER = _service_parser()


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _unquoted(args: argparse.Namespace, keep: Sequence[str] = ()) -> argparse.Namespace:
    """Strip the quotes IPython's splitter (``posix=False``) leaves on option values."""
    for key, value in vars(args).items():
        if key in keep:
            continue
        if isinstance(value, str):
            setattr(args, key, _unquote(value))
        elif isinstance(value, list):
            setattr(args, key, [_unquote(v) if isinstance(v, str) else v for v in value])
    return args


def _overview() -> str:
    usages = "\n".join(
        textwrap.fill(
            " ".join(parser.format_usage().split()).removeprefix("usage: ").replace(" [-h]", ""),
            width=92,
            initial_indent="  ",
            subsequent_indent="      ",
            break_on_hyphens=False,
        )
        for parser in PARSERS.values()
    )
    return f"""\
%hubserve VERB [ARGS]: package, push, deploy, watch and call models from the notebook.

Verbs (``%hubserve VERB --help`` explains one):

{usages}

Arguments that name a notebook variable take its object: ``%hubserve push svc`` pushes the
Service in ``svc``; ``%hubserve deploy v`` deploys the version ``v = %hubserve push ...``
returned; NAME may be a variable holding a Deployment. ``{{expr}}`` and ``$var`` expand too.

Results are returned, so they can be kept: ``dep = %hubserve deploy iris --replicas 2
--wait``; notebooks show them as tables with links to the endpoints.

The service and the token come from the environment, as JupyterHub sets them for your
server: HUBSERVE_URL (or JUPYTERHUB_API_URL) and JUPYTERHUB_API_TOKEN. Errors are shown as
one line: ``hubserve: <what went wrong>``.

See also ``%%hubserve_service?``: define, package and deploy a service in one cell.
"""


# -- the magics ---------------------------------------------------------------------------------


@magics_class
class HubserveMagics(Magics):
    """The hubserve magics; one instance per shell, registered by ``%load_ext``."""

    def __init__(self, shell: InteractiveShell | None = None) -> None:
        super().__init__(shell)
        self.registered_formatters: list[tuple[str, str]] = []

    # -- the line magic ----------------------------------------------------------------------

    @line_magic
    def hubserve(self, line: str) -> Any:
        verb, rest = [*line.strip().split(None, 1), "", ""][:2]
        if verb in ("", "-h", "--help", "help"):
            target = rest.strip()
            if target in PARSERS:
                print(PARSERS[target].format_help())
            else:
                print(_overview())
            return None
        parser = PARSERS.get(verb)
        if parser is None:
            raise UsageError(
                f"%hubserve: unknown verb {verb!r}; use one of {', '.join(VERBS)}"
                " (%hubserve? for help)"
            )
        try:
            args = parser.parse_args(_split(rest, parser.prog))
        except _HelpRequested as shown:
            print(shown.text)
            return None
        args = _unquoted(args, keep=("data",))
        handler: Callable[[argparse.Namespace], Any] = getattr(self, f"_{verb}")
        with _one_line_errors():
            return handler(args)

    def _client(self) -> Client:
        from .client import Client

        return Client()

    # -- name resolution --------------------------------------------------------------------

    def _variable(self, token: str) -> Any:
        """The notebook's object named ``token``, or ``None`` when there is none."""
        assert self.shell is not None
        if not token.isidentifier():
            return None
        return self.shell.user_ns.get(token)

    def _deployment_name(self, token: str) -> str:
        """A deployment reference: a Deployment or Service variable, else the text itself.

        Only objects of these types count, so a notebook variable that merely shares the
        deployment's name (``iris = load_iris()``) does not get in the way.
        """
        from model_runtime import Service

        from .client import Deployment

        value = self._variable(token)
        if isinstance(value, Deployment):
            return value.key
        if isinstance(value, Service):
            return value.name
        return token

    def _model_reference(self, token: str) -> str | ModelVersion:
        from model_runtime import BuiltBundle, Service

        from .client import ModelVersion, VersionSummary

        value = self._variable(token)
        if isinstance(value, ModelVersion):
            return value
        if isinstance(value, VersionSummary):
            return value.ref
        if isinstance(value, Service):
            return value.name
        if isinstance(value, BuiltBundle):
            return f"{value.manifest.name}:{value.manifest.version}"
        return token

    def _source(self, token: str) -> Service | Path | str:
        """What ``package`` and ``push`` take: a Service, an archive, or a path spec."""
        from model_runtime import BuiltBundle, Service

        value = self._variable(token)
        if isinstance(value, Service):
            return value
        if isinstance(value, BuiltBundle):
            return value.archive
        if token.isidentifier() and not Path(token).exists():
            raise HubserveMagicError(
                f"{token!r} is neither a Service variable of this notebook nor a file"
            )
        return token

    # -- verbs ------------------------------------------------------------------------------

    def _package(self, args: argparse.Namespace) -> BuiltBundle:
        from model_runtime import build_bundle

        built = build_bundle(
            self._source(args.source),
            output_dir=args.output,
            labels=_labels(args.labels),
            description=args.description,
            requirements=args.requirements,
            trust_pickle=args.trust_pickle,
        )
        print(
            f"packaged {built.ref} -> {built.archive} ({human_size(built.archive.stat().st_size)})"
        )
        return built

    def _push(self, args: argparse.Namespace) -> ModelVersion:
        source = self._source(args.source)
        with self._client() as client:
            version = client.push(
                source,
                tags=args.tags,
                owner=args.owner,
                progress=not args.no_progress,
                labels=_labels(args.labels),
                description=args.description,
                requirements=args.requirements,
                trust_pickle=args.trust_pickle,
            )
        print(_pushed_line(version))
        return version

    def _deploy(self, args: argparse.Namespace) -> Deployment:
        access = _access(args)
        batching = _batching(args.batching)
        model = self._model_reference(args.model)
        with self._client() as client:
            dep = client.deploy(
                model,
                name=args.name,
                replicas=args.replicas,
                threads=args.threads,
                batching=batching,
                access=access,
                wait=False,
            )
            print(
                f"deploying {dep.key}: version {dep.version}, {args.replicas} replica(s),"
                f" endpoint {dep.url}"
            )
            if args.wait:
                dep = _wait(client, dep, args.timeout)
                print(f"{dep.key} is ready: {dep.status.ready}/{dep.status.desired} replicas")
        return dep

    def _list(self, args: argparse.Namespace) -> ModelTable | VersionTable:
        with self._client() as client:
            if args.name is None:
                return ModelTable(client.models(args.owner), client.deployments(args.owner))
            return VersionTable(client.model(args.name))

    def _status(self, args: argparse.Namespace) -> Deployment | DeploymentTable:
        with self._client() as client:
            if args.name is None:
                return DeploymentTable(client.deployments(args.owner))
            return client.deployment(self._deployment_name(args.name))

    def _logs(self, args: argparse.Namespace) -> LogView:
        name = self._deployment_name(args.name)
        with self._client() as client:
            return LogView(name, client.logs(name, tail=args.tail))

    def _scale(self, args: argparse.Namespace) -> Deployment:
        with self._client() as client:
            dep = client.scale(self._deployment_name(args.name), args.replicas)
            print(f"scaling {dep.key} to {args.replicas} replica(s)")
            if args.wait:
                dep = _wait(client, dep, args.timeout)
                print(f"{dep.key} is ready: {dep.status.ready}/{dep.status.desired} replicas")
        return dep

    def _rollback(self, args: argparse.Namespace) -> Deployment:
        name = self._deployment_name(args.name)
        with self._client() as client:
            # Back to the previous revision, or to a version or tag named explicitly.
            dep = client.rollback(name) if args.version is None else client.roll(name, args.version)
            print(f"rolling {dep.key} to version {dep.version}")
            if args.wait:
                dep = _wait(client, dep, args.timeout)
                print(f"{dep.key} runs {dep.version} on {dep.status.ready} replica(s)")
        return dep

    def _undeploy(self, args: argparse.Namespace) -> None:
        with self._client() as client:
            dep = client.deployment(self._deployment_name(args.name))  # for its full name
            client.undeploy(dep)
        print(f"undeployed {dep.key}")

    def _predict(self, args: argparse.Namespace) -> Any:
        if args.file is not None and args.data:
            raise UsageError("%hubserve predict: give DATA or --file, not both")
        data: Any
        if args.file is not None:
            data = Path(args.file)
            if not data.is_file():
                raise HubserveMagicError(f"no file {args.file}")
        elif args.data:
            data = self._evaluate(" ".join(args.data))
        else:
            raise UsageError("%hubserve predict: give DATA (a variable or expression) or --file")
        name = self._deployment_name(args.deployment)
        with self._client() as client:
            return client.predict(name, args.api, data, accept=args.accept)

    def _evaluate(self, expression: str) -> Any:
        assert self.shell is not None
        try:
            return self.shell.ev(expression)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise HubserveMagicError(
                f"cannot evaluate DATA {expression!r}: {type(exc).__name__}: {exc}"
            ) from None

    # -- the cell magic ---------------------------------------------------------------------

    @cell_magic
    def hubserve_service(self, line: str, cell: str) -> Any:
        from model_runtime import Service

        assert self.shell is not None
        parser = SERVICE_PARSER
        try:
            args = _unquoted(parser.parse_args(_split(line, parser.prog)))
        except _HelpRequested as shown:
            print(shown.text)
            return None
        ns = self.shell.user_ns
        with _one_line_errors():
            name = _check_name(args.name)
            var = args.var or name.replace("-", "_").replace(".", "_")
            if not var.isidentifier():
                raise UsageError(f"%%hubserve_service: {var!r} is not a variable name; use --as")
            if var in ns and not isinstance(ns[var], Service):
                raise HubserveMagicError(
                    f"{var!r} already holds a {type(ns[var]).__name__} in this notebook; bind"
                    " the service to another variable with --as VAR"
                )
            models = self._models(args.models)
        # The user's code: its errors keep their traceback, as in any cell.
        tree = self._run_definitions(cell)
        with _one_line_errors():
            return self._define_service(args, name, var, models, tree)

    def _run_definitions(self, cell: str) -> ast.Module:
        """Run the cell in the notebook's namespace, its source kept for packaging.

        Not via a nested ``run_cell``: that would fire the cell events again and take over
        the display hook, losing this cell's ``Out``. IPython's compiler caches the source in
        :mod:`linecache` under a cell name, which is where :mod:`model_runtime.bundle` reads
        the functions' code from, exactly as for a cell run the ordinary way.
        """
        shell = self.shell
        assert shell is not None
        source: str = shell.transform_cell(cell)  # type: ignore[no-untyped-call]
        filename = shell.compile.cache(source, shell.execution_count, raw_code=cell)
        tree = shell.compile.ast_parse(source, filename=filename)
        assert isinstance(tree, ast.Module)
        code = compile(tree, filename, "exec", flags=shell.compile.flags, dont_inherit=True)
        exec(code, shell.user_global_ns, shell.user_ns)  # noqa: S102  # the user's own cell
        return tree

    def _define_service(
        self,
        args: argparse.Namespace,
        name: str,
        var: str,
        models: dict[str, Any],
        tree: ast.Module,
    ) -> Any:
        from model_runtime import Service, build_bundle

        assert self.shell is not None
        svc = Service(
            name,
            models=models,
            apis=self._cell_functions(tree),
            description=args.description or "",
            labels=_labels(args.labels),
            requirements=args.requirements,
        )
        self.shell.user_ns[var] = svc
        print(_service_line(svc, var))
        built = build_bundle(svc)
        print(f"packaged {built.ref} ({human_size(built.archive.stat().st_size)})")
        if not (args.push or args.deploy):
            return built
        try:
            with self._client() as client:
                with _upload_bar(name) as progress:
                    version = client.push(built.archive, tags=args.tags, progress=progress)
                print(_pushed_line(version))
                if not args.deploy:
                    return version
                return self._deploy_or_roll(client, version, args)
        finally:
            built.archive.unlink(missing_ok=True)

    def _models(self, specs: list[str]) -> dict[str, Any]:
        assert self.shell is not None
        models: dict[str, Any] = {}
        for spec in specs:
            key, sep, var = spec.partition("=")
            if not sep:
                var = key
            if var not in self.shell.user_ns:
                raise HubserveMagicError(f"--model {spec}: no variable {var!r} in this notebook")
            models[key] = self.shell.user_ns[var]
        return models

    def _cell_functions(self, tree: ast.Module) -> list[Callable[..., Any]]:
        """The API functions the cell defined (see ``%%hubserve_service?``)."""
        from model_runtime.service import api_spec_of

        assert self.shell is not None
        names = list(
            dict.fromkeys(
                node.name
                for node in tree.body
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
        )
        functions = [
            (n, self.shell.user_ns[n]) for n in names if callable(self.shell.user_ns.get(n))
        ]
        marked = [fn for _, fn in functions if api_spec_of(fn) is not None]
        apis = marked or [fn for n, fn in functions if not n.startswith("_")]
        if not apis:
            raise HubserveMagicError(
                "the cell defines no API function: define one at top level, e.g."
                " 'def predict(x: np.ndarray) -> np.ndarray: ...'"
            )
        return apis

    def _deploy_or_roll(
        self, client: Client, version: ModelVersion, args: argparse.Namespace
    ) -> Deployment:
        from .client import NotFound

        try:
            existing: Deployment | None = client.deployment(version.name)
        except NotFound:
            existing = None
        if existing is None:
            dep = client.deploy(
                version,
                replicas=1 if args.replicas is None else args.replicas,
                access={"users": [], "groups": [], "public": True} if args.public else None,
            )
            print(f"deploying {dep.key}: version {dep.version}, endpoint {dep.url}")
        else:
            dep = client.roll(existing.key, version.version)
            if args.replicas is not None and args.replicas != dep.replicas:
                dep = client.scale(dep.key, args.replicas)
            print(f"rolling {dep.key} to version {dep.version}, endpoint {dep.url}")
        if args.wait:
            dep = _wait(client, dep, args.timeout)
            print(f"{dep.key} is ready: {dep.status.ready}/{dep.status.desired} replicas")
        return dep


HubserveMagics.hubserve.__doc__ = _overview()
HubserveMagics.hubserve_service.__doc__ = SERVICE_PARSER.format_help()


# -- helpers ------------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    from model_runtime.naming import check_model_name

    return check_model_name(name)


def _labels(values: Sequence[str]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def _access(args: argparse.Namespace) -> dict[str, Any] | None:
    if not (args.public or args.users or args.groups):
        return None
    return {"users": args.users, "groups": args.groups, "public": args.public}


def _batching(values: Sequence[str]) -> dict[str, dict[str, Any]] | None:
    batching: dict[str, dict[str, Any]] = {}
    for item in values:
        parts = item.split(":")
        try:
            if len(parts) not in (2, 3) or not parts[0]:
                raise ValueError
            settings: dict[str, Any] = {"max_batch_size": int(parts[1])}
            if len(parts) == 3:
                settings["max_latency_ms"] = float(parts[2])
        except ValueError:
            raise UsageError(f"--batch {item!r} is not API:SIZE[:MS], e.g. predict:64:5") from None
        batching[parts[0]] = settings
    return batching or None


def _wait(client: Client, dep: Deployment, timeout: float) -> Deployment:
    """Wait for ``dep`` to be ready, with a bar of ready replicas (a widget in notebooks)."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=max(dep.status.desired, 1),
        desc=f"{dep.key} {dep.status.phase}",
        unit="replica",
        leave=False,
    )

    def progress(current: Deployment) -> None:
        bar.total = max(current.status.desired, 1)
        bar.n = min(current.status.ready, bar.total)
        bar.set_description(f"{current.key} {current.status.phase}", refresh=False)
        bar.refresh()

    try:
        return client.wait_ready(dep.key, timeout=timeout, progress=progress)
    except KeyboardInterrupt:  # only the waiting stops: say so, rather than a traceback
        raise HubserveMagicError(
            f"stopped waiting; {dep.key} carries on (%hubserve status {dep.key})"
        ) from None
    finally:
        bar.close()


@contextlib.contextmanager
def _upload_bar(label: str) -> Iterator[Callable[[str, int, int], None]]:
    """A byte bar for pushing an archive built here, named after the service, not the file.

    (The client names its own bars after the source it is given: a cache path here.)
    """
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"upload {label}", unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    def progress(stage: str, done: int, total: int) -> None:
        if stage != "upload":
            return
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def _pushed_line(version: ModelVersion) -> str:
    tags = ", ".join(version.tags)
    return (
        f"pushed {version.ref} ({human_size(version.archive_size)}"
        f"{'; tags: ' + tags if tags else ''})"
    )


def _service_line(svc: Service, var: str) -> str:
    apis = ", ".join(
        f"{s.name}({s.input.kind} -> {s.output.kind}{', batchable' if s.batchable else ''})"
        for s in svc.apis.values()
    )
    models = ", ".join(svc.models) or "none given"
    return f"service {svc.name!r} in {var}: APIs {apis}; models: {models}"


# -- extension entry points ---------------------------------------------------------------------


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register the magics and the rich display of deployments and versions."""
    magics = HubserveMagics(ipython)
    ipython.register_magics(magics)
    magics.registered_formatters = register_formatters(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Remove what :func:`load_ipython_extension` added."""
    manager = ipython.magics_manager
    magics = manager.registry.pop("HubserveMagics", None)
    manager.magics["line"].pop("hubserve", None)
    manager.magics["cell"].pop("hubserve_service", None)
    if isinstance(magics, HubserveMagics):
        unregister_formatters(ipython, magics.registered_formatters)
