"""A deployment of the stakeswarm contracts: where they live, with what parameters, and how to
deploy them.

One JSON file describes a deployment and every command reads it: RPC URL, chain id, contract
addresses, the directory of the ABIs, the deploy block, the parameters and, on a devnet only,
the funded dev accounts with their private keys and roles. `deploy_all` deploys the contracts in
dependency order (the node registry is built with the address the slasher will have, so both
can point at each other without an owner or an initializer), on a devnet or on any EVM chain,
with a new StakeToken or an existing ERC-20 as the stake token, and waits for confirmations.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_abi.exceptions import DecodingError
from eth_utils import is_address, to_checksum_address

from ledger.compile import load_abis
from ledger.errors import LedgerError
from ledger.types import Address, Wei

if TYPE_CHECKING:  # web3 loads where a chain is used, not with every command that reads a file
    from ledger.chain import Chain, Sender
    from ledger.compile import Artifacts

logger = logging.getLogger(__name__)

FORMAT = 1  # the deployment file format; bump on incompatible changes
TOKEN = 10**18  # one stake token in base units (the token has 18 decimals)
MAX_BPS = 10_000
CONFIRMATION_TIMEOUT = 600.0  # seconds to wait for a deployment's confirmations
# web3_clientVersion prefixes of local dev chains, which mine a block only when a transaction
# comes: waiting there for blocks on top would wait forever, so they are mined on demand
DEV_CHAIN_CLIENTS = ("anvil/", "hardhatnetwork/")


class DeploymentError(LedgerError):
    """A deployment file is missing or invalid, does not match the chain, or deploying failed."""


@dataclass(frozen=True)
class DeploymentParams:
    """Everything the contracts are constructed with. Defaults suit a devnet."""

    token_name: str = "stakeswarm Stake"  # StakeToken ERC20 name (also its EIP-2612 domain)
    token_symbol: str = "SWARM"
    token_supply: Wei = Wei(1_000_000_000 * TOKEN)  # minted to the deployer
    min_stake_per_block: Wei = Wei(10 * TOKEN)  # a node stakes this per block of its span
    unbonding_delay: int = 2 * 86_400  # seconds between unbond and withdraw (nodes, verifiers)
    max_channel_duration: int = 7 * 86_400  # seconds a payment channel may stay open at most
    min_verifier_stake: Wei = Wei(100 * TOKEN)  # a verifier stakes at least this
    quorum: int = 1  # verdict signatures a slash needs
    slash_bps: int = 5_000  # share of a node's stake one slash takes (basis points)
    bounty_bps: int = 2_000  # share of a slash paid to its verifiers or reporter (basis points)
    challenge_window: int = 86_400  # seconds a commit stays slashable; <= unbonding_delay
    max_leaves: int = 4_096  # the most leaves one committed batch may hold (what a verifier audits)
    commit_deadline: int = 2 * 3_600  # seconds after a receipt is issued by which it is committed
    receipt_challenge_period: int = 86_400  # seconds after that deadline a receipt is challengeable
    response_window: int = 6 * 3_600  # seconds a node has to answer a receipt challenge
    challenge_bond: Wei = Wei(TOKEN)  # a challenger's bond, paid to the node if it answers
    reward_recipient: Address | None = None  # receives the reward pool; None: the deployer

    def __post_init__(self) -> None:
        problems = []
        if self.token_supply <= 0:
            problems.append("token_supply must be positive")
        if self.min_stake_per_block <= 0:
            problems.append("min_stake_per_block must be positive")
        if self.min_verifier_stake <= 0:
            problems.append("min_verifier_stake must be positive")
        for name in (
            "unbonding_delay",
            "max_channel_duration",
            "challenge_window",
            "commit_deadline",
            "receipt_challenge_period",
            "response_window",
        ):
            if not 0 < getattr(self, name) < 2**64:
                problems.append(f"{name} must be a positive number of seconds")
        if self.challenge_window > self.unbonding_delay:
            # else a node could unbond and withdraw before its last commit stops being slashable
            problems.append("challenge_window must not exceed unbonding_delay")
        receipt_windows = (
            self.commit_deadline + self.receipt_challenge_period + self.response_window
        )
        if receipt_windows > self.unbonding_delay:
            # else a node could withdraw the stake behind a receipt before it can be enforced
            problems.append(
                "commit_deadline + receipt_challenge_period + response_window must not exceed "
                "unbonding_delay"
            )
        if self.challenge_bond < 0:
            problems.append("challenge_bond must not be negative")
        if not 1 <= self.max_leaves < 2**32:
            problems.append("max_leaves must be between 1 and 2**32 - 1")
        if not 1 <= self.quorum <= 255:
            problems.append("quorum must be between 1 and 255")
        for name in ("slash_bps", "bounty_bps"):
            if not 0 <= getattr(self, name) <= MAX_BPS:
                problems.append(f"{name} must be between 0 and {MAX_BPS}")
        if self.reward_recipient is not None and not is_address(self.reward_recipient):
            problems.append(f"reward_recipient {self.reward_recipient!r} is not an address")
        if problems:
            raise DeploymentError("invalid deployment parameters: " + "; ".join(problems))


@dataclass(frozen=True)
class ContractAddresses:
    """The deployed contracts (checksummed addresses)."""

    stake_token: Address
    verifier_registry: Address
    node_registry: Address
    commitments: Address
    payment_channels: Address
    slasher: Address


CONTRACT_NAMES: Mapping[str, str] = {
    "stake_token": "StakeToken",
    "verifier_registry": "VerifierRegistry",
    "node_registry": "NodeRegistry",
    "commitments": "Commitments",
    "payment_channels": "PaymentChannels",
    "slasher": "Slasher",
}  # field of ContractAddresses -> contract (and ABI) name


@dataclass(frozen=True)
class DevAccount:
    """A funded devnet account. Its key is public knowledge: never use it anywhere else."""

    name: str  # e.g. "deployer", "node-0", "client-1", "verifier-0"
    role: str  # "deployer", "node", "client" or "verifier"
    address: Address
    private_key: str  # 0x-hex


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live and how they were configured; saved as one JSON file."""

    rpc_url: str
    chain_id: int
    contracts: ContractAddresses
    abi_dir: Path  # directory of <Contract>.json ABI files (absolute)
    deploy_block: int  # the block of the first deployment: start event queries here
    deployer: Address
    params: DeploymentParams
    accounts: tuple[DevAccount, ...] = field(default=())  # devnet only

    def save(self, path: Path) -> None:
        """Write the deployment to `path` atomically, readable by the user only (it may hold
        dev keys)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=2)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text + "\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Deployment:
        """Read a deployment file; `DeploymentError` names what is missing or malformed."""
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise DeploymentError(
                f"no deployment file at {path} (start a devnet with `stakeswarm dev up`, "
                "or pass --deployment FILE)"
            ) from None
        except json.JSONDecodeError as exc:
            raise DeploymentError(f"deployment file {path} is not valid JSON: {exc}") from None
        try:
            return cls.from_json(raw, base_dir=Path(path).parent)
        except DeploymentError as exc:
            raise DeploymentError(f"deployment file {path}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "rpcUrl": self.rpc_url,
            "chainId": self.chain_id,
            "contracts": {
                CONTRACT_NAMES[name]: address for name, address in asdict(self.contracts).items()
            },
            "abiDir": str(self.abi_dir),
            "deployBlock": self.deploy_block,
            "deployer": self.deployer,
            "params": asdict(self.params),
            "accounts": [asdict(account) for account in self.accounts],
        }

    @classmethod
    def from_json(cls, raw: Any, base_dir: Path | None = None) -> Deployment:
        """Parse `to_json`'s output; a relative `abiDir` is taken relative to `base_dir`."""
        if not isinstance(raw, dict):
            raise DeploymentError("expected a JSON object")
        if raw.get("format") != FORMAT:
            raise DeploymentError(f"unsupported format {raw.get('format')!r} (expected {FORMAT})")
        missing = [
            key
            for key in ("rpcUrl", "chainId", "contracts", "abiDir", "deployBlock", "deployer")
            if key not in raw
        ]
        if missing:
            raise DeploymentError(f"missing {', '.join(missing)}")
        contracts = raw["contracts"]
        if not isinstance(contracts, dict):
            raise DeploymentError("'contracts' must be an object")
        addresses = {}
        for attr, name in CONTRACT_NAMES.items():
            if name not in contracts:
                raise DeploymentError(f"no address for {name}")
            addresses[attr] = _address(contracts[name], name)
        params_raw = raw.get("params", {})
        known = {f.name for f in fields(DeploymentParams)}
        unknown = set(params_raw) - known
        if unknown:
            raise DeploymentError(f"unknown parameters {', '.join(sorted(unknown))}")
        try:
            params = DeploymentParams(**params_raw)
            accounts = tuple(
                DevAccount(
                    name=a["name"],
                    role=a["role"],
                    address=_address(a["address"], a["name"]),
                    private_key=a["private_key"],
                )
                for a in raw.get("accounts", [])
            )
        except (KeyError, TypeError) as exc:
            raise DeploymentError(f"malformed params or accounts: {exc}") from None
        abi_dir = Path(raw["abiDir"])
        if not abi_dir.is_absolute() and base_dir is not None:
            abi_dir = base_dir / abi_dir
        if not isinstance(raw["chainId"], int) or not isinstance(raw["deployBlock"], int):
            raise DeploymentError("'chainId' and 'deployBlock' must be integers")
        return cls(
            rpc_url=str(raw["rpcUrl"]),
            chain_id=raw["chainId"],
            contracts=ContractAddresses(**addresses),
            abi_dir=abi_dir,
            deploy_block=raw["deployBlock"],
            deployer=_address(raw["deployer"], "deployer"),
            params=params,
            accounts=accounts,
        )

    def account(self, selector: str | int) -> DevAccount:
        """A dev account by name ("node-1"), role (its first account: "client") or index."""
        if not self.accounts:
            raise DeploymentError("this deployment has no dev accounts (not a devnet)")
        if isinstance(selector, int) or selector.isdigit():
            index = int(selector)
            if not 0 <= index < len(self.accounts):
                raise DeploymentError(
                    f"no dev account #{index}; there are {len(self.accounts)} (0-{len(self.accounts) - 1})"
                )
            return self.accounts[index]
        for account in self.accounts:
            if account.name == selector:
                return account
        for account in self.accounts:
            if account.role == selector:
                return account
        names = ", ".join(a.name for a in self.accounts)
        raise DeploymentError(f"no dev account {selector!r}; known: {names}")

    def accounts_with_role(self, role: str) -> list[DevAccount]:
        return [account for account in self.accounts if account.role == role]

    def connect(self, *, rpc_url: str | None = None, request_timeout: float = 30.0) -> Chain:
        """A `Chain` on this deployment's RPC (or `rpc_url`), checked to be the same chain:
        the chain id matches and the stake token has code. `DeploymentError` otherwise."""
        from ledger.chain import Chain

        url = rpc_url or self.rpc_url
        try:
            abis = load_abis(self.abi_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise DeploymentError(f"cannot load the ABIs: {exc}") from None
        chain = Chain(url, abis, request_timeout=request_timeout)
        self.check_chain(chain)
        return chain

    def check_chain(self, chain: Chain) -> None:
        """`DeploymentError` unless `chain` is the chain this deployment lives on."""
        if chain.chain_id != self.chain_id:
            raise DeploymentError(
                f"the RPC at {chain.rpc_url} is chain {chain.chain_id}, but the deployment is "
                f"on chain {self.chain_id}"
            )
        code = chain.w3.eth.get_code(to_checksum_address(self.contracts.stake_token))
        if len(code) == 0:
            raise DeploymentError(
                f"no contract at the deployment's StakeToken {self.contracts.stake_token} on "
                f"{chain.rpc_url}: the chain was restarted or this is another deployment"
            )


def _address(value: Any, what: str) -> Address:
    if not isinstance(value, str) or not is_address(value):
        raise DeploymentError(f"{what}: {value!r} is not an address")
    return Address(to_checksum_address(value))


def deploy_all(
    chain: Chain,
    deployer: Sender,
    params: DeploymentParams,
    artifacts: Artifacts,
    abi_dir: Path,
    *,
    token: Address | None = None,
    confirmations: int = 1,
) -> Deployment:
    """Deploy StakeToken, VerifierRegistry, NodeRegistry, Commitments, PaymentChannels and
    Slasher, in that order, from `deployer`. The NodeRegistry is built with the addresses the
    Commitments and the Slasher will get (the CREATE addresses of the deployer's next nonce and
    of three deployments later); the deployer key must not send anything else meanwhile. The
    Slasher's EIP-712 domain gets a fresh random salt, so receipts and verdicts signed for
    another deployment (a devnet redeployed at the same addresses) never count. With `token`,
    that existing ERC-20 is the stake token (checked by `check_stake_token`; the params' token_*
    are not used) and no StakeToken is deployed. Returns once the last deployment has
    `confirmations` confirmations and every contract still has its code. `DeploymentError` if a
    contract cannot be deployed or did not land where predicted."""
    from web3.types import Nonce
    from web3.utils.address import get_create_address

    from ledger.chain import ChainError

    me = deployer.address
    recipient = params.reward_recipient or me
    start_block = chain.block_number()
    last_block = start_block

    def deploy(name: str, *args: Any) -> Address:
        artifact = artifacts[name]
        if not artifact.deployable:
            raise DeploymentError(f"{name} has no bytecode (abstract or an interface?)")
        try:
            result = deployer.deploy(artifact.abi, artifact.bytecode, *args, name=name)
        except ChainError as exc:
            raise DeploymentError(f"deploying {name} failed: {exc}") from exc
        logger.info("deployed %s at %s (gas %d)", name, result.contract_address, result.gas_used)
        assert result.contract_address is not None
        nonlocal last_block
        last_block = result.block_number
        return Address(result.contract_address)

    if token is None:
        token = deploy(
            "StakeToken", params.token_name, params.token_symbol, me, params.token_supply
        )
    else:
        check_stake_token(chain, token)
    verifiers = deploy("VerifierRegistry", token, params.min_verifier_stake, params.unbonding_delay)
    registry_nonce = int(chain.w3.eth.get_transaction_count(me, "pending"))
    # NodeRegistry (registry_nonce), Commitments (+1), PaymentChannels (+2), Slasher (+3)
    predicted_commitments = get_create_address(me, Nonce(registry_nonce + 1))
    predicted_slasher = get_create_address(me, Nonce(registry_nonce + 3))
    registry = deploy(
        "NodeRegistry",
        token,
        params.min_stake_per_block,
        params.unbonding_delay,
        predicted_commitments,
        predicted_slasher,
    )
    commitments = deploy("Commitments", registry, params.max_leaves)
    channels = deploy("PaymentChannels", token, params.max_channel_duration, os.urandom(32))
    slasher = deploy(
        "Slasher",
        registry,
        commitments,
        verifiers,
        (
            params.quorum,
            params.slash_bps,
            params.bounty_bps,
            params.challenge_window,
            recipient,
            params.commit_deadline,
            params.receipt_challenge_period,
            params.response_window,
            params.challenge_bond,
        ),
        os.urandom(32),
    )
    if slasher != predicted_slasher:
        raise DeploymentError(
            f"the Slasher landed at {slasher}, not at {predicted_slasher} where the NodeRegistry "
            "expects it: another transaction from the deployer interleaved; deploy again"
        )
    await_confirmations(chain, last_block, confirmations)
    for address in (verifiers, registry, commitments, channels, slasher):
        if len(chain.w3.eth.get_code(to_checksum_address(address))) == 0:
            raise DeploymentError(f"no code at {address} once confirmed: the chain reorganized")
    return Deployment(
        rpc_url=chain.rpc_url,
        chain_id=chain.chain_id,
        contracts=ContractAddresses(
            stake_token=token,
            verifier_registry=verifiers,
            node_registry=registry,
            commitments=commitments,
            payment_channels=channels,
            slasher=slasher,
        ),
        abi_dir=abi_dir.resolve(),
        deploy_block=start_block + 1,
        deployer=Address(me),
        params=params,
    )


def check_stake_token(chain: Chain, address: Address) -> None:
    """`DeploymentError` unless `address` looks like an ERC-20 that can be staked: it has code,
    and `decimals()`, `symbol()`, `totalSupply()` answer (the supply is not zero)."""
    from web3.exceptions import Web3Exception

    from ledger.chain import ChainError

    if len(chain.w3.eth.get_code(to_checksum_address(address))) == 0:
        raise DeploymentError(
            f"no contract at {address} on chain {chain.chain_id}: not an ERC-20 stake token"
        )
    token = chain.contract(address, "StakeToken")
    answers = {}
    for function in ("decimals", "symbol", "totalSupply"):
        try:
            answers[function] = chain.call(token, function)
        except (ChainError, Web3Exception, DecodingError, ValueError, OverflowError):
            raise DeploymentError(
                f"the contract at {address} does not answer ERC-20 {function}(): "
                "not an ERC-20 stake token"
            ) from None
    if answers["totalSupply"] == 0:
        raise DeploymentError(f"the ERC-20 at {address} has no supply: nobody could stake it")


def await_confirmations(
    chain: Chain, block_number: int, confirmations: int, *, timeout: float = CONFIRMATION_TIMEOUT
) -> None:
    """Return once the block `block_number` has `confirmations` confirmations (1: it is mined;
    n: n - 1 blocks on top of it). A local dev chain (Anvil, Hardhat) mines only when a
    transaction comes, so there the missing blocks are mined (`evm_mine`) rather than waited
    for. `DeploymentError` after `timeout` seconds."""
    if confirmations < 1:
        raise DeploymentError(f"confirmations must be at least 1, got {confirmations}")
    target = block_number + confirmations - 1
    head = chain.block_number()
    if head < target and _mines_on_demand(chain):
        for _ in range(target - head):
            chain.rpc("evm_mine")
    deadline = time.monotonic() + timeout
    while (head := chain.block_number()) < target:
        if time.monotonic() > deadline:
            raise DeploymentError(
                f"block {block_number} has {max(head - block_number + 1, 0)} of {confirmations} "
                f"confirmations after {timeout:.0f} s"
            )
        time.sleep(1.0)  # a remote chain's blocks: nothing to block on but polling
    logger.info("block %d has %d confirmations", block_number, head - block_number + 1)


def _mines_on_demand(chain: Chain) -> bool:
    from ledger.chain import ChainError

    try:
        version = str(chain.rpc("web3_clientVersion")).lower()
    except ChainError:
        return False
    return version.startswith(DEV_CHAIN_CLIENTS)
