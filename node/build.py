"""How a node is built, and how it stops.

A node is built in two steps, both from its `NodeConfig`:

0. `plan_serving(config, model_config)` -> `ServingPlan`, before anything else (the CLI runs
   it right after reading the model's config): the device and dtype `--device`/`--dtype`
   name on this machine (`node.device`) and how many blocks fit its free memory with their
   KV-cache budget (`node.memory`), or a one-line refusal.
1. `connect_node(config, closing)` -> `NodeBase`, before anything runs: the serving plan, the
   node's key and
   deployment, its chain connection and contracts, its ledger (`<home>/node/<address>/`, bound
   to the chain: one left by an earlier chain under the same id is set aside; a damaged one, or
   a new one where the chain shows the node's history, stops the start: `node.recovery`), the
   amounts of its config in token base units, and the model's shape. The ledger's close goes on
   `closing`.
2. `build_node(base, host, ...)` -> `NodeParts`, inside the `node.host.ServiceHost`'s event loop
   (the DHT and the libp2p daemon running): the ledger and compute threads, the span (given, or
   the swarm's weakest window), its measured throughput, and every part that serves it, each
   built whole: caches and sessions, the chain clock, incoming payments, receipts, the input
   store and leaf writer, the committer, the challenge answerer, the redeemer, and the RPC
   handler over all of them. `NodeParts` is frozen: moving the span builds new parts
   (`rebuild_span`) instead of changing these.

`Wrapping` is how the parts may be wrapped before the node serves with them: unchanged for an
honest node; `node.faults.wrapping(mode)` for a cheat mode (tests, demos), a benchmark's for a
node without commitments. The honest code has no branch for either.

The node's life (`node.server.Server.start`) registers how each started part stops on the
host's exit stack right after it started, so they stop in the reverse order of starting,
however the start or the serving ends:

    started, in this order                   stopped, in this order
    1. ledger thread, compute thread         6. the threads (after every part below)
    2. registration in the NodeRegistry         (nothing to stop)
    3. settling                              5. the last commit and redemption
    4. RPC handlers                          4. drain: handlers removed, sessions closed,
                                                leaves stored
    5. status API (the host's)                  (stopped by the host, after 6)
    6. the ONLINE announcement               3. announced OFFLINE
    7. periodic jobs (the host's)            2. jobs stopped, a running one cancelled
    8. taking work                           1. what still arrives is refused (shutting_down)

then the host stops the status API, the libp2p daemon and the DHT, and `Server.run` closes the
ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import torch
from eth_account.signers.local import LocalAccount
from hivemind.p2p import P2P
from transformers import PretrainedConfig

from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.db import Ledger, chosen_ledger_url, describe_url, open_deployment_ledger
from ledger.db.engine import check_sqlite_ledger, sqlite_path
from ledger.deployment import Deployment
from ledger.errors import LedgerDamagedError
from ledger.identity import load_identity
from ledger.types import ModelId, Wei, model_id, to_base_units
from ledger.units import TokenUnits
from node.announce import Announcer
from node.api import NodeMetrics
from node.balance import ChainClock, IncomingPayments, Redeemer
from node.blocks import Progress, Span, block_weight_bytes, head_dim, load_span
from node.cache import CacheManager, KVLayout
from node.challenges import ChallengeAnswerer
from node.commits import CommitsPending, Committer, InputStore, LeafWriter, Receipts
from node.compute import PriorityExecutor
from node.config import ConfigError, NodeConfig
from node.device import device_memory, device_name, local_device, local_dtype
from node.families import load_config
from node.handler import Limits, StakeswarmNode
from node.host import ServiceHost
from node.memory import MemoryPlan, SpanCost, plan_span
from node.precisions import QUANTIZED_DTYPE_NAMES, precision_name
from node.protocol import RPC_BACKWARD, RPC_FORWARD, RPC_INFERENCE, RPC_PUSH, InfoResponse
from node.recovery import (
    LostLedgerError,
    check_new_ledger,
    ledger_is_new,
    read_chain_history,
    set_aside_damaged,
    warn_if_stale,
)
from node.sessions import SessionManager, SpanViews
from node.streams import add_readable_stream_handlers
from node.tensors import DTYPE_NAMES, dtype_from_name
from node.throughput import choose_span, get_throughput
from node.training import BACKWARD_PRICE_FACTOR, ForwardLog

logger = logging.getLogger(__name__)

T = TypeVar("T")


def unchanged(part: T) -> T:
    """The part itself: how an honest node wraps each part."""
    return part


@dataclass(frozen=True)
class Wrapping:
    """How each part is wrapped before the node serves with it (see the module doc)."""

    span: Callable[[Span], Span] = unchanged  # the loaded span
    views: Callable[[SpanViews], SpanViews] = unchanged  # what sessions compute with
    receipts: Callable[[Receipts], Receipts] = unchanged  # what signs each step's leaf
    writer: Callable[[LeafWriter], LeafWriter] = unchanged  # what stores each leaf
    committer: Callable[[CommitsPending], CommitsPending] = unchanged  # what commits batches
    handler: type[StakeswarmNode] = StakeswarmNode  # the RPC servicer


HONEST = Wrapping()


# --- 0. where it computes, and what fits there ------------------------------------------------


@dataclass(frozen=True)
class ServingPlan:
    """Where a node computes, in what precision, and how many blocks fit there."""

    device: torch.device  # where the span's weights, cache and compute live
    dtype: str  # the compute dtype served and announced: float32 | float16 | bfloat16
    quantization: str | None  # the linear weights' (node.quantize), None: full
    memory: MemoryPlan  # the span's length and what it takes on the device


def plan_serving(config: NodeConfig, model_config: PretrainedConfig) -> ServingPlan:
    """The device and dtype `config` names on this machine, and the blocks that fit its free
    memory (`node.memory.plan_span`); `ConfigError` (one line) when they do not. Reads only
    the safetensors headers: no weight is loaded."""
    total = int(model_config.num_hidden_layers)
    if config.blocks is not None and config.blocks[1] > total:
        raise ConfigError(
            f"blocks {config.blocks[0]}:{config.blocks[1]} exceed the model's {total} blocks"
        )
    device = local_device(config.device)
    dtype = local_dtype(config.dtype, device, quantized=config.quantize is not None)
    torch_dtype = dtype_from_name(dtype)
    if config.quantize is not None and dtype not in QUANTIZED_DTYPE_NAMES:
        raise ConfigError(
            f"{config.quantize} weights compute in bfloat16 or float16, not {dtype}: "
            "give --dtype bfloat16 or float16"
        )
    one_block = KVLayout(
        start=0,
        end=1,
        num_kv_heads=int(model_config.num_key_value_heads),
        head_dim=head_dim(model_config),
        dtype=torch_dtype,
        device=device,
    )
    cost = SpanCost(
        block_bytes=block_weight_bytes(config.model_path, torch_dtype, config.quantize),
        cache_bytes_per_token=one_block.bytes_per_token,
        cache_tokens=config.cache_tokens,
    )
    memory = plan_span(
        cost,
        device=device_name(device),
        free=device_memory(device).free,
        blocks=config.blocks,
        num_blocks=config.num_blocks,
    )
    return ServingPlan(device=device, dtype=dtype, quantization=config.quantize, memory=memory)


# --- 1. before the node runs -----------------------------------------------------------------


@dataclass(frozen=True)
class NodeBase:
    """The node's identity, chain and ledger, and its config in chain units."""

    config: NodeConfig
    account: LocalAccount
    deployment: Deployment
    home: Path  # `--home`
    dir: Path  # `<home>/node/<address>`: the ledger, inputs, p2p key
    chain: Chain
    contracts: Contracts
    ledger: Ledger
    units: TokenUnits  # the stake token: what people read amounts in
    price_per_block: Wei  # per token per block
    backward_price_per_block: Wei  # per token per block of a backward (0: none served)
    credit: Wei  # how far a client may be behind in paying
    redeem_min: Wei  # the smallest redemption worth a transaction
    stake_wanted: Wei | None  # `--stake` (None: what the span requires)
    model_name: str
    model_id: ModelId
    model_config: PretrainedConfig
    total_blocks: int
    plan: ServingPlan  # device, dtype and what fits there
    length: int  # blocks to serve
    challenge_window: float  # seconds a committed batch may be challenged

    @property
    def address(self) -> str:
        return str(self.account.address)


def base_units(tokens: Decimal, decimals: int, what: str) -> Wei:
    """`ledger.types.to_base_units`, refused as the node's `ConfigError`."""
    try:
        return to_base_units(tokens, decimals, what)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def connect_node(config: NodeConfig, closing: contextlib.ExitStack) -> NodeBase:
    """Connect to the chain as the node's key and open its ledger (see the module doc); the
    ledger's close goes on `closing`."""
    home = Path(config.home).expanduser().resolve()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    model_config = load_config(config.model_path)
    total_blocks = int(model_config.num_hidden_layers)
    plan = plan_serving(config, model_config)  # before the ledger: a refusal leaves nothing
    if config.blocks is None and config.num_blocks is None and plan.memory.length < total_blocks:
        logger.warning(
            "only %d of the model's %d blocks fit on %s with a cache of %d tokens: serving %d",
            plan.memory.length,
            total_blocks,
            plan.memory.device,
            config.cache_tokens,
            plan.memory.length,
        )
    deployment, account = load_identity(config, role="node")
    folder = home / "node" / account.address
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    chain = deployment.connect(rpc_url=config.rpc_url)
    ledger, existed = _open_ledger(config, folder, chain, deployment)
    closing.callback(ledger.close)
    sender = chain.sender(account, journal=ledger.tx_journal())
    contracts = Contracts.from_deployment(chain, deployment, sender)
    units = TokenUnits.of(contracts.token)
    decimals = units.decimals
    _check_history(config, ledger, contracts, account.address, deployment, units, existed=existed)
    logger.info(
        "node %s on chain %d, files in %s, ledger %s",
        account.address,
        chain.chain_id,
        folder,
        describe_url(ledger.engine.url),
    )
    return NodeBase(
        config=config,
        account=account,
        deployment=deployment,
        home=home,
        dir=folder,
        chain=chain,
        contracts=contracts,
        ledger=ledger,
        units=units,
        price_per_block=base_units(config.price, decimals, "price"),
        backward_price_per_block=backward_price(config, plan, decimals),
        credit=base_units(config.credit, decimals, "credit"),
        redeem_min=base_units(config.redeem_min, decimals, "redeem_min"),
        stake_wanted=None if config.stake is None else base_units(config.stake, decimals, "stake"),
        model_name=config.name,
        model_id=model_id(config.name),
        model_config=model_config,
        total_blocks=total_blocks,
        plan=plan,
        length=plan.memory.length,
        challenge_window=float(contracts.slasher.params().challenge_window),
    )


def backward_price(config: NodeConfig, plan: ServingPlan, decimals: int) -> Wei:
    """What a backward costs per token per block on this node: `backward_price`, or twice the
    price; 0 (none served) for a node computing in 16 bits, whose backwards no verifier has
    tolerances for yet."""
    if plan.dtype != "float32" or plan.quantization is not None:
        return Wei(0)
    if config.backward_price is not None:
        return base_units(config.backward_price, decimals, "backward_price")
    return Wei(BACKWARD_PRICE_FACTOR * base_units(config.price, decimals, "price"))


def _open_ledger(
    config: NodeConfig, folder: Path, chain: Chain, deployment: Deployment
) -> tuple[Ledger, bool]:
    """The node's ledger (`--db`, else its SQLite file in `folder`), and whether it existed
    before (a database on a server always did: nothing here creates or removes one)."""
    url = chosen_ledger_url(config.ledger_url, folder / "ledger.sqlite")
    path = sqlite_path(url)
    if config.new_ledger and path is not None and path.exists():
        try:
            check_sqlite_ledger(path)
        except LedgerDamagedError as exc:
            aside = set_aside_damaged(path)
            logger.warning("%s\n--new-ledger: moved it to %s; starting on a new ledger", exc, aside)
    existed = path is None or path.exists()
    # tied to this chain: a ledger from an earlier chain under the same id (a restarted
    # devnet) is set aside, with the inputs it indexed, and a fresh one started
    ledger = open_deployment_ledger(url, chain, deployment)
    inputs = folder / "inputs"
    if ledger.set_aside is not None and inputs.exists():
        inputs.rename(inputs.with_name(f"inputs.{ledger.set_aside.stem}"))
    return ledger, existed


def _check_history(
    config: NodeConfig,
    ledger: Ledger,
    contracts: Contracts,
    address: str,
    deployment: Deployment,
    units: TokenUnits,
    *,
    existed: bool,
) -> None:
    """Compare the ledger with what the chain shows of this node (`node.recovery`)."""
    path = sqlite_path(ledger.engine.url)
    where = describe_url(ledger.engine.url) if path is None else path  # as people read it
    history = read_chain_history(contracts, address, deployment.deploy_block)
    if not ledger_is_new(ledger):
        warn_if_stale(history, ledger, ledger_path=where, units=units)
        return
    try:
        check_new_ledger(
            history, ledger_path=where, address=address, units=units, allow=config.new_ledger
        )
    except LostLedgerError:
        if not existed and path is not None:  # no empty file where a backup is to be restored
            ledger.close()
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        raise


# --- 2. in the host's event loop -------------------------------------------------------------


@dataclass(frozen=True)
class NodeParts:
    """Every part of a serving node, fully built (see the module doc)."""

    metrics: NodeMetrics
    db: ThreadPoolExecutor  # the ledger thread: every ledger write of the serving path
    compute: PriorityExecutor  # the compute thread: inference steps ahead of forwards
    announcer: Announcer  # the node's records in the DHT, and the swarm's
    span: Span  # the blocks served
    views: SpanViews  # the span's sub-spans sessions may use
    throughput: float  # tokens per second, measured
    caches: CacheManager
    sessions: SessionManager
    clock: ChainClock
    payments: IncomingPayments
    receipts: Receipts
    store: InputStore
    writer: LeafWriter
    committer: CommitsPending
    answerer: ChallengeAnswerer
    redeemer: Redeemer
    handler: StakeswarmNode
    wrapping: Wrapping = field(default=HONEST)


@dataclass(frozen=True)
class Callbacks:
    """What the node's runtime tells its handler."""

    info: Callable[[], InfoResponse]  # the node's info (the `info` RPC)
    on_leaf: Callable[[], None]  # a leaf was stored


async def build_node(
    base: NodeBase,
    host: ServiceHost,
    callbacks: Callbacks,
    *,
    wrapping: Wrapping = HONEST,
    progress: Progress | None = None,
) -> NodeParts:
    """Every part of the node, built whole (see the module doc). The threads it starts stop
    on the host's exit stack."""
    config = base.config
    db = ThreadPoolExecutor(1, thread_name_prefix="ledger")
    host.stops.callback(db.shutdown, wait=True)
    compute = PriorityExecutor("compute")
    host.stops.callback(compute.shutdown, wait=True)
    announcer = Announcer(
        host.dht, base.model_name, host.peer_id.to_base58(), ttl=config.announce_ttl
    )
    start, end = await _choose_span(base, announcer, host.peer_id.to_base58())
    plan = base.plan
    span = wrapping.span(
        await asyncio.to_thread(
            functools.partial(
                load_span,
                config.model_path,
                start,
                end,
                dtype_from_name(plan.dtype),
                progress,
                device=plan.device,
                quantization=plan.quantization,
            )
        )
    )
    # the DHT record, /status and every session's dtype check say `plan.dtype`: the span
    # must compute in it
    if (
        DTYPE_NAMES[span.dtype] != plan.dtype
        or span.device != plan.device
        or span.quantization != plan.quantization
    ):
        raise ConfigError(
            f"the span loaded in {span.dtype} ({span.quantization or 'full'} weights) on "
            f"{span.device}, not the {precision_name(plan.dtype, plan.quantization)} on "
            f"{device_name(plan.device)} the node declares"
        )
    measured = await asyncio.to_thread(
        get_throughput, span, base.model_name, base.home / "cache", steps=config.throughput_steps
    )
    caches = CacheManager(config.cache_tokens)
    sessions = SessionManager(caches, base.ledger)
    clock = ChainClock(base.chain.timestamp)
    clock.refresh()
    channels = base.contracts.payment_channels
    payments = IncomingPayments(
        channels,
        base.ledger,
        node=base.address,
        chain_id=base.chain.chain_id,
        credit=base.credit,
        units=base.units,
        min_life=config.channel_min_life,
        cache_ttl=config.channel_cache_ttl,
        clock=clock,
        db_executor=db,
    )
    receipts = wrapping.receipts(
        Receipts(
            domain=base.contracts.slasher.domain(),
            account=base.account,
            model_id=base.model_id,
            # the chain's time: the receipt's commit deadline is checked on-chain
            clock=clock.now,
        )
    )
    store = InputStore(base.dir / "inputs")
    writer = wrapping.writer(LeafWriter(base.ledger, store, db))
    committer = wrapping.committer(
        Committer(
            base.ledger,
            base.contracts.commitments,
            node=base.address,
            model_id=base.model_id,
            max_leaves=config.commit_max_leaves,
        )
    )
    answerer = ChallengeAnswerer(
        base.chain,
        base.ledger,
        base.contracts.slasher,
        base.contracts.commitments,
        node=base.address,
        from_block=base.deployment.deploy_block,
    )
    redeemer = Redeemer(
        channels,
        base.ledger,
        chain_id=base.chain.chain_id,
        min_amount=base.redeem_min,
        margin=config.redeem_margin,
        clock=clock,
        units=base.units,
    )
    metrics = NodeMetrics()
    views = wrapping.views(SpanViews(span))
    handler = wrapping.handler(
        address=base.address,
        spans=views,
        price_per_block=base.price_per_block,
        backward_price_per_block=base.backward_price_per_block,
        forwards=ForwardLog(ttl=config.backward_ttl),
        sessions=sessions,
        payments=payments,
        receipts=receipts,
        writer=writer,
        store=store,
        ledger=base.ledger,
        verifiers=base.contracts.verifier_registry,
        compute=compute,
        metrics=metrics,
        info=callbacks.info,
        on_leaf=callbacks.on_leaf,
        limits=Limits.of(config),
    )
    return NodeParts(
        metrics=metrics,
        db=db,
        compute=compute,
        announcer=announcer,
        span=span,
        views=views,
        throughput=measured.tokens_per_s,
        caches=caches,
        sessions=sessions,
        clock=clock,
        payments=payments,
        receipts=receipts,
        store=store,
        writer=writer,
        committer=committer,
        answerer=answerer,
        redeemer=redeemer,
        handler=handler,
        wrapping=wrapping,
    )


def rebuild_span(base: NodeBase, parts: NodeParts, span: Span) -> NodeParts:
    """The parts of a node that moved to `span` (loaded from the old span by `move_span`, so
    already wrapped): new span views and a new handler over them; every other part is kept.
    Nothing may be open on the old handler."""
    views = parts.wrapping.views(SpanViews(span))
    old = parts.handler
    handler = parts.wrapping.handler(
        address=base.address,
        spans=views,
        price_per_block=base.price_per_block,
        sessions=parts.sessions,
        payments=parts.payments,
        receipts=parts.receipts,
        writer=parts.writer,
        store=parts.store,
        ledger=base.ledger,
        verifiers=base.contracts.verifier_registry,
        compute=parts.compute,
        metrics=parts.metrics,
        info=old.info,
        on_leaf=old.on_leaf,
        limits=old.limits,
    )
    return dataclasses.replace(parts, span=span, views=views, handler=handler)


async def _choose_span(base: NodeBase, announcer: Announcer, me: str) -> tuple[int, int]:
    config = base.config
    if config.blocks is not None:
        return config.blocks
    swarm = await announcer.swarm(base.total_blocks)
    others = [
        (s.info.span_start, s.info.span_end, s.info.throughput) for s in swarm if s.peer_id != me
    ]
    start, end = choose_span(base.total_blocks, others, base.length)
    logger.info("chose blocks [%d, %d) of %d from the swarm", start, end, base.total_blocks)
    return start, end


async def serve_rpcs(p2p: P2P, handler: StakeswarmNode) -> None:
    """Register `handler`'s RPCs on the libp2p daemon."""
    handler.p2p = p2p  # pipelined steps push their outputs on it
    await handler.add_p2p_handlers(p2p)
    # the stream-input RPCs again, so that unreadable bytes get a BAD_REQUEST reply
    await add_readable_stream_handlers(
        p2p,
        {
            RPC_INFERENCE: handler.rpc_inference,
            RPC_FORWARD: handler.rpc_forward,
            RPC_PUSH: handler.rpc_push,
            RPC_BACKWARD: handler.rpc_backward,
        },
    )
