"""An sshd on a compute node of the multi-node test cluster, and ``ssh NODE`` from the login side.

The sshd is Debian's, started in the node's network, hostname and hosts file
(as the node's slurmd), listening on the node's address on the cluster's
bridge only, with a configuration, host key and user key made by the test in
a temporary folder.  The test process (the login side) reaches it with plain
``ssh node2``: an ``ssh`` first on PATH passes the test's client
configuration, as a user's ~/.ssh/config would (the machine's own is never
touched), to the Jupyter server and to Open MPI's ``mpirun``, which start
``ssh`` by name.

The test's private Jupyter and IPython folders are forwarded (``SendEnv`` and
``AcceptEnv``) only so that a kernel on the node writes nothing into root's
home: what the proxy itself needs travels on its command line.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from .helpers import needs, wait_until
from .slurm import MultiNodeCluster, stop_processes

#: what the test process forwards to the node, for its private folders (see the module docstring)
FORWARDED = "JUPYTER_* IPYTHONDIR"


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)


@contextmanager
def sshd_on(cluster: MultiNodeCluster, folder: Path, nodes: tuple[str, ...] = ("node2",)) -> Iterator[Path]:
    """An sshd on each of ``nodes``; yields the folder of ``ssh``, the wrapper to put first on PATH."""
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen"):
        needs(shutil.which(tool), f"{tool} is needed (Debian: openssh-server openssh-client)")
    folder.mkdir()
    _keygen(folder / "host_key")
    _keygen(folder / "user_key")
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    host_key = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text("".join(f"{node} {host_key[0]} {host_key[1]}\n" for node in nodes))
    (folder / "ssh_config").write_text(
        "".join(f"Host {node}\n  HostName {cluster.address(node)}\n  HostKeyAlias {node}\n" for node in nodes)
        + f"Host *\n  User {pwd.getpwuid(os.getuid()).pw_name}\n  IdentityFile {folder / 'user_key'}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {folder / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
        f"  BatchMode yes\n  LogLevel ERROR\n  SendEnv {FORWARDED}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    names = []
    try:
        for node in nodes:
            config = folder / f"sshd_config-{node}"
            config.write_text(
                f"ListenAddress {cluster.address(node)}\nHostKey {folder / 'host_key'}\n"
                f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile none\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
                f"AcceptEnv {FORWARDED}\nLogLevel ERROR\n"
            )
            names.append(f"sshd-{node}")
            cluster._spawn_as(node, names[-1], ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)])
        bin_folder = folder / "bin"
        bin_folder.mkdir()
        wrapper = bin_folder / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {folder / "ssh_config"} "$@"\n')
        wrapper.chmod(0o755)
        for node in nodes:
            wait_until(lambda node=node: _answers(wrapper, node), f"sshd on {node} to answer", 30, interval=0.1)
        yield bin_folder
    finally:
        stop_processes([cluster.processes.pop(name) for name in names if name in cluster.processes])
        for name in names:
            cluster.spawned.pop(name, None)


def _answers(ssh: Path, node: str) -> bool:
    done = subprocess.run([str(ssh), node, "hostname"], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() == node


def on_node(cluster: MultiNodeCluster, node: str) -> list[psutil.Process]:
    """The processes running on ``node`` besides the cluster's daemons there (slurmd, sshd)."""
    daemons = {p.pid for name, p in cluster.processes.items() if name.endswith(f"-{node}")}
    target = os.stat(f"/proc/{cluster.processes[f'slurmd-{node}'].pid}/ns/net").st_ino
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid not in daemons and os.stat(f"/proc/{proc.pid}/ns/net").st_ino == target:
                found.append(proc)
        except OSError:
            pass
    return found


def nothing_left_on(cluster: MultiNodeCluster, node: str, timeout: float) -> float:
    """Seconds until nothing but the daemons runs on ``node``; AssertionError naming what still does."""
    start = time.monotonic()
    try:
        wait_until(lambda: not on_node(cluster, node), f"nothing left on {node}", timeout, interval=0.1)
    except AssertionError:
        left = [" ".join(p.cmdline()[:4]) for p in on_node(cluster, node) if p.is_running()]
        raise AssertionError(f"still running on {node} after {timeout} s: {left}") from None
    return time.monotonic() - start


@pytest.fixture
def ssh_node2(multinode, tmp_path, monkeypatch):
    """The multi-node cluster with an sshd on node2; ``ssh node2`` works from the test process and its children."""
    with sshd_on(multinode, tmp_path / "ssh") as bin_folder:
        monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
        yield multinode
        nothing_left_on(multinode, "node2", 15)
