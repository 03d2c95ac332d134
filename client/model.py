"""`DistributedModelForCausalLM`: a Hugging Face causal LM whose blocks run on the swarm.

    model = DistributedModelForCausalLM.from_pretrained(
        "./tiny-llama", initial_peers=[maddr], wallet=account, deployment=deployment,
        budget=10**18)
    ids = model.generate(input_ids, max_new_tokens=16)              # greedy, as HF does
    ids = model.generate(input_ids, do_sample=True, top_p=0.9, temperature=0.7)
    with model.inference_session(max_length=64) as session:
        ids = model.generate(prompt, max_new_tokens=1, session=session)
        ids = model.generate(None, max_new_tokens=1, session=session)   # continues
    model.close()

Only the embeddings, the final norm and the LM head are loaded locally (`node.blocks.
load_client_head`), plus the tokenizer when the folder has one. Decoding is transformers'
own `GenerationMixin.generate` (greedy, sampling with temperature/top-k/top-p and every other
logits processor, EOS and length stopping, streamers, left-padded batches with attention
masks); this class only supplies `forward`, which embeds the positions the servers have not
seen yet, steps them through the swarm (`client.session.InferenceSession`) and applies the
head. Generation runs without a local KV cache (`use_cache=False`): the servers hold it.

With `session=`, `generate` continues that session: its new `inputs` (or none) are appended
to everything the session has seen and generated, and only what the servers have not
processed is sent.

Training (`client.training`, `client.tuning`): built with `tuning_mode="ptune",
pre_seq_len=N`, the model holds `N` trainable prompt embeddings, prepended to every sequence
(generation included). `forward(input_ids or inputs_embeds, labels=...)` with gradients enabled
runs the whole sequence through the swarm as paid forwards, and `loss.backward()` as paid
backwards, reaching the prompts (and `inputs_embeds`); any torch optimizer then trains them.

    model = DistributedModelForCausalLM.from_pretrained(path, ..., tuning_mode="ptune",
                                                        pre_seq_len=8)
    loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward(); optimizer.step()
    model.save_trainable("prompt.safetensors")
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from eth_account.signers.local import LocalAccount
from torch import nn
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from client.client import SwarmClient
from client.config import ClientConfig
from client.errors import BudgetExceededError, ClientConfigError, SessionStateError
from client.session import InferenceSession
from client.training import remote_blocks
from client.tuning import (
    DeepPrompt,
    SoftPrompt,
    build_prompts,
    check_tuning,
    load_trainable,
    save_trainable,
)
from ledger.deployment import Deployment
from node.blocks import ClientHead, load_client_head
from node.device import DeviceError, local_device
from node.families import load_config

logger = logging.getLogger(__name__)


@dataclass
class _SessionIds:
    """The token ids the model layer keeps for one inference session."""

    processed: torch.Tensor | None = None  # [batch, position]: the ids the servers processed
    # generate(inputs_embeds=...): the embeddings the first step sends in place of the
    # placeholder ids standing for them
    embeds: torch.Tensor | None = None  # [batch, length, hidden_size]
    # what the last `generate` in the session returned, and its attention mask: both
    # [batch, length], prepended to the inputs of the next `generate` in the session
    generated: tuple[torch.Tensor, torch.Tensor] | None = None


class DistributedModelForCausalLM(PreTrainedModel, GenerationMixin):
    """A causal LM with local ends and remote blocks (see the module doc)."""

    base_model_prefix = "model"
    _supports_sdpa = True  # attention runs on the servers; nothing local to dispatch
    main_input_name = "input_ids"

    def __init__(
        self,
        config: PretrainedConfig,
        head: ClientHead,
        client: SwarmClient,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        prompts: SoftPrompt | None = None,
    ) -> None:
        super().__init__(config)
        self.head = head  # embeddings, final norm, LM head: frozen, with what is trained
        self.client = client
        self.tokenizer = tokenizer
        # trainable prompt embeddings prepended to every sequence (tuning_mode="ptune"), with
        # a row per block added before each (a `DeepPrompt`, tuning_mode="deep_ptune")
        self.prompts = prompts
        self._session: InferenceSession | None = None  # the session `forward` steps
        # the ids of each session this model stepped; weak, so a session ends as usual
        self._ids: weakref.WeakKeyDictionary[InferenceSession, _SessionIds] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        model_path: str | Path,
        *,
        initial_peers: list[str] | tuple[str, ...],
        wallet: LocalAccount,
        deployment: Deployment | str | Path,
        config: ClientConfig | None = None,
        tuning_mode: str | None = None,
        pre_seq_len: int = 0,
        **options: Any,
    ) -> Any:
        """Load the local ends of the model in `model_path` and join the swarm through
        `initial_peers`, paying with `wallet` (an unlocked account, see `ledger.wallet`) on
        `deployment` (a `Deployment` or its JSON file). `options` are `ClientConfig` fields
        (e.g. `budget=`, `max_price=` in Wei, `model_name=`, `home=`, `device=` for the
        local ends); or pass `config`. `tuning_mode="ptune"` with `pre_seq_len` adds trainable
        prompts (`client.tuning`)."""
        pre_seq_len = check_tuning(tuning_mode, pre_seq_len)
        path = Path(model_path)
        if config is None:
            try:
                config = ClientConfig(
                    model_path=path, initial_peers=tuple(initial_peers), **options
                )
            except TypeError as exc:
                raise ClientConfigError(f"unknown client option: {exc}") from None
        elif options:
            raise ClientConfigError("give either config= or client options, not both")
        if not isinstance(deployment, Deployment):
            deployment = Deployment.load(Path(deployment))
        model_config = load_config(path)
        try:
            device = local_device(config.device)
        except DeviceError as exc:
            raise ClientConfigError(str(exc)) from None
        head = load_client_head(path, torch.float32, device=device)
        tokenizer = load_tokenizer(path)
        client = SwarmClient(config, account=wallet, deployment=deployment)
        try:
            prompts = build_prompts(
                tuning_mode, head.embed_tokens, pre_seq_len, int(model_config.num_hidden_layers)
            )
            model = cls(model_config, head, client, tokenizer, prompts=prompts)
            model.generation_config = _generation_config(path, model_config)
        except BaseException:
            client.close()
            raise
        model.eval()
        return model

    # --- the local ends --------------------------------------------------------------------

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.head.embed_tokens

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head.lm_head

    @property
    def pre_seq_len(self) -> int:
        """Prompt positions prepended to every sequence (0 without prompt tuning)."""
        return 0 if self.prompts is None else self.prompts.length

    def inference_session(
        self, *, max_length: int, batch_size: int | None = None
    ) -> InferenceSession:
        """A session to step token by token and to continue across `generate` calls
        (`max_length` counts the tokens; the servers also hold the prompt's positions)."""
        deep = self.prompts.deep if isinstance(self.prompts, DeepPrompt) else None
        return self.client.inference_session(
            max_length=max_length + self.pre_seq_len, batch_size=batch_size, prompts=deep
        )

    def save_trainable(self, path: str | Path) -> Path:
        """Write the trained prompts to a safetensors file (`client.tuning`)."""
        return save_trainable(self, path)

    def load_trainable(self, path: str | Path) -> None:
        """Load prompts written by `save_trainable` (same `pre_seq_len`)."""
        load_trainable(self, path)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits [batch, new positions, vocab] of the positions of `input_ids` [batch, length]
        that the active session has not processed yet (all of them outside a session, where
        `inputs_embeds` [batch, length, hidden_size] may stand in for them);
        `attention_mask` [batch, length] covers every position.

        With gradients enabled and something to train (`labels`, `inputs_embeds`, or prompts
        in training mode), the whole sequence runs through the swarm as one differentiable
        call (`client.training`): logits of every position, and the mean next-token loss over
        the `labels` (-100: ignored) when given."""
        if torch.is_grad_enabled() and (
            labels is not None
            or inputs_embeds is not None
            or (self.training and self.prompts is not None)
        ):
            return self._train_forward(input_ids, inputs_embeds, attention_mask, labels)
        session = self._session
        if input_ids is None and inputs_embeds is not None and session is None:
            # a one-off forward of embeddings: a session whose step sends them
            placeholders = self._placeholders(None, inputs_embeds, None)
            with self.inference_session(
                max_length=placeholders.shape[1], batch_size=placeholders.shape[0]
            ) as once:
                self._ids_of(once).embeds = inputs_embeds.detach()
                return self._forward_in(once, placeholders, attention_mask)
        if input_ids is None:
            raise SessionStateError(
                "forward needs input_ids (inputs_embeds go with gradients enabled, or outside "
                "an inference session)"
            )
        if session is None:  # a one-off forward
            with self.inference_session(
                max_length=input_ids.shape[1], batch_size=input_ids.shape[0]
            ) as once:
                return self._forward_in(once, input_ids, attention_mask)
        return self._forward_in(session, input_ids, attention_mask)

    def remote_hidden(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block's output [batch, length, hidden_size] at the sequence's positions
        (the prompts' dropped) and the mask [batch, length], through the swarm as paid
        forwards, differentiable (`client.training.remote_blocks`)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise SessionStateError("give input_ids or inputs_embeds, not both")
        if inputs_embeds is None:
            assert input_ids is not None
            inputs_embeds = self.head.embed(input_ids.cpu())
        if inputs_embeds.ndim != 3:
            raise SessionStateError("inputs_embeds are [batch, length, hidden_size]")
        batch, length, _ = inputs_embeds.shape
        mask = (
            torch.ones(batch, length, dtype=torch.long)
            if attention_mask is None
            else attention_mask.cpu().to(torch.long)
        )
        if mask.shape != (batch, length):
            raise SessionStateError(
                f"attention mask {list(mask.shape)} does not match the inputs [{batch}, {length}]"
            )
        hidden = inputs_embeds.cpu().float()
        deep = None
        if self.prompts is not None:
            hidden, mask = self.prompts.prepend(hidden, mask)
            if isinstance(self.prompts, DeepPrompt):
                deep = self.prompts.deep  # [num_blocks, pre_seq_len, hidden_size]
        out = remote_blocks(hidden, mask, self.client.training_route(), deep)
        return out[:, self.pre_seq_len :], mask[:, self.pre_seq_len :]

    def _train_forward(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> CausalLMOutputWithPast:
        hidden, _ = self.remote_hidden(input_ids, inputs_embeds, attention_mask)
        logits = self.head.logits(hidden).float()  # [batch, length, vocab]
        loss = None
        if labels is not None:
            # position i predicts token i + 1
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def _forward_in(
        self,
        session: InferenceSession,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> CausalLMOutputWithPast:
        # input_ids: [batch, length]; the session processed the prompts and the first
        # `done` of them
        done = max(0, session.position - self.pre_seq_len)
        ids = self._ids_of(session)
        if ids.processed is not None and not torch.equal(input_ids[:, :done], ids.processed):
            raise SessionStateError(
                "these input ids disagree with what the inference session already processed"
            )
        new_ids = input_ids[:, done:]
        if new_ids.shape[1] == 0:
            raise SessionStateError("nothing new to process: every position was already sent")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if mask.shape != input_ids.shape:
            raise SessionStateError(
                f"attention mask {list(mask.shape)} does not match input ids "
                f"{list(input_ids.shape)}"
            )
        # the ends compute on the head's device; hidden states travel from the CPU
        hidden = self.head.embed(new_ids.cpu())  # [batch, new, hidden_size]
        if ids.embeds is not None and done == 0:  # generate(inputs_embeds=...): theirs first
            given = ids.embeds.to(hidden.device, hidden.dtype)
            hidden = torch.cat([given, hidden[:, given.shape[1] :]], dim=1)
            ids.embeds = None
        mask = mask.cpu()
        first = 0
        if self.prompts is not None:  # the session's mask covers the prompts' positions too
            if done == 0:  # the session's first step: the prompts go first
                hidden, mask = self.prompts.prepend(hidden, mask)
                hidden, first = hidden.detach(), self.prompts.length
            else:
                mask = self.prompts.prepend_mask(mask)
        out = session.step(hidden, mask)
        ids.processed = input_ids.clone()
        # logits: [batch, new, vocab], where the ids came from (generate keeps them together)
        logits = self.head.logits(out[:, first:]).float().to(input_ids.device)
        return CausalLMOutputWithPast(logits=logits)

    # --- generation ------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(  # type: ignore[override]
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        *,
        session: InferenceSession | None = None,
        **kwargs: Any,
    ) -> Any:
        """transformers' `generate` with the blocks on the swarm; with `session`, continue it.
        A step that the budget cannot pay stops generation with `BudgetExceededError`, whose
        `partial` holds the ids generated until then."""
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        embeds = kwargs.pop("inputs_embeds", None)
        if embeds is not None:
            inputs = self._placeholders(inputs, embeds, session)
        if inputs is not None and (inputs.ndim != 2 or inputs.dtype not in (torch.long, torch.int)):
            raise SessionStateError("inputs must be token ids [batch, length]")
        base = generation_config or self.generation_config
        if (kwargs.get("num_beams") or base.num_beams or 1) != 1:
            raise ClientConfigError("beam search is not supported over the swarm; use num_beams=1")
        attention_mask = kwargs.pop("attention_mask", None)
        generated = None if session is None else self._ids_of(session).generated
        if generated is not None:
            prefix, prefix_mask = generated
            if inputs is None:
                inputs = prefix.new_zeros(prefix.shape[0], 0)
            new_mask = torch.ones_like(inputs) if attention_mask is None else attention_mask
            inputs = torch.cat([prefix, inputs.to(prefix.dtype)], dim=1)
            attention_mask = torch.cat([prefix_mask, new_mask.to(prefix_mask.dtype)], dim=1)
        if inputs is None:
            raise SessionStateError("give input ids (or a session that already has some)")
        if attention_mask is None:
            attention_mask = torch.ones_like(inputs)
        if session is None:
            batch = inputs.shape[0] * (
                kwargs.get("num_return_sequences") or base.num_return_sequences or 1
            )
            max_new = kwargs.get("max_new_tokens", base.max_new_tokens)
            max_length = (  # (the session adds the prompts' positions)
                inputs.shape[1] + max_new
                if max_new is not None
                else kwargs.get("max_length", base.max_length)
            )
            with self.inference_session(max_length=max_length, batch_size=batch) as own:
                return self._generate_in(
                    own, inputs, attention_mask, generation_config, kwargs, embeds
                )
        return self._generate_in(session, inputs, attention_mask, generation_config, kwargs, embeds)

    def _placeholders(
        self, inputs: torch.Tensor | None, embeds: torch.Tensor, session: InferenceSession | None
    ) -> torch.Tensor:
        """Ids standing for `embeds` [batch, length, hidden_size] (generate(inputs_embeds=...)):
        the first step sends the embeddings in their place, and the placeholders are cut from
        what `generate` returns, as transformers does for embeddings."""
        if inputs is not None:
            raise SessionStateError("give input ids or inputs_embeds, not both")
        if session is not None and session.position:
            raise SessionStateError("inputs_embeds start a session; continue one with input ids")
        hidden_size = int(self.config.hidden_size)
        if embeds.ndim != 3 or embeds.shape[-1] != hidden_size or min(embeds.shape[:2]) < 1:
            raise SessionStateError(
                f"inputs_embeds are [batch, length, {hidden_size}], got {list(embeds.shape)}"
            )
        return torch.zeros(embeds.shape[:2], dtype=torch.long)

    def _generate_in(
        self,
        session: InferenceSession,
        inputs: torch.Tensor,
        attention_mask: torch.Tensor,
        generation_config: GenerationConfig | None,
        kwargs: dict[str, Any],
        embeds: torch.Tensor | None = None,
    ) -> Any:
        streamer = kwargs.get("streamer")
        self._ids_of(session).embeds = None if embeds is None else embeds.detach()
        collector = _Collector(streamer)
        kwargs["streamer"] = collector
        kwargs.setdefault("use_cache", False)  # the servers hold the cache
        previous, self._session = self._session, session
        try:
            result = super().generate(
                inputs,
                generation_config=generation_config,
                attention_mask=attention_mask,
                **kwargs,
            )
        except BudgetExceededError as exc:
            exc.partial = collector.ids(inputs)
            raise
        finally:
            self._session = previous
        ids = result if isinstance(result, torch.Tensor) else result.sequences
        new = ids.shape[1] - attention_mask.shape[1]
        mask = torch.cat([attention_mask, attention_mask.new_ones(ids.shape[0], new)], dim=1)
        self._ids_of(session).generated = (ids, mask)
        if embeds is not None:  # the new tokens only, as transformers returns for embeddings
            if isinstance(result, torch.Tensor):
                return result[:, embeds.shape[1] :]
            result.sequences = result.sequences[:, embeds.shape[1] :]
        return result

    def _ids_of(self, session: InferenceSession) -> _SessionIds:
        ids = self._ids.get(session)
        if ids is None:
            ids = self._ids[session] = _SessionIds()
        return ids

    def close(self) -> None:
        """Leave the swarm and close the client's ledger."""
        self.client.close()

    def __enter__(self) -> DistributedModelForCausalLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Collector:
    """A streamer that remembers the tokens generated (to hand back on a budget stop) and
    passes everything on to the caller's streamer."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens: list[torch.Tensor] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.tokens.append(value.reshape(-1, 1))
        self._prompt_seen = True
        if self.inner is not None:
            self.inner.put(value)

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()

    def ids(self, inputs: torch.Tensor) -> torch.Tensor:
        """The inputs followed by every token generated."""
        return torch.cat([inputs, *self.tokens], dim=1) if self.tokens else inputs.clone()


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer of the model folder `path`, None when it has no tokenizer files."""
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(path)


def _generation_config(path: Path, config: PretrainedConfig) -> GenerationConfig:
    if (path / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(path)
    return GenerationConfig.from_model_config(config)
