"""What only a devnet allows: funding any address from the deployer, and moving the chain's
clock. `stakeswarm dev fund` and `stakeswarm dev advance-time` run these.

Both act only on the devnet running in a home (`stakeswarm dev up`, `dev swarm`, or a test's
`Devnet.start`), found through its state file, and only when the chain answering is the local
dev chain (chain id 31337); anything else is refused with `NotADevnet` before a request is
sent. ETH is set with the chain's `*_setBalance` (`anvil_setBalance`, `hardhat_setBalance`:
no transaction, no gas); stake tokens are a real ERC-20 transfer from the deployer, which holds
the supply that was not handed out to the dev accounts.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account

from ledger.chain import Chain, TxResult
from ledger.contracts import StakeToken
from ledger.deployment import Deployment
from ledger.types import Address, Wei
from stakeswarm.devnet import DEV_CHAIN_ID, DevnetError, DevnetState, running_devnet
from stakeswarm.home import Home


class NotADevnet(DevnetError):
    """A devnet-only action was asked of something that is not a running devnet."""


@dataclass(frozen=True)
class DevChain:
    """The devnet running in a home: its state (which chain), deployment and connection."""

    state: DevnetState
    deployment: Deployment
    chain: Chain

    @classmethod
    def open(cls, home: Home) -> DevChain:
        """Connect to the devnet running in `home`; `NotADevnet` when none runs there or the
        chain at its URL is not a dev chain."""
        state = running_devnet(home)
        if state is None:
            raise NotADevnet(
                f"no devnet running in {home.root}: `stakeswarm dev` commands act only on a "
                "local devnet; start one with `stakeswarm dev up` (or pass its --home)"
            )
        deployment = Deployment.load(home.devnet_deployment)
        chain = deployment.connect()
        if chain.chain_id != DEV_CHAIN_ID or not deployment.accounts:
            raise NotADevnet(
                f"the chain at {chain.rpc_url} is chain {chain.chain_id} with "
                f"{len(deployment.accounts)} dev accounts: not a devnet (chain {DEV_CHAIN_ID}); "
                "refusing to fund or move time on it"
            )
        return cls(state=state, deployment=deployment, chain=chain)

    def token(self) -> StakeToken:
        """The stake token, sending as the deployer."""
        deployer = Account.from_key(self.deployment.account("deployer").private_key)
        sender = self.chain.sender(deployer)
        return StakeToken(self.chain, self.deployment.contracts.stake_token, sender)

    def send_tokens(self, to: Address, amount: Wei) -> TxResult:
        """Transfer `amount` base units of the stake token from the deployer to `to`."""
        return self.token().transfer(to, amount)

    def add_eth(self, to: Address, amount: Wei) -> Wei:
        """Raise `to`'s native balance by `amount` wei (no transaction); the new balance."""
        balance = Wei(self.chain.eth_balance(to) + amount)
        self.chain.rpc(f"{self.state.chain}_setBalance", [to, hex(balance)])
        return balance

    def advance_time(self, seconds: int) -> int:
        """Move the clock `seconds` forward and mine a block at the new time; its timestamp."""
        if seconds <= 0:
            raise DevnetError(f"time moves forward only: got {seconds} s")
        self.chain.rpc("evm_increaseTime", [seconds])
        self.chain.rpc("evm_mine")
        return self.chain.timestamp()
