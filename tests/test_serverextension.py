"""``list`` says for each proxied spec what Jupyter's Restart button does with it, and why.

It reads the Jupyter config of the environment it runs in, as the server
extension does: enabled as pip installs it, turned off by the user with
``jupyter server extension disable`` or by another default provisioner.
"""

from __future__ import annotations

import json
import shutil

import pytest

from .e2e.conftest import SERVER_EXTENSION_CONFIG
from .spec_helpers import LEGACY_SPEC, PYTHON_SPEC, run_cli, write_specs

# The command reads the Jupyter server's own config, through jupyter_server.
pytestmark = pytest.mark.extras


@pytest.fixture
def spec_dirs(jupyter_dirs):
    write_specs(jupyter_dirs["JUPYTER_PATH"] / "kernels", {"py": PYTHON_SPEC, "old": LEGACY_SPEC})
    assert run_cli("install", "py").returncode == 0


@pytest.fixture
def enabled(jupyter_dirs, tmp_path, monkeypatch):
    """The jpserver_extensions file pip installs, in a config folder standing in for the environment's."""
    (tmp_path / "etc" / "jupyter_server_config.d").mkdir(parents=True)
    shutil.copy(SERVER_EXTENSION_CONFIG, tmp_path / "etc" / "jupyter_server_config.d")
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(tmp_path / "etc"))


def restart_button_line(name: str) -> str:
    done = run_cli("list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if f"'{name}'" in line)
    return lines[index + 1].strip()


def test_with_the_extension_enabled_the_button_restarts_a_proxied_spec_in_place(spec_dirs, enabled):
    line = "Jupyter's Restart button restarts in place (the inplace_restarter server extension is enabled)"
    assert restart_button_line("py") == line
    assert run_cli("list", "--json").stdout.count('"restart_button_in_place": true') == 1


def test_a_spec_in_the_0_1_0_form_is_restarted_whole_until_migrated(spec_dirs, enabled):
    assert restart_button_line("old").endswith("restarts the whole kernel (the 0.1.0 form: install migrates it)")


def test_jupyter_server_extension_disable_turns_it_off(spec_dirs, enabled, tmp_path):
    """What ``jupyter server extension disable --sys-prefix`` writes over the file pip installed.

    (In a venv the environment's config folder comes before the user's, so
    --user cannot override it; JUPYTER_DEFAULT_PROVISIONER_NAME can.)
    """
    off = {"ServerApp": {"jpserver_extensions": {"inplace_restarter": False}}}
    (tmp_path / "etc" / "jupyter_server_config.d" / "inplace_restarter.json").write_text(json.dumps(off))
    assert restart_button_line("py").endswith(
        "restarts the whole kernel (the inplace_restarter server extension is disabled)"
    )


def test_another_default_provisioner_wins(spec_dirs, enabled, monkeypatch):
    monkeypatch.setenv("JUPYTER_DEFAULT_PROVISIONER_NAME", "local-provisioner")
    assert restart_button_line("py").endswith(
        "restarts the whole kernel (JUPYTER_DEFAULT_PROVISIONER_NAME=local-provisioner)"
    )
