"""Payment channels: a client escrows a deposit for one server and pays it by signed vouchers."""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_checksum_address
from web3.types import BlockIdentifier

from ledger.chain import TxResult
from ledger.contracts.base import ContractWrapper, OnApproval
from ledger.contracts.token import StakeToken
from ledger.eip712 import Domain
from ledger.types import Address, ChannelId, Voucher, Wei


@dataclass(frozen=True)
class Channel:
    """One channel (`IPaymentChannels.Channel`)."""

    channel_id: ChannelId
    client: Address  # deposits and signs vouchers
    server: Address  # redeems
    deposit: Wei  # escrowed so far
    redeemed: Wei  # paid to the server so far
    expiry: int  # unix seconds: redeem before, reclaim from
    closed: bool  # reclaimed by the client

    @property
    def remaining(self) -> Wei:
        """What is still escrowed: deposit minus redeemed (0 once closed)."""
        return Wei(0 if self.closed else self.deposit - self.redeemed)


class PaymentChannels(ContractWrapper):
    """Open, top up and reclaim channels as a client; redeem vouchers as a server."""

    abi_name = "PaymentChannels"

    def domain(self) -> Domain:
        """The EIP-712 domain vouchers are signed under (with the deployment's salt)."""
        return Domain.payment_channels(self.chain.chain_id, self.address, self.eip712_salt)

    def get_channel(self, channel_id: ChannelId, *, block: BlockIdentifier = "latest") -> Channel:
        raw = self._call("getChannel", channel_id, block=block)
        return Channel(
            channel_id=channel_id,
            client=Address(to_checksum_address(raw[0])),
            server=Address(to_checksum_address(raw[1])),
            deposit=Wei(int(raw[2])),
            redeemed=Wei(int(raw[3])),
            expiry=int(raw[4]),
            closed=bool(raw[5]),
        )

    def channels_of_server(
        self, server: str, *, from_block: int = 0, block: BlockIdentifier = "latest"
    ) -> list[Channel]:
        """Every channel opened to `server` (from its `ChannelOpened` events since
        `from_block`), as the chain holds it at `block`, in id order."""
        opened = self.events(
            "ChannelOpened", from_block=from_block, server=to_checksum_address(server)
        )
        ids = sorted({ChannelId(int(event.args["channelId"])) for event in opened})
        return [self.get_channel(channel_id, block=block) for channel_id in ids]

    def channel_count(self, *, block: BlockIdentifier = "latest") -> int:
        return int(self._call("channelCount", block=block))

    def total_escrowed(self, *, block: BlockIdentifier = "latest") -> Wei:
        return Wei(int(self._call("totalEscrowed", block=block)))

    def max_duration(self) -> int:
        return int(self._call("maxDuration"))

    def voucher_digest(self, channel_id: ChannelId, cumulative_amount: Wei) -> bytes:
        """The EIP-712 digest the contract recovers a voucher's signer from."""
        return bytes(self._call("voucherDigest", channel_id, cumulative_amount))

    def token(self) -> StakeToken:
        """The escrowed token, writing as this wrapper's sender."""
        return StakeToken(self.chain, self._call("token"), self.sender)

    def open(self, server: str, deposit: Wei, expiry: int) -> TxResult:
        """Open a channel to `server` until `expiry` (unix seconds); approve the deposit first
        or use `open_with_approve`. The new id: `opened_channel_id(result)`."""
        return self._transact("open", to_checksum_address(server), deposit, expiry)

    def open_with_approve(
        self, server: str, deposit: Wei, expiry: int, *, on_approval: OnApproval | None = None
    ) -> TxResult:
        """Open the channel, approving the deposit first if the allowance falls short (only
        when the opening would otherwise succeed)."""
        return self._transact_with_approve(
            self.token(),
            deposit,
            "open",
            to_checksum_address(server),
            deposit,
            expiry,
            on_approval=on_approval,
        )

    @staticmethod
    def opened_channel_id(result: TxResult) -> ChannelId:
        """The channel id an `open` transaction created."""
        return ChannelId(int(result.event("ChannelOpened").args["channelId"]))

    def top_up(self, channel_id: ChannelId, amount: Wei, new_expiry: int) -> TxResult:
        return self._transact("topUp", channel_id, amount, new_expiry)

    def top_up_with_approve(
        self,
        channel_id: ChannelId,
        amount: Wei,
        new_expiry: int,
        *,
        on_approval: OnApproval | None = None,
    ) -> TxResult:
        """`top_up`, approving `amount` first if the allowance falls short."""
        return self._transact_with_approve(
            self.token(), amount, "topUp", channel_id, amount, new_expiry, on_approval=on_approval
        )

    def redeem(self, channel_id: ChannelId, cumulative_amount: Wei, signature: bytes) -> TxResult:
        """As the channel's server, redeem a voucher signed by its client."""
        return self._transact("redeem", channel_id, cumulative_amount, signature)

    def redeem_voucher(self, voucher: Voucher) -> TxResult:
        """`redeem` with a `ledger.types.Voucher` (which must carry its signature)."""
        if not voucher.signature:
            raise ValueError(f"voucher for channel {voucher.channel_id} has no signature")
        return self.redeem(
            ChannelId(voucher.channel_id), Wei(voucher.cumulative_amount), voucher.signature
        )

    def reclaim(self, channel_id: ChannelId) -> TxResult:
        """As the client, after expiry, take back what was not redeemed."""
        return self._transact("reclaim", channel_id)
