"""The transaction sender on a real Anvil: nonces, reverts, receipts, events."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from sqlalchemy import select

from ledger.chain import Chain, ChainError, ContractRevert, TxFate, TxResult
from ledger.contracts import Contracts, StakeToken
from ledger.db import SentTransaction, TxStatus, open_ledger, sqlite_url
from ledger.deployment import TOKEN, Deployment
from ledger.errors import LedgerDbError
from ledger.txjournal import SettledStatus
from ledger.types import Wei


class ListJournal:
    """A `TxJournal` that keeps the reports in a list, in order; `refuse` makes `sent` fail."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.reports: list[tuple[Any, ...]] = []
        self.refuse = refuse

    def sent(self, tx_hash: str, *, sender: str, to: str | None, function: str, nonce: int) -> None:
        if self.refuse:
            raise LedgerDbError("the journal is full")
        self.reports.append(("sent", tx_hash, sender, to, function, nonce))

    def settled(
        self,
        tx_hash: str,
        status: SettledStatus,
        *,
        gas_used: int | None = None,
        block_number: int | None = None,
        error: str | None = None,
    ) -> None:
        self.reports.append((status, tx_hash, gas_used, block_number, error))


def test_concurrent_sends_from_threads_get_distinct_nonces_and_all_mine(
    chain: Chain,
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    client = dev_account("client-0")
    receiver = dev_account("client-1").address
    start_nonce = chain.nonce(client.address)
    start_balance = StakeToken(chain, deployment.contracts.stake_token).balance_of(receiver)
    threads, per_thread = 4, 5

    def send_batch(thread: int) -> list[TxResult]:
        # each thread builds its own Sender and wrapper: the nonce manager is per key
        token = StakeToken(chain, deployment.contracts.stake_token, chain.sender(client))
        return [token.transfer(receiver, Wei(thread * 100 + i + 1)) for i in range(per_thread)]

    with ThreadPoolExecutor(threads) as pool:
        results = [r for batch in pool.map(send_batch, range(threads)) for r in batch]

    nonces = sorted(chain.transaction(result.tx_hash)["nonce"] for result in results)
    assert nonces == list(range(start_nonce, start_nonce + threads * per_thread))
    assert all(chain.receipt(r.tx_hash)["status"] == 1 for r in results)
    expected = sum(t * 100 + i + 1 for t in range(threads) for i in range(per_thread))
    token = StakeToken(chain, deployment.contracts.stake_token)
    assert token.balance_of(receiver) == start_balance + expected


def test_nonce_resyncs_after_a_transaction_sent_behind_its_back(
    chain: Chain,
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    client = dev_account("client-0")
    token = StakeToken(chain, deployment.contracts.stake_token, chain.sender(client))
    token.transfer(dev_account("client-1").address, Wei(1))
    # another program uses the same key: the cached nonce is now stale
    stray = client.sign_transaction(
        {
            "to": client.address,
            "value": 0,
            "gas": 21_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
            "nonce": chain.nonce(client.address),
            "chainId": chain.chain_id,
        }
    )
    chain.w3.eth.wait_for_transaction_receipt(
        chain.w3.eth.send_raw_transaction(stray.raw_transaction)
    )

    with pytest.raises(ChainError, match="refused"):
        token.transfer(dev_account("client-1").address, Wei(2))
    retried = token.transfer(dev_account("client-1").address, Wei(3))

    assert chain.receipt(retried.tx_hash)["status"] == 1


def test_revert_is_caught_by_the_static_call_and_decoded_with_arguments(
    chain: Chain,
    contracts_as: Callable[[str | int], Contracts],
    dev_account: Callable[[str | int], LocalAccount],
) -> None:
    client = contracts_as("client-0")
    sender = dev_account("client-0").address
    balance = client.token.balance_of(sender)
    nonce_before = chain.nonce(sender)

    with pytest.raises(ContractRevert) as raised:
        client.token.transfer(dev_account("client-1").address, Wei(balance + 1))

    revert = raised.value
    assert revert.name == "ERC20InsufficientBalance"
    assert revert.arguments == {"sender": sender, "balance": balance, "needed": balance + 1}
    assert revert.action == "StakeToken.transfer"
    assert f"sender={sender}" in str(revert)
    # nothing was sent, so no gas was spent and the nonce did not move
    assert chain.nonce(sender) == nonce_before


def test_tx_result_carries_gas_block_and_decoded_events(
    chain: Chain, contracts_as: Callable[[str | int], Contracts], deployment: Deployment
) -> None:
    client = contracts_as("client-0")
    spender = deployment.contracts.payment_channels

    result = client.token.approve(spender, Wei(5 * TOKEN))

    receipt = chain.receipt(result.tx_hash)
    assert result.gas_used == receipt["gasUsed"] > 21_000
    assert result.block_number == receipt["blockNumber"]
    approval = result.event("Approval")
    assert approval.contract == "StakeToken"
    assert approval.address == deployment.contracts.stake_token
    assert approval.args == {
        "owner": deployment.account("client-0").address,
        "spender": spender,
        "value": 5 * TOKEN,
    }


def test_eth_transfer_and_fee_fields(
    chain: Chain, dev_account: Callable[[str | int], LocalAccount]
) -> None:
    sender = chain.sender(dev_account("client-2"))
    receiver = dev_account("client-1").address
    before = chain.eth_balance(receiver)

    result = sender.transfer_eth(receiver, 12345)

    tx = chain.transaction(result.tx_hash)
    assert tx["type"] == 2 and tx["maxFeePerGas"] >= tx["maxPriorityFeePerGas"] > 0
    assert chain.eth_balance(receiver) == before + 12345


def test_sent_transactions_are_recorded_in_the_ledger(
    chain: Chain,
    deployment: Deployment,
    dev_account: Callable[[str | int], LocalAccount],
    tmp_path: Path,
) -> None:
    ledger = open_ledger(sqlite_url(tmp_path / "ledger.sqlite"))
    client = dev_account("client-0")
    token = StakeToken(
        chain, deployment.contracts.stake_token, chain.sender(client, journal=ledger.tx_journal())
    )
    receiver = dev_account("client-1").address

    mined = token.transfer(receiver, Wei(1))
    with pytest.raises(ContractRevert):
        token.transfer(receiver, Wei(10**30))  # caught by the static call: never sent
    # the key moved on elsewhere: the sender's cached nonce is too low and the node refuses it
    chain.rpc(
        "anvil_setNonce",
        [client.address, hex(chain.nonce(client.address) + 5)],
    )
    with pytest.raises(ChainError):
        token.transfer(receiver, Wei(2))

    with ledger.begin() as session:
        rows = session.scalars(select(SentTransaction).order_by(SentTransaction.id)).all()
        recorded = [(r.function, r.status, r.gas_used, r.block_number) for r in rows]
        refused_error = rows[-1].error
    ledger.close()
    assert recorded[0] == (
        "StakeToken.transfer",
        TxStatus.MINED,
        mined.gas_used,
        mined.block_number,
    )
    assert [r[1] for r in recorded] == [TxStatus.MINED, TxStatus.FAILED]
    assert refused_error is not None and "refused" in refused_error


def test_a_sender_reports_each_transaction_to_its_journal_before_and_after_sending(
    chain: Chain, deployment: Deployment, dev_account: Callable[[str | int], LocalAccount]
) -> None:
    client = dev_account("client-0")
    journal = ListJournal()
    token_address = deployment.contracts.stake_token
    token = StakeToken(chain, token_address, chain.sender(client, journal=journal))
    receiver = dev_account("client-1").address
    nonce = chain.nonce(client.address)

    mined = token.transfer(receiver, Wei(1))
    with pytest.raises(ContractRevert):
        token.transfer(receiver, Wei(10**30))  # caught by the static call: never sent
    chain.rpc("anvil_setNonce", [client.address, hex(nonce + 6)])  # the key moved on elsewhere
    with pytest.raises(ChainError, match="refused"):
        token.transfer(receiver, Wei(2))

    sent_mined, settled_mined, sent_refused, settled_refused = journal.reports
    action = "StakeToken.transfer"
    assert sent_mined == ("sent", mined.tx_hash, client.address, token_address, action, nonce)
    assert settled_mined == ("mined", mined.tx_hash, mined.gas_used, mined.block_number, None)
    assert sent_refused[:2] == ("sent", settled_refused[1])
    assert sent_refused[2:] == (client.address, token_address, action, nonce + 1)
    assert settled_refused[0] == "failed" and "refused" in settled_refused[-1]


def test_a_sender_sends_nothing_its_journal_cannot_record(
    chain: Chain, dev_account: Callable[[str | int], LocalAccount]
) -> None:
    client = dev_account("client-2")
    nonce = chain.nonce(client.address)
    sender = chain.sender(client, journal=ListJournal(refuse=True))

    with pytest.raises(LedgerDbError):
        sender.transfer_eth(dev_account("client-1").address, 1)

    assert chain.nonce(client.address, "pending") == nonce


def test_a_sender_without_a_journal_sends_and_reconciles(
    chain: Chain, dev_account: Callable[[str | int], LocalAccount]
) -> None:
    client = dev_account("client-2")
    receiver = dev_account("client-1").address
    sender = chain.sender(client)
    before = chain.eth_balance(receiver)

    mined = sender.transfer_eth(receiver, 7)
    nonce = chain.transaction(mined.tx_hash)["nonce"]
    chain.rpc("anvil_setNonce", [client.address, hex(nonce + 5)])
    with pytest.raises(ChainError, match="refused"):
        sender.transfer_eth(receiver, 8)

    assert chain.eth_balance(receiver) == before + 7
    outcome = sender.reconcile(mined.tx_hash, nonce, action="transfer ETH")
    assert outcome.fate is TxFate.MINED and outcome.result is not None
    assert outcome.result.block_number == mined.block_number
