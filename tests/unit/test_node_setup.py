"""Node setup decisions that need no chain or swarm: configuration checks, amounts,
registration plans, sub-span views and the validation of a step's tensors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import torch
from eth_utils import to_checksum_address

from node.blocks import SPAN_FP32_ATOL, load_span, move_span
from node.build import base_units as to_base_units
from node.cache import CacheManager
from node.config import ConfigError, NodeConfig
from node.protocol import ErrorCode, OpenSession, ProtocolError
from node.registration import plan_registration
from node.sessions import Session, SpanViews, check_step
from stakeswarm.tiny_models import make_tiny_model


def test_config_refuses_conflicting_or_missing_options(tmp_path: Path) -> None:
    NodeConfig(model_path=tmp_path, devnet=True, blocks=(0, 2))
    with pytest.raises(ConfigError, match="not both"):
        NodeConfig(model_path=tmp_path, devnet=True, blocks=(0, 2), num_blocks=2)
    with pytest.raises(ConfigError, match="keystore"):
        NodeConfig(model_path=tmp_path, deployment_file=tmp_path / "d.json")
    with pytest.raises(ConfigError, match="START < END|0 <= START < END"):
        NodeConfig(model_path=tmp_path, devnet=True, blocks=(3, 3))
    with pytest.raises(ConfigError, match="price must not be negative"):
        NodeConfig(model_path=tmp_path, devnet=True, price=Decimal("-1"))
    assert NodeConfig(model_path=tmp_path / "SmolLM2", devnet=True).name == "SmolLM2"


def test_token_amounts_become_base_units_exactly() -> None:
    assert to_base_units(Decimal("0.000001"), 18, "price") == 10**12
    assert to_base_units(Decimal("100"), 18, "stake") == 100 * 10**18
    with pytest.raises(ConfigError, match="more than 18 decimals"):
        to_base_units(Decimal("1e-19"), 18, "price")


def test_registration_plan_sends_nothing_when_the_registry_already_matches() -> None:
    wanted = (b"m" * 32, 0, 2, 10, b"peer")
    same = plan_registration(
        registered=True, current=wanted, wanted=wanted, stake=20, target_stake=20
    )
    assert (same.register, same.update_service, same.add_stake) == (False, False, 0)
    first = plan_registration(
        registered=False,
        current=(b"\0" * 32, 0, 0, 0, b""),
        wanted=wanted,
        stake=0,
        target_stake=20,
    )
    assert first.register and first.add_stake == 20
    moved = plan_registration(
        registered=True,
        current=wanted,
        wanted=(b"m" * 32, 2, 6, 10, b"peer"),
        stake=20,
        target_stake=40,
    )
    assert (moved.register, moved.update_service, moved.add_stake) == (False, True, 20)


def test_registration_plan_rebonds_unbonding_stake_before_pulling_fresh_tokens() -> None:
    wanted = (b"m" * 32, 0, 2, 10, b"peer")
    plan = dict(registered=True, current=wanted, wanted=wanted, current_required=20)
    # everything unbonded: all of it comes back, no fresh tokens
    back = plan_registration(**plan, stake=0, unbonding=20, target_stake=20)
    assert (back.rebond, back.add_stake, back.update_service) == (20, 0, False)
    # part of it unbonding: the rest of the target is fresh tokens
    part = plan_registration(**plan, stake=0, unbonding=25, target_stake=30)
    assert (part.rebond, part.add_stake) == (25, 5)
    # more unbonding than needed: only what is needed comes back
    some = plan_registration(**plan, stake=20, unbonding=50, target_stake=30)
    assert (some.rebond, some.add_stake) == (10, 0)


def test_registration_plan_rebonds_only_what_the_registered_span_accepts() -> None:
    registered = (b"m" * 32, 0, 6, 10, b"peer")  # 6 blocks need 60
    shorter = (b"m" * 32, 0, 2, 10, b"peer")  # 2 blocks need 20
    plan = dict(registered=True, current=registered, wanted=shorter, current_required=60)
    # the rebond must leave the stake covering the registered span until the update
    enough = plan_registration(**plan, stake=0, unbonding=60, target_stake=20)
    assert (enough.rebond, enough.add_stake, enough.update_service) == (60, 0, True)
    # too little unbonding to cover the registered span: fresh tokens, as without unbonding
    short = plan_registration(**plan, stake=0, unbonding=30, target_stake=20)
    assert (short.rebond, short.add_stake) == (0, 20)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m"), "llama", 4, with_tokenizer=False)


def test_a_sub_span_view_computes_what_a_span_loaded_alone_computes(model: Path) -> None:
    views = SpanViews(load_span(model, 0, 4))
    hidden = torch.randn(1, 5, 64)
    alone = load_span(model, 1, 3).forward(hidden)
    torch.testing.assert_close(views.view(1, 3).forward(hidden), alone, atol=SPAN_FP32_ATOL, rtol=0)
    with pytest.raises(ProtocolError) as refused:
        views.view(2, 5)
    assert refused.value.code is ErrorCode.SPAN_MISMATCH


def test_moving_a_span_reuses_loaded_blocks_and_loads_the_rest(model: Path) -> None:
    old = load_span(model, 0, 2)
    moved = move_span(model, old, 1, 4)
    assert moved.layers[0] is old.layers[1]
    hidden = torch.randn(1, 3, 64)
    torch.testing.assert_close(
        moved.forward(hidden), load_span(model, 1, 4).forward(hidden), atol=SPAN_FP32_ATOL, rtol=0
    )


def test_a_step_is_checked_against_its_session_before_it_runs(model: Path) -> None:
    span = load_span(model, 0, 2)
    caches = CacheManager(64)
    request = OpenSession(b"\x01" * 32, 0, 2, 8, 1, 1)
    cache = caches.open(request.session_id, span.kv_layout, batch=1, max_length=8)
    session = Session(request.session_id, request, span, cache, "0x" + "00" * 20, 1)
    ok_hidden, ok_mask = torch.randn(1, 3, 64), torch.ones(1, 3, dtype=torch.long)
    assert check_step(session, ok_hidden, ok_mask) == 3
    bad = [
        ((torch.randn(1, 3, 32), ok_mask), ErrorCode.BAD_TENSOR),
        ((ok_hidden.double(), ok_mask), ErrorCode.BAD_TENSOR),
        ((ok_hidden, ok_mask.int()), ErrorCode.BAD_TENSOR),
        ((ok_hidden, ok_mask * 2), ErrorCode.BAD_TENSOR),
        ((torch.randn(1, 9, 64), torch.ones(1, 9, dtype=torch.long)), ErrorCode.LENGTH_EXCEEDED),
    ]
    for (hidden, mask), code in bad:
        with pytest.raises(ProtocolError) as refused:
            check_step(session, hidden, mask)
        assert refused.value.code is code
    span.forward(ok_hidden, ok_mask, cache)
    history = torch.tensor([[1, 0, 1, 1]])  # disagrees with the cached positions
    with pytest.raises(ProtocolError, match="cached positions"):
        check_step(session, torch.randn(1, 1, 64), history)


def test_the_servicer_registers_the_rpc_names_clients_call() -> None:
    from node.handler import StakeswarmNode
    from node.protocol import (
        RPC_BACKWARD,
        RPC_FORWARD,
        RPC_INFERENCE,
        RPC_INFO,
        RPC_PUSH,
        RPC_REVEAL,
    )

    StakeswarmNode._collect_rpc_handlers()
    handlers = {
        StakeswarmNode._get_handle_name(None, h.method_name): (h.stream_input, h.stream_output)
        for h in StakeswarmNode._rpc_handlers or []
    }
    assert handlers == {
        RPC_INFERENCE: (True, True),
        RPC_FORWARD: (True, True),
        RPC_INFO: (False, False),
        RPC_REVEAL: (False, True),
        RPC_PUSH: (True, True),
        RPC_BACKWARD: (True, True),
    }


def test_error_replies_and_info_roundtrip_with_older_peers_in_mind() -> None:
    from node.protocol import ErrorReply, InfoResponse, ServerInfo, ServerState

    reply = ErrorReply(ErrorCode.BAD_TENSOR, "wrong shape", fatal=False)
    assert ErrorReply.from_wire(reply.to_wire()) == reply
    legacy = {"type": "error", "code": "bad_tensor", "message": "m"}  # no "fatal": assume fatal
    assert ErrorReply.from_wire(legacy).fatal
    info = InfoResponse(
        "m",
        "QmPeer",
        30,
        ServerInfo(
            ServerState.ONLINE, 0, 3, 1.0, 5, to_checksum_address("0x" + "ab" * 20), "float32", 9
        ),
    )
    assert InfoResponse.from_wire(info.to_wire()) == info
