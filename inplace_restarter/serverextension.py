"""The Jupyter server extension that makes the Restart button restart proxied kernels in place.

A kernel.json naming a provisioner that the server's environment lacks makes
jupyter_client drop that spec altogether, so install does not name one there.
Instead this extension, enabled by the ``jpserver_extensions`` entry that
pip installs in ``etc/jupyter/jupyter_server_config.d``, makes the
inplace_restarter provisioner the server's default.  It serves every kernel
without a provisioner of its own, and is a ``LocalProvisioner`` for those
that are not proxied.  A server without the package starts and restarts the
same specs the ordinary way.

A default chosen by the user (``KernelProvisionerFactory.default_provisioner_name``
in the server's config, or ``JUPYTER_DEFAULT_PROVISIONER_NAME``) is kept, and
``jupyter server extension disable inplace_restarter`` turns the extension off.
"""

from __future__ import annotations

import os

from jupyter_client.provisioning import KernelProvisionerFactory

from .kernelspec import original_argv
from .provisioner import PROVISIONER_NAME, is_proxied

EXTENSION_NAME = "inplace_restarter"


def _load_jupyter_server_extension(serverapp) -> None:
    factory = KernelProvisionerFactory.instance(parent=serverapp)
    chosen = _users_default(serverapp.config)
    if chosen:
        serverapp.log.info(
            "inplace_restarter: keeping the default kernel provisioner %r chosen in %s",
            factory.default_provisioner_name,
            chosen,
        )
        return
    factory.default_provisioner_name = PROVISIONER_NAME
    serverapp.log.info("inplace_restarter: the Restart button restarts proxied kernels in place")


def _users_default(config) -> str | None:
    """Where the user chose the default provisioner, if they did."""
    if "default_provisioner_name" in config.get("KernelProvisionerFactory", {}):
        return "the server's config"
    if os.environ.get(KernelProvisionerFactory.default_provisioner_name_env):
        return KernelProvisionerFactory.default_provisioner_name_env
    return None


def restart_button(spec: dict) -> tuple[bool, str]:
    """Whether a Jupyter server of this environment restarts ``spec`` in place, and why (not).

    As seen from here: the server's own environment may differ.
    """
    if not is_proxied(spec.get("metadata")):
        return False, "the 0.1.0 form: install migrates it" if original_argv(spec) else "the proxy is not installed"
    named = ((spec.get("metadata") or {}).get("kernel_provisioner") or {}).get("provisioner_name")
    if named:
        return named == PROVISIONER_NAME, f"the spec names the provisioner {named!r}"
    env = os.environ.get(KernelProvisionerFactory.default_provisioner_name_env)
    if env:
        return env == PROVISIONER_NAME, f"{KernelProvisionerFactory.default_provisioner_name_env}={env}"
    try:
        from jupyter_core.paths import jupyter_config_path
        from jupyter_server.extension.config import ExtensionConfigManager
    except ImportError:
        return False, "jupyter_server is not installed here"
    if not ExtensionConfigManager(read_config_path=jupyter_config_path()).enabled(EXTENSION_NAME):
        return False, f"the {EXTENSION_NAME} server extension is disabled"
    return True, f"the {EXTENSION_NAME} server extension is enabled"
