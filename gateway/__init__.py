"""The OpenAI-compatible gateway: the swarm's front door for every OpenAI SDK and LangChain.

`stakeswarm gateway serve` builds it (`gateway.service`) from a `GatewayConfig`
(`gateway.config`): a paying client of the swarm whose wallet pays the servers
(`gateway.engine`, generation in threads, one inference session per request), API keys with
budgets in the ledger database (`gateway.keys` the rules, `gateway.accounts` the bookkeeping),
and a FastAPI app speaking the OpenAI API (`gateway.api`, request and response shapes in
`gateway.openai_types`). See docs/gateway.md.
"""
