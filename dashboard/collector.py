"""`Collector`: reads the swarm, the chain and the nodes' status APIs into an `Observation`,
and hands it to `dashboard.snapshot.build_snapshot`.

Where each figure comes from:

- the chain (through the typed wrappers of `ledger.contracts`): every node that ever
  registered (`NodeRegistered` events since the deployment), its current registration and
  stake (`getNode`) and whether the registry counts it as active; the batches committed
  (`BatchCommitted`), every slash (`LeafSlashed`, `LeafWithheldSlashed`,
  `EquivocationSlashed`, `ReceiptChallengeSlashed`) and who sent it; every verifier and its
  stake;
- the DHT (`client.network.Network`, a client-mode DHT node): each model's records, for the
  models the registered nodes serve: a node's `info` RPC names its model and block count once
  (the chain knows only the name's hash);
- the nodes' HTTP APIs (their host from the libp2p connection, their port from the DHT record):
  tokens served (`/metrics`) and throughput (`/status`); the verifiers' `/status` (audits,
  verdicts) at the URLs the dashboard was given.

A part that cannot be read leaves its figures empty and says so in the snapshot's `problems`;
the page keeps showing the rest. Snapshots are reused for `min_interval` seconds, so any
number of open pages cost one read per interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import httpx
from hivemind.p2p import PeerID
from hivemind.utils.multiaddr import Multiaddr
from web3.exceptions import Web3Exception

from client.network import Network
from client.remote import RemoteError, RemoteUnavailableError
from dashboard.snapshot import (
    Announced,
    NodeReport,
    Observation,
    SnapshotUnavailable,
    SwarmSnapshot,
    build_snapshot,
    tokens_served,
)
from ledger.chain import Chain, ChainError
from ledger.contracts import Contracts, NodeInfo
from ledger.deployment import Deployment
from ledger.types import model_id
from ledger.units import TokenUnits
from node.protocol import ProtocolError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Model:
    name: str
    total_blocks: int


class Collector:
    """Reads the swarm into snapshots (see the module doc); safe to call from many threads."""

    def __init__(
        self,
        *,
        network: Network,
        chain: Chain,
        contracts: Contracts,
        deployment: Deployment,
        http: httpx.Client,
        verifier_urls: Sequence[str] = (),
        models: Mapping[str, int] | None = None,
        min_interval: float = 2.0,
        rpc_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.network = network
        self.chain = chain
        self.contracts = contracts
        self.deployment = deployment
        self.http = http  # to the nodes' and verifiers' status APIs
        self.verifier_urls = [url.rstrip("/") for url in verifier_urls]
        self.min_interval = min_interval  # seconds a snapshot is reused
        self.rpc_timeout = rpc_timeout  # seconds for a node's `info` answer
        self.clock = clock
        self.units = TokenUnits.of(contracts.token)
        # model id (hex) -> name and blocks: given, or learnt from a node's `info` answer
        self._models: dict[str, _Model] = {}
        for name, blocks in (models or {}).items():
            self._models[_model_hex(name)] = _Model(name, blocks)
        self._submitters: dict[str, str] = {}  # slash tx hash -> sender
        self._status_url: dict[str, str] = {}  # peer id -> the status API URL that answered
        self._lock = threading.Lock()
        self._last: SwarmSnapshot | None = None

    def watch_verifier(self, url: str) -> None:
        """Read the verifier status API at `url` too, from the next snapshot on."""
        with self._lock:
            if url.rstrip("/") not in self.verifier_urls:
                self.verifier_urls.append(url.rstrip("/"))
            self._last = None

    def snapshot(self) -> SwarmSnapshot:
        """The current snapshot (read afresh when the last is older than `min_interval`). When
        the chain cannot be read, the last snapshot comes back saying so in its `problems`;
        `SnapshotUnavailable` when there is none yet."""
        with self._lock:
            last = self._last
            if last is not None and self.clock() - last.taken_at < self.min_interval:
                return last
            try:
                self._last = build_snapshot(self.observe())
            except (ChainError, OSError, Web3Exception) as exc:
                logger.warning("cannot read the swarm: %s", exc)
                if last is None:
                    raise SnapshotUnavailable(f"cannot read the chain: {exc}") from exc
                problem = f"cannot read the chain, showing what it said before: {exc}"
                return replace(last, problems=(*last.problems, problem))
            return self._last

    # --- reads --------------------------------------------------------------------------------

    def observe(self) -> Observation:
        """One round of reads (blocking; a few seconds at most per unreachable part)."""
        problems: list[str] = []
        since = self.deployment.deploy_block
        registry, slasher = self.contracts.node_registry, self.contracts.slasher
        block = self.chain.block_number()
        addresses = list(dict.fromkeys(e.node for e in registry.nodes_registered(from_block=since)))
        registrations = [registry.get_node(address) for address in addresses]
        active = {n.address.lower(): registry.is_active(n.address) for n in registrations}
        peer_ids = {n.address.lower(): _peer_id(n.peer_id) for n in registrations}
        commits = self.contracts.commitments.batches_committed(from_block=since, to_block=block)
        leaf_slashes = slasher.leaves_slashed(from_block=since, to_block=block)
        withheld = slasher.leaves_withheld_slashed(from_block=since, to_block=block)
        equivocations = slasher.equivocations_slashed(from_block=since, to_block=block)
        challenges = slasher.receipt_challenges_slashed(from_block=since, to_block=block)
        slash_txs = [s.tx_hash for s in leaf_slashes] + [s.tx_hash for s in withheld]
        for tx_hash in set(slash_txs + [s.tx_hash for s in challenges]):
            if tx_hash not in self._submitters:
                self._submitters[tx_hash] = self.chain.sender_of(tx_hash)
        verifier_registry = self.contracts.verifier_registry
        verifier_addresses = list(
            dict.fromkeys(
                e.verifier for e in verifier_registry.verifiers_registered(from_block=since)
            )
        )
        verifiers = [verifier_registry.get_verifier(a) for a in verifier_addresses]
        verifier_active = {
            v.address.lower(): verifier_registry.is_active(v.address) for v in verifiers
        }

        self._learn_models(registrations, peer_ids, problems)
        announced = self._announced(problems)
        reports, status_urls = self._node_reports(announced)
        verifier_status, verifier_urls = self._verifier_statuses(problems)
        return Observation(
            taken_at=self.clock(),
            chain_id=self.chain.chain_id,
            rpc_url=self.chain.rpc_url,
            block_number=block,
            chain_time=self.chain.timestamp(block),
            units=self.units,
            models={m.name: m.total_blocks for m in self._models.values()},
            registrations=registrations,
            active=active,
            peer_ids=peer_ids,
            announced=announced,
            node_reports=reports,
            status_urls=status_urls,
            commits=commits,
            leaf_slashes=leaf_slashes,
            withheld_slashes=withheld,
            equivocations=equivocations,
            challenge_slashes=challenges,
            submitters=dict(self._submitters),
            verifiers=verifiers,
            verifier_active=verifier_active,
            verifier_status=verifier_status,
            verifier_urls=verifier_urls,
            problems=tuple(problems),
        )

    def _learn_models(
        self, registrations: Sequence[NodeInfo], peer_ids: Mapping[str, str], problems: list[str]
    ) -> None:
        """Ask one node of each model not yet known for its name and block count (`info`)."""
        for node in registrations:
            key = node.model_id.hex()
            peer = peer_ids.get(node.address.lower(), "")
            if key in self._models or not node.registered or not peer:
                continue
            try:
                answer, _ = self.network.ping(peer, timeout=self.rpc_timeout)
            except (RemoteUnavailableError, RemoteError, ProtocolError, TimeoutError) as exc:
                logger.debug("no info from %s (%s): %s", node.address, peer, exc)
                continue
            if _model_hex(answer.model) != key:
                problems.append(
                    f"{node.address} answers for model {answer.model!r}, not the one it registered"
                )
                continue
            self._models[key] = _Model(answer.model, answer.total_blocks)
        unknown = {n.model_id.hex() for n in registrations if n.registered} - set(self._models)
        if unknown:
            problems.append(
                f"{len(unknown)} registered model(s) have no node answering for their name"
            )

    def _announced(self, problems: list[str]) -> list[Announced]:
        found: list[Announced] = []
        for model in self._models.values():
            try:
                servers = self.network.servers(model.name, model.total_blocks, timeout=10)
            except (TimeoutError, OSError) as exc:
                problems.append(f"cannot read the DHT records of {model.name}: {exc}")
                continue
            found.extend(
                Announced(model.name, model.total_blocks, peer, info)
                for peer, info in servers.items()
            )
        return found

    def _node_reports(
        self, announced: Sequence[Announced]
    ) -> tuple[dict[str, NodeReport], dict[str, str]]:
        """What each node's status API says, and its URL, for the nodes that announce one and
        whose host this process's libp2p daemon knows (each host it connects from is tried;
        the one that answered is tried first next time)."""
        try:
            peers = self.network.run(self.network.p2p.list_peers(), timeout=5)
        except (TimeoutError, OSError) as exc:
            logger.debug("cannot list the connected peers: %s", exc)
            peers = []
        hosts = {info.peer_id.to_base58(): _hosts_of(info.addrs) for info in peers}
        reports: dict[str, NodeReport] = {}
        urls: dict[str, str] = {}
        for item in announced:
            port, address = item.info.http_port, item.info.eth_address.lower()
            if not port:
                continue
            candidates = [f"http://{host}:{port}" for host in hosts.get(item.peer_id, [])]
            known = self._status_url.get(item.peer_id)
            if known is not None and known.endswith(f":{port}"):
                candidates.insert(0, known)
            for url in dict.fromkeys(candidates):
                report = self._node_report(url)
                if report is not None:
                    reports[address], urls[address] = report, url
                    self._status_url[item.peer_id] = url
                    break
        return reports, urls

    def _node_report(self, url: str) -> NodeReport | None:
        try:
            metrics = self.http.get(f"{url}/metrics").text
            status = self.http.get(f"{url}/status").json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.debug("no status from %s: %s", url, exc)
            return None
        throughput = status.get("throughput") if isinstance(status, dict) else None
        return NodeReport(
            tokens_served=tokens_served(metrics),
            throughput=float(throughput) if isinstance(throughput, int | float) else None,
        )

    def _verifier_statuses(
        self, problems: list[str]
    ) -> tuple[dict[str, dict[str, object]], dict[str, str]]:
        statuses: dict[str, dict[str, object]] = {}
        urls: dict[str, str] = {}
        for url in list(self.verifier_urls):
            try:
                status = self.http.get(f"{url}/status").json()
            except (httpx.HTTPError, ValueError) as exc:
                problems.append(f"the verifier at {url} does not answer: {exc}")
                continue
            address = status.get("address") if isinstance(status, dict) else None
            if isinstance(address, str):
                statuses[address.lower()] = status
                urls[address.lower()] = url
        return statuses, urls


def _model_hex(name: str) -> str:
    return model_id(name).hex()


def _peer_id(raw: bytes) -> str:
    try:
        return PeerID(raw).to_base58() if raw else ""
    except ValueError:
        return ""


def _hosts_of(addrs: Sequence[Multiaddr]) -> list[str]:
    """The IPv4 hosts among a peer's multiaddrs, in order, each once."""
    hosts = []
    for addr in addrs:
        parts = str(addr).split("/")
        if len(parts) > 2 and parts[1] == "ip4":
            hosts.append(parts[2])
    return list(dict.fromkeys(hosts))


__all__ = ["Collector", "SnapshotUnavailable"]
