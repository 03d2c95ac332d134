"""The paying client of the swarm.

    from client import DistributedModelForCausalLM
    model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=[...],
                                                        wallet=account, deployment=deployment)

Names are imported on first use, so `import client.remote` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.client import SwarmClient
    from client.config import ClientConfig
    from client.model import DistributedModelForCausalLM
    from client.session import InferenceSession

_EXPORTS = {
    "ClientConfig": "client.config",
    "DistributedModelForCausalLM": "client.model",
    "InferenceSession": "client.session",
    "SwarmClient": "client.client",
}

__all__ = ["ClientConfig", "DistributedModelForCausalLM", "InferenceSession", "SwarmClient"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
