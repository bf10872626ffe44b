"""The JupyterHub configuration of ``make up``: ``dev/up.py`` runs ``jupyterhub -f`` on it.

``dev/up.py`` decides the ports and paths and passes them in ``HUBSERVE_UP_*`` variables; this
file turns them into a complete development hub:

* **configurable-http-proxy** from npm (installed by ``make up`` into ``.hubserve/node``) as
  the public entry point, bound to 127.0.0.1;
* **a dev authenticator**: JupyterHub's built-in ``shared-password`` authenticator. The admin
  user logs in with the admin password, anyone else with the user password (any user name
  works); both are generated once by ``dev/up.py`` into ``<state>/hub/passwords.json``.
  Real deployments use their own authenticator (OAuthenticator, LDAP, ...);
* **hubserve** as a managed service, registered by the one call an admin adds to their own
  ``jupyterhub_config.py`` (:func:`hub_service.configure_jupyterhub`), with the S3 server
  that ``dev/up.py`` started as the model store and the ``local`` deploy backend;
* **a ``make-up`` service** without a server, only a token (generated once by ``dev/up.py``
  into ``<state>/hub/make-up.token``), whose one permission is to issue tokens for the admin
  user (``tokens!user=<admin>``). ``dev/up.py`` uses it to get a short-lived admin token,
  limited to using hubserve, to preload the astro example: hubserve only accepts *user*
  tokens (it asks ``GET /hub/api/user`` and refuses a service), and a service token that
  could itself call hubserve, or issue tokens for anybody, would be more power than needed;
* **single-user servers** with ``SimpleLocalProcessSpawner`` (processes of the current OS
  user, one home directory per hub user under ``<state>/users/``; no isolation, so for
  development only) running JupyterLab from this virtual environment;
* **sandboxed models** (when ``make up`` runs as root, as in a container): replicas run in
  the service's sandboxes as the ``hubserve-models`` user and see none of ``<state>`` (the
  hub's secrets, the S3 server's data, the service's files, others' homes) except the homes
  of the users who may call them. Batch jobs are confined to the caller's home
  (``HUBSERVE_JOB_LOCATIONS`` = ``<state>/users/{user}``), which is shared with that user's
  group (``dev/up.py``'s ``share_home``, at each spawn) and where notebooks make folders
  with a umask of 002, so the models can write results there.

Every process started from here carries ``HUBSERVE_UP_STATE`` in its environment, so that
``dev/up.py`` can find and stop anything left behind.
"""

import json
import os
import sys
from pathlib import Path

import hub_service
from model_runtime.store import StoreSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import up  # dev/up.py, beside this file: the models' user and their homes

c = get_config()  # type: ignore[name-defined]  # noqa: F821 - provided by JupyterHub

env = os.environ
if "HUBSERVE_UP_STATE" not in env:
    sys.exit(
        "dev/jupyterhub_config.py is for `make up`: dev/up.py passes its HUBSERVE_UP_* settings"
    )
state = Path(env["HUBSERVE_UP_STATE"])
hub_dir = state / "hub"
admin = env["HUBSERVE_UP_ADMIN"]
passwords = json.loads((hub_dir / "passwords.json").read_text())
venv_bin = Path(sys.executable).parent

# -- the hub and its proxy -------------------------------------------------------------------
c.JupyterHub.bind_url = f"http://127.0.0.1:{env['HUBSERVE_UP_PORT']}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{env['HUBSERVE_UP_HUB_PORT']}"
c.ConfigurableHTTPProxy.command = [env["HUBSERVE_UP_CHP"]]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env['HUBSERVE_UP_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.pid_file = str(hub_dir / "jupyterhub-proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{hub_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(hub_dir / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops the single-user servers
c.JupyterHub.cleanup_proxy = True
c.JupyterHub.template_vars = {
    "announcement_login": (
        f"Development hub (make up): log in as <b>{admin}</b> (admin) with the admin password, "
        "or with any other name and the user password; both are printed by make up."
    )
}

# -- dev authenticator -----------------------------------------------------------------------
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = passwords["user"]
c.SharedPasswordAuthenticator.admin_password = passwords["admin"]
c.Authenticator.admin_users = {admin}
c.Authenticator.allow_all = True

# -- single-user servers: JupyterLab, as local processes -------------------------------------
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = str(state / "users" / "{username}")
# A umask of 002: folders a notebook makes in its (shared) home are writable by the models.
c.Spawner.cmd = ["/bin/sh", "-c", 'umask 002 && exec "$0" "$@"', sys.executable]
c.Spawner.cmd += ["-m", "jupyterhub.singleuser"]
c.Spawner.pre_spawn_hook = lambda spawner: up.share_home(Path(spawner.home_dir))
c.Spawner.default_url = "/lab"
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
c.Spawner.environment = {
    # Terminals and kernels use this environment (python, hubserve CLI).
    "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', os.defpath)}",
    "VIRTUAL_ENV": str(venv_bin.parent),
    "HUBSERVE_UP_STATE": str(state),
    # An editable install (`pip install -e`) does not install data files, so the shipped
    # enable-config of the hubserve server extension is read from the checkout.
    "JUPYTER_CONFIG_PATH": str(Path(__file__).resolve().parent.parent / "jupyter-config"),
    # Where the astro notebook (copied into the admin's home by dev/up.py) finds its code.
    "ASTRO_EXAMPLE_DIR": str(Path(__file__).resolve().parent.parent / "examples" / "astro"),
}

# -- make up's own access: issuing admin tokens to preload the astro example -----------------
c.JupyterHub.services = [
    {"name": "make-up", "api_token": (hub_dir / "make-up.token").read_text().strip()}
]
c.JupyterHub.load_roles = [
    {
        "name": "make-up",
        "description": "dev/up.py: issue tokens for the admin user (to preload examples)",
        "scopes": [f"tokens!user={admin}"],
        "services": ["make-up"],
    }
]

# -- hubserve --------------------------------------------------------------------------------
hub_service.configure_jupyterhub(
    c,
    port=int(env["HUBSERVE_UP_SERVICE_PORT"]),
    store=StoreSettings(
        store=f"s3://{env['HUBSERVE_UP_BUCKET']}",
        s3_endpoint=env["HUBSERVE_UP_S3_ENDPOINT"],
        s3_access_key=env["HUBSERVE_UP_S3_ACCESS_KEY"],
        s3_secret_key=env["HUBSERVE_UP_S3_SECRET_KEY"],
    ),
    backend="local",
    extra_env={
        "HUBSERVE_DATA_DIR": str(state / "service"),
        "HUBSERVE_UP_STATE": str(state),
        # {user}: the calling hub user, whose home is users/<name> (home_dir_template above).
        "HUBSERVE_JOB_LOCATIONS": json.dumps([str(state / "users" / "{user}")]),
        # The data dir is hidden from models anyway; the rest of the state holds the hub's
        # database and secrets, the S3 server's data and everybody's home.
        "HUBSERVE_LOCAL_HIDDEN_PATHS": json.dumps([str(state)]),
        "HUBSERVE_LOCAL_ISOLATION": "sandbox" if up.sandboxed() else "none",
    },
)
