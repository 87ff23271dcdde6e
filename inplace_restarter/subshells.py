"""The client's subshells, under the ids it holds, through restarts of the kernel behind them.

A subshell console stays open across ``%restart`` (JupyterLab forgets its
subshells only on a ``restarting`` status, which the proxy never sends), so
each id the client holds is mapped to a subshell of the current inner kernel:
the same id until a restart, then one created again in the new kernel.
"""

from __future__ import annotations

import asyncio
import logging
import typing as t

if t.TYPE_CHECKING:
    from .inner import InnerKernel
    from .relay import Relay

#: kernel_info's supported_features entry of a kernel with subshells
SUBSHELLS = "kernel subshells"
CONTROL_TYPES = ("create_subshell_request", "delete_subshell_request", "list_subshell_request")


def has_subshells(kernel_info: dict) -> bool:
    return SUBSHELLS in kernel_info.get("supported_features", ())


class Subshells:
    """The client's subshell ids -> the current inner kernel's."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self._ids: dict[str, str] = {}

    def inner_id(self, client_id: t.Any) -> t.Any:
        """The inner kernel's id of the client's subshell ``client_id`` (anything else as it is)."""
        return self._ids.get(client_id, client_id) if isinstance(client_id, str) else client_id

    def request_content(self, parent: dict) -> dict | None:
        """The content to forward a create, delete or list request with: None to forward it as it is."""
        content = parent["content"]
        client_id = content.get("subshell_id") if isinstance(content, dict) else None
        if parent["header"]["msg_type"] == "delete_subshell_request" and client_id in self._ids:
            return {**content, "subshell_id": self._ids[client_id]}
        return None

    def answered(self, parent: dict, reply: dict) -> None:
        """Take note of the inner kernel's reply to a create, delete or list request; the client's ids in it."""
        answer = reply["content"]
        if answer.get("status") != "ok":
            return
        msg_type = parent["header"]["msg_type"]
        if msg_type == "create_subshell_request" and isinstance(answer.get("subshell_id"), str):
            self._ids[answer["subshell_id"]] = answer["subshell_id"]
        elif msg_type == "delete_subshell_request":
            content = parent["content"]
            self._ids.pop(content.get("subshell_id") if isinstance(content, dict) else None, None)
        elif msg_type == "list_subshell_request" and isinstance(answer.get("subshell_id"), list):
            client_ids = {inner_id: client_id for client_id, inner_id in self._ids.items()}
            answer["subshell_id"] = [client_ids.get(inner_id, inner_id) for inner_id in answer["subshell_id"]]

    async def carry(self, inner: InnerKernel) -> None:
        """Create the client's subshells again in a new inner kernel, so the ids it holds keep working.

        Each starts fresh, as the main shell does.
        """
        if not self._ids or inner.relay is None:
            return
        if not has_subshells(inner.kernel_info):
            self._ids.clear()
            return
        relay: Relay = inner.relay
        client_ids = list(self._ids)
        created = await asyncio.gather(*(relay.create_subshell() for _ in client_ids), return_exceptions=True)
        for client_id, subshell_id in zip(client_ids, created, strict=True):
            if isinstance(subshell_id, str):
                self._ids[client_id] = subshell_id
            else:
                self.log.warning("Subshell %s was not created again: %s", client_id, subshell_id)
                del self._ids[client_id]
