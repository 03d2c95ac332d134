"""The keepalive timing of the wire protocol, without the protocol's imports (torch, hivemind):
`client.config` takes its default silence timeout from here, and `node.protocol` re-exports both.

A node at work on a step or a forward sends a `working` frame every KEEPALIVE_INTERVAL seconds
(from the request's first message to its reply); a client waits DEFAULT_SILENCE_TIMEOUT seconds
by default for any message from a node at work before it takes the node for gone (a killed
process, a dropped connection).
"""

from __future__ import annotations

KEEPALIVE_INTERVAL = 0.25
DEFAULT_SILENCE_TIMEOUT = 1.5
