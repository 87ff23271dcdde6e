"""Where the proxy is reached: the signed report line, and the address a node binds on toward the server.

The address choice asks the kernel's routing table through real sockets.  The
machine's own table routes everything (a default route), so the cases with
another host or no route run in a fresh network namespace of their own
(``unshare --net``, gone with its process): loopback and one veth at
10.77.0.2/24, the "node", from which 10.77.0.1 is another host on the same
network and 10.9.9.9 has no route.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from inplace_restarter import reach

from .helpers import PYTHON, needs

KEY = b"5f0bf3f8-secret"
INFO = {
    "ip": "10.77.0.2",
    "transport": "tcp",
    "shell_port": 40001,
    "iopub_port": 40002,
    "stdin_port": 40003,
    "control_port": 40004,
    "hb_port": 40005,
    "hostname": "node2",
    "pid": 4242,
}
NODE = "10.77.0.2"
PEER = "10.77.0.1"
NOWHERE = "10.9.9.9"
#: a second address of the node's, on the same veth
SECOND = "10.77.0.3"


def test_a_report_line_carries_the_address_ports_host_and_pid_signed_with_the_session_key():
    line = reach.report_line(INFO, KEY, "hmac-sha256")
    assert line.startswith(reach.PREFIX + " ") and "\n" not in line
    assert reach.parse_report(line, KEY, "hmac-sha256") == INFO
    assert reach.parse_report((line + "\n").encode(), KEY, "hmac-sha256") == INFO, "as read off a pipe"


def test_a_report_that_was_not_signed_with_the_key_is_refused():
    line = reach.report_line(INFO, KEY, "hmac-sha256")
    forged = line.replace('"ip":"10.77.0.2"', '"ip":"10.66.6.6"')
    assert forged != line
    assert reach.parse_report(forged, KEY, "hmac-sha256") is None
    assert reach.parse_report(line, b"another key", "hmac-sha256") is None
    assert reach.parse_report(line, KEY, "hmac-sha512") is None
    assert reach.parse_report(reach.report_line(INFO, KEY, "hmac-sha512"), KEY, "hmac-sha512") == INFO


@pytest.mark.parametrize(
    "line",
    [
        "",
        "srun: job 12 queued and waiting for resources",
        f"{reach.PREFIX} not-json 00",
        f"{reach.PREFIX} {{}}",
        "[IPKernelApp] WARNING | Kernel is running over TCP without encryption.",
    ],
)
def test_other_lines_are_no_report(line):
    assert reach.parse_report(line, KEY, "hmac-sha256") is None


def test_the_request_is_the_option_and_carries_the_servers_addresses():
    assert reach.requested(None) is None
    assert reach.requested("10.77.0.1,192.0.2.2") == ["10.77.0.1", "192.0.2.2"]
    assert reach.requested("") == [], "a server with loopback only still asks"


def test_the_server_offers_a_configured_address_alone_else_its_public_ipv4_ones():
    assert reach.server_ips("10.77.0.1") == ["10.77.0.1"]
    assert reach.server_ips("10.77.0.1, 192.0.2.7") == ["10.77.0.1", "192.0.2.7"]
    offered = reach.server_ips()
    assert all(not ip.startswith("127.") and ":" not in ip for ip in offered)


def test_on_the_servers_own_host_the_proxy_binds_what_the_connection_file_says():
    assert reach.source_ip("127.0.0.1") == "127.0.0.1"
    assert reach.choose_bind_ip(["127.0.0.1"]) is None
    assert reach.choose_bind_ip([]) is None, "a server with no address but loopback can only be here"


def in_a_network_namespace(code: str, *args: str) -> dict:
    """Run ``code`` (which prints JSON) in a new network namespace with lo and a veth at 10.77.0.2 and .3/24."""
    needs(os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"), "root, unshare and ip")
    setup = (
        "ip link set lo up && ip link add v0 type veth peer name v1 && "
        f'ip addr add {NODE}/24 dev v0 && ip addr add {SECOND}/24 dev v0 && ip link set v0 up && ip link set v1 up && exec "$@"'
    )
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", setup, "sh", PYTHON, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


#: run in the namespace with the node's, the peer's and an unrouted address as arguments
CHOICES = """
import json, sys
from inplace_restarter import reach
node, peer, nowhere = sys.argv[1:]

def choice(*candidates):
    try:
        return reach.choose_bind_ip(list(candidates))
    except reach.ReachError as e:
        return "error: " + str(e)

print(json.dumps({
    "peer": choice(peer),
    "unrouted first": choice(nowhere, peer),
    "own address": choice(node),
    "no route": choice(nowhere),
    "source to nowhere": reach.source_ip(nowhere),
}))
"""


def test_on_another_host_the_proxy_binds_its_own_address_toward_the_server_and_says_so_when_there_is_none():
    choices = in_a_network_namespace(CHOICES, NODE, PEER, NOWHERE)
    assert choices["peer"] == NODE, "the node's address on the route to the server's host"
    assert choices["unrouted first"] == NODE, "a candidate without a route is passed over"
    assert choices["own address"] is None, "a route to one's own address is local: the same host"
    assert choices["source to nowhere"] is None
    assert choices["no route"].startswith("error: no route from ")
    assert "ProxyKernelApp.bind_ip" in choices["no route"] and "InPlaceProvisioner.server_ip" in choices["no route"]


#: a rule as mpirun draws them around its explanations
RULE = "-" * 74


@pytest.mark.parametrize(
    ("stderr", "last"),
    [
        (["the node says no", "srun: error: node2: task 0: Exited with exit code 1"], "the node says no"),
        (["srun: error: Unable to allocate resources: Invalid node name specified"], "srun: error: Unable to"),
        (["ssh: Could not resolve hostname node9", RULE, "ORTE could not start its daemons.", "", RULE], "ssh: Could"),
        ([RULE, "ORTE could not start its daemons.", "Check PATH.", RULE, RULE, "", "Exit code: 1", RULE], "Exit code"),
    ],
)
def test_the_last_words_are_the_kernels_or_ssh_s_before_a_launchers_own(stderr, last):
    """srun's lines and mpirun's explanations between rules say less than the line before them."""
    code = f"import sys; sys.stderr.write({chr(10).join(stderr) + chr(10)!r})"
    process = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watch = reach.LaunchWatch(process, KEY, "hmac-sha256", lambda: None)
    process.wait(30)
    watch.join(30)
    assert watch.ended and watch.last_words.startswith(last)
