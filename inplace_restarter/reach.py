"""Where the proxy is reached: the address it binds on a compute node, and the line that tells the server.

On a cluster the Jupyter server runs on a login node and a launcher (srun)
starts the proxy on a compute node.  The connection file the server wrote
names the server's own loopback and ports it picked on its own host: neither
means anything on the node.  So the two sides agree as follows:

- The provisioner puts the server host's addresses on the proxy's command
  line, :data:`REPORT_OPTION` first after the proxy's module, where every
  launcher carries it (srun, ssh, mpirun, a container runner, a wrapper that
  passes its arguments on); the option's presence is the request for a report.
- The proxy, on the node, finds its own address toward the server host
  (:func:`choose_bind_ip`): on that address it binds the client's sockets,
  with ports of its own, unless the route to the server is local (the same
  host), where it binds what the connection file says, as it always did.
- The proxy prints one line, :func:`report_line`, to its stdout; the launcher
  carries its stdout back to the server (srun over its own authenticated
  I/O).  The line is signed with the session's key and scheme, so that
  nobody else on the node can send the server elsewhere.
- The provisioner reads the launcher's stdout and stderr (:class:`LaunchWatch`),
  passing every other line on to the server's own, and takes the first line
  that :func:`parse_report` verifies as the kernel's connection info.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
import sys
import threading
import time
import typing as t
from contextlib import suppress

#: given by the provisioner to the proxy: the server host's addresses, comma separated (none: loopback only)
REPORT_OPTION = "--report-to"
#: the first word of the line that tells the server where the proxy is
PREFIX = "inplace_restarter-connect"
#: what the report carries, besides host and pid
PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
FIELDS = ("ip", "transport", *PORTS)
#: srun's lines while its job waits in the queue and once it runs
QUEUED = re.compile(r"srun: job (\d+) queued and waiting for resources")
#: the line that opens and closes each of Open MPI's explanations (mpirun's help messages)
RULE = re.compile(r"-{20,}")
ALLOCATED = re.compile(r"srun: job (\d+) has been allocated resources")
#: a launcher's own lines on stderr: srun's, and those of MPICH's Hydra (``[mpiexec@login] ...``), which
#: prints a trail of its internals when a launch fails, after ssh has said why
LAUNCHER_OWN = re.compile(r"srun: |\[mpiexec@[^\]]*\] ")


class ReachError(Exception):
    """The proxy cannot tell which address the server reaches it on; the message says what to set."""


def _signature(payload: bytes, key: bytes, scheme: str) -> str:
    """The session's own signature (``hmac-sha256`` and the like) of ``payload``."""
    algorithm, _, digest = scheme.partition("-")
    if algorithm != "hmac" or not digest:
        raise ValueError(f"unknown signature scheme {scheme!r}")
    return hmac.new(key, payload, digest).hexdigest()


def report_line(info: dict, key: bytes, scheme: str) -> str:
    """The signed line that tells the server the proxy's address and ports (no newline)."""
    payload = json.dumps({name: info[name] for name in (*FIELDS, "hostname", "pid")}, separators=(",", ":"))
    return f"{PREFIX} {payload} {_signature(payload.encode(), key, scheme)}"


def parse_report(line: str | bytes, key: bytes, scheme: str) -> dict | None:
    """The info a report line carries, or None if ``line`` is no report or is not signed with ``key``."""
    if isinstance(line, bytes):
        line = line.decode(errors="replace")
    words = line.strip().split(" ")
    if len(words) != 3 or words[0] != PREFIX:
        return None
    payload, signature = words[1], words[2]
    try:
        if not hmac.compare_digest(signature, _signature(payload.encode(), key, scheme)):
            return None
        info = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not isinstance(info, dict) or not all(name in info for name in FIELDS):
        return None
    return info


def server_ips(configured: str = "") -> list[str]:
    """The addresses of this (the server's) host to offer the proxy, in order of preference.

    ``configured`` (comma separated) alone if given; else every public IPv4
    address of the host, as jupyter_client lists them (it reads them once
    per process: an address added later must be configured).
    """
    if configured:
        return [ip.strip() for ip in configured.split(",") if ip.strip()]
    from jupyter_client.localinterfaces import public_ips

    return [ip for ip in public_ips() if _is_ipv4(ip)]


def _is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def requested(value: str | None) -> list[str] | None:
    """The server's addresses if the provisioner asked for a report (``value`` of REPORT_OPTION), else None."""
    if value is None:
        return None
    return [ip for ip in value.split(",") if ip]


def source_ip(destination: str) -> str | None:
    """This host's address on the route to ``destination``; None if there is no route.

    A connected UDP socket asks the kernel for the route: no packet is sent.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((destination, 9))
        except OSError:
            return None
        return probe.getsockname()[0]


def choose_bind_ip(candidates: list[str]) -> str | None:
    """The address to bind on toward the server, or None when the server is on this host.

    The first candidate with a route decides: a route whose source is the
    candidate itself or a loopback address is local, so the server is here.
    With no candidates (the server has only loopback) the server can only be
    here.  No route to any candidate raises ReachError.
    """
    if not candidates:
        return None
    for candidate in candidates:
        source = source_ip(candidate)
        if source is None:
            continue
        if source == candidate or ipaddress.ip_address(source).is_loopback:
            return None
        return source
    raise ReachError(
        f"no route from {socket.gethostname()} to the Jupyter server's host ({', '.join(candidates)}): "
        "set ProxyKernelApp.bind_ip to this node's address that the server reaches, "
        "or InPlaceProvisioner.server_ip to the server's address that this node reaches"
    )


class LaunchWatch:
    """Reads a launcher's stdout and stderr in threads, passes them on, and catches the report and srun's news.

    Every line goes on unchanged to the server's own stdout or stderr (so the
    kernel's output still reaches the server's log, and the pipes never fill
    and block the kernel), except the report itself, which is kept.  The
    owner is woken by ``notify`` (called from the reader threads) whenever
    something it waits for changed: the report, a job id, the end of a stream.
    """

    def __init__(self, process, key: bytes, scheme: str, notify: t.Callable[[], None]):
        self.key, self.scheme, self.notify = key, scheme, notify
        self.report: dict | None = None
        self.job: str | None = None
        self.queued = False
        #: when the launcher was started, and when its job (if it waited in the queue) got its nodes: monotonic
        self.launched, self.allocated = time.monotonic(), 0.0
        self._last_other = self._last_own = self._last_explained = ""
        #: inside one of Open MPI's explanations, and whether its first line was taken
        self._explaining = self._explained = False
        self.closed: set[str] = set()
        self._threads = [
            threading.Thread(target=self._read, args=(process.stdout, sys.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(process.stderr, sys.stderr, "stderr"), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def last_words(self) -> str:
        """The last line on stderr: the kernel's, proxy's or ssh's, else the launcher's own.

        The launcher's own: srun's ``srun: error: ...``, Hydra's last line, or
        the first line of Open MPI's last explanation (a block between rules
        that follows the line that says what happened, and says it less
        precisely).
        """
        return self._last_other or self._last_explained or self._last_own

    @property
    def ended(self) -> bool:
        """Both streams closed: the launcher (and whatever held its pipes) is gone."""
        return len(self.closed) == 2

    def _read(self, stream, out, name: str) -> None:
        sink = getattr(out, "buffer", None)
        try:
            for line in iter(stream.readline, b""):
                if self._take(line, name):
                    continue
                with suppress(OSError, ValueError):
                    if sink is not None:
                        sink.write(line)
                    else:
                        out.write(line.decode(errors="replace"))
                    out.flush()
        except (OSError, ValueError):
            # The owner closed the pipe (LocalProvisioner.wait does, once the launcher is reaped).
            pass
        with suppress(OSError, ValueError):
            stream.close()
        self.closed.add(name)
        self.notify()

    def _take(self, line: bytes, name: str) -> bool:
        """Note what the owner waits for; True for the report, which is not passed on."""
        if name == "stdout":
            if self.report is None and line.startswith(PREFIX.encode()):
                info = parse_report(line, self.key, self.scheme)
                if info is not None:
                    self.report = info
                    self.notify()
                    return True
            return False
        text = line.decode(errors="replace").strip()
        if RULE.fullmatch(text):
            self._explaining, self._explained = not self._explaining, False
        elif self._explaining:
            if text and not self._explained:
                self._last_explained, self._explained = text, True
        elif LAUNCHER_OWN.match(text):
            self._last_own = text
        elif text:
            self._last_other = text
        match = QUEUED.search(text) or ALLOCATED.search(text)
        if match:
            self.job = match.group(1)
            self.queued = match.re is QUEUED
            if not self.queued:
                self.allocated = time.monotonic()
            self.notify()
        return False

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)
