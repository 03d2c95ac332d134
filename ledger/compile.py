"""Compile the Solidity contracts under `contracts/` for Python: ABIs and bytecode.

Both this module and Hardhat read `contracts/solc.json` (compiler version and settings), so
Python deploys what the Hardhat tests test. The compiler is a native `solc` on PATH when its
version is the pinned one, else `ledger/solc/solcjs` (a `solc` command line over the npm
`solc` package); either runs through py-solc-x's `compile_standard`.

The output is cached in `build/contracts/<key>.json`, the key hashing the sources, the
settings, the compiler version and the OpenZeppelin version, so repeated `dev up`s and test
sessions do not recompile; the ABIs are also written one file per contract to `build/abi/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.errors import LedgerError

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOLCJS = Path(__file__).resolve().parent / "solc" / "solcjs"
CACHE_FORMAT = 1  # bump when the cached layout changes
OUTPUT_SELECTION = {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}}


class CompileError(LedgerError):
    """The contracts could not be compiled; the message carries solc's formatted errors."""


@dataclass(frozen=True)
class CompilerConfig:
    """The compiler version and settings pinned in `contracts/solc.json`."""

    version: str  # e.g. "0.8.28"
    settings: Mapping[str, Any]  # solc standard-JSON settings (optimizer, evmVersion, ...)

    @classmethod
    def load(cls, path: Path) -> CompilerConfig:
        """Read `contracts/solc.json`; a missing or malformed file is a `CompileError`."""
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CompileError(f"compiler config {path} not found") from exc
        except json.JSONDecodeError as exc:
            raise CompileError(f"compiler config {path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("version"), str):
            raise CompileError(f"compiler config {path} needs a string 'version'")
        settings = raw.get("settings", {})
        if not isinstance(settings, dict):
            raise CompileError(f"compiler config {path}: 'settings' must be an object")
        return cls(version=raw["version"], settings=settings)


@dataclass(frozen=True)
class ContractArtifact:
    """One compiled contract."""

    name: str  # contract name, e.g. "NodeRegistry"
    source: str  # source unit name, e.g. "contracts/NodeRegistry.sol"
    abi: tuple[dict[str, Any], ...]
    bytecode: str  # creation code, 0x-hex ("0x" for interfaces and abstract contracts)
    deployed_bytecode: str  # runtime code, 0x-hex

    @property
    def deployable(self) -> bool:
        """True when the contract has creation code (not an interface or abstract)."""
        return len(self.bytecode) > 2


@dataclass(frozen=True)
class Artifacts:
    """Every contract of one compilation, by name; project contracts win name clashes."""

    key: str  # the cache key of the compilation
    compiler_version: str  # the long version, e.g. "0.8.28+commit.7893614a"
    contracts: Mapping[str, ContractArtifact]

    def __getitem__(self, name: str) -> ContractArtifact:
        try:
            return self.contracts[name]
        except KeyError:
            raise KeyError(
                f"no compiled contract named {name!r}; known: {', '.join(sorted(self.contracts))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.contracts

    def __iter__(self) -> Iterator[ContractArtifact]:
        return iter(self.contracts.values())

    def abis(self) -> dict[str, list[dict[str, Any]]]:
        """Name -> ABI of every contract (the input of the revert and event decoders)."""
        return {name: list(artifact.abi) for name, artifact in self.contracts.items()}


def compile_contracts(
    project_root: Path = PROJECT_ROOT,
    build_dir: Path | None = None,
    *,
    force: bool = False,
) -> Artifacts:
    """Compile `project_root/contracts/**/*.sol` (not `contracts/test/`), or load the cached
    result when nothing that matters changed. Writes `build/abi/<Contract>.json`.

    Raises `CompileError` with solc's formatted messages when the sources do not compile, or
    when no compiler of the pinned version is available.
    """
    build_dir = build_dir if build_dir is not None else project_root / "build"
    config = CompilerConfig.load(project_root / "contracts" / "solc.json")
    sources = _read_sources(project_root)
    key = _cache_key(project_root, config, sources)
    cache_file = build_dir / "contracts" / f"{key}.json"

    if not force and cache_file.is_file():
        try:
            artifacts = _artifacts_from_json(json.loads(cache_file.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            logger.warning("ignoring corrupt compile cache %s: %s", cache_file, exc)
        else:
            logger.debug("compile cache hit %s", cache_file)
            write_abis(artifacts, build_dir / "abi")
            return artifacts

    artifacts = _compile(project_root, config, sources, key)
    _atomic_write(cache_file, json.dumps(_artifacts_to_json(artifacts), sort_keys=True))
    write_abis(artifacts, build_dir / "abi")
    logger.info("compiled %d contracts into %s", len(artifacts.contracts), cache_file)
    return artifacts


def write_abis(artifacts: Artifacts, abi_dir: Path) -> None:
    """Write `<abi_dir>/<Contract>.json` for every contract whose ABI is not empty."""
    for artifact in artifacts:
        if not artifact.abi:
            continue
        target = abi_dir / f"{artifact.name}.json"
        text = json.dumps(list(artifact.abi), indent=2, sort_keys=True)
        if not target.is_file() or target.read_text() != text:
            _atomic_write(target, text)


def load_abis(abi_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Read the ABIs `write_abis` wrote (for machines that have no contract sources)."""
    if not abi_dir.is_dir():
        raise FileNotFoundError(f"ABI directory {abi_dir} does not exist")
    abis: dict[str, list[dict[str, Any]]] = {}
    for file in sorted(abi_dir.glob("*.json")):
        try:
            abis[file.stem] = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"ABI file {file} is not valid JSON: {exc}") from exc
    if not abis:
        raise FileNotFoundError(f"ABI directory {abi_dir} holds no ABI files")
    return abis


def find_compiler(version: str) -> Path:
    """A `solc` executable of `version`: a native `solc` on PATH if its version matches,
    else the solc-js wrapper. Raises `CompileError` when neither has that version."""
    import solcx  # py-solc-x loads only where a compiler runs, not with every command
    from solcx.exceptions import SolcError

    native = shutil.which("solc")
    if native is not None:
        try:
            if str(solcx.wrapper.get_solc_version(native)) == version:
                return Path(native)
            logger.debug("native solc at %s is not version %s; using solc-js", native, version)
        except (OSError, SolcError) as exc:
            logger.debug("cannot ask native solc at %s for its version: %s", native, exc)
    if not os.access(SOLCJS, os.X_OK):
        raise CompileError(f"the solc-js wrapper {SOLCJS} is missing or not executable")
    try:
        found = str(solcx.wrapper.get_solc_version(SOLCJS))
    except (OSError, subprocess.SubprocessError, SolcError) as exc:
        raise CompileError(f"the solc-js wrapper {SOLCJS} failed: {exc}") from exc
    if found != version:
        raise CompileError(
            f"contracts/solc.json pins solc {version} but the npm package `solc` is {found}; "
            "run npm ci"
        )
    return SOLCJS


def _read_sources(project_root: Path) -> dict[str, str]:
    contracts = project_root / "contracts"
    sources = {
        path.relative_to(project_root).as_posix(): path.read_text()
        for path in sorted(contracts.rglob("*.sol"))
        if "test" not in path.relative_to(contracts).parts
    }
    if not sources:
        raise CompileError(f"no Solidity sources under {contracts}")
    return sources


def _cache_key(project_root: Path, config: CompilerConfig, sources: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    header = {
        "format": CACHE_FORMAT,
        "version": config.version,
        "settings": config.settings,
        "openzeppelin": _package_version(project_root, "@openzeppelin/contracts"),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name, text in sorted(sources.items()):
        digest.update(f"\0{name}\0".encode())
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:32]


def _package_version(project_root: Path, package: str) -> str | None:
    manifest = project_root / "node_modules" / package / "package.json"
    try:
        return json.loads(manifest.read_text()).get("version")
    except (OSError, json.JSONDecodeError):
        return None


def _compile(
    project_root: Path, config: CompilerConfig, sources: Mapping[str, str], key: str
) -> Artifacts:
    compiler = find_compiler(config.version)
    settings = dict(config.settings)
    settings["outputSelection"] = OUTPUT_SELECTION
    if compiler != SOLCJS:
        # py-solc-x cannot pass --include-path to a native solc; a remapping finds the packages
        settings["remappings"] = ["@openzeppelin/=node_modules/@openzeppelin/"]
    standard_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": settings,
    }
    logger.info("compiling %d Solidity sources with %s", len(sources), compiler)
    import solcx
    from solcx.exceptions import SolcError

    try:
        output = solcx.compile_standard(
            standard_input,
            base_path=str(project_root),
            allow_paths=[str(project_root / "node_modules")],
            solc_binary=compiler,
        )
    except SolcError as exc:
        message = exc.message if getattr(exc, "message", None) else str(exc)
        raise CompileError(f"solc failed to compile the contracts:\n{message}") from exc
    long_version = solcx.wrapper.get_version_str_from_solc_binary(compiler)
    return _artifacts_from_output(output, key, long_version, set(sources))


def _artifacts_from_output(
    output: Mapping[str, Any], key: str, compiler_version: str, project_sources: set[str]
) -> Artifacts:
    contracts: dict[str, ContractArtifact] = {}
    # dependencies first, so a project contract wins a name clash
    ordered = sorted(output.get("contracts", {}).items(), key=lambda kv: kv[0] in project_sources)
    for source, by_name in ordered:
        for name, compiled in by_name.items():
            evm = compiled.get("evm", {})
            contracts[name] = ContractArtifact(
                name=name,
                source=source,
                abi=tuple(compiled.get("abi", [])),
                bytecode="0x" + evm.get("bytecode", {}).get("object", ""),
                deployed_bytecode="0x" + evm.get("deployedBytecode", {}).get("object", ""),
            )
    return Artifacts(key=key, compiler_version=compiler_version, contracts=contracts)


def _artifacts_to_json(artifacts: Artifacts) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "key": artifacts.key,
        "compilerVersion": artifacts.compiler_version,
        "contracts": {
            name: {
                "source": a.source,
                "abi": list(a.abi),
                "bytecode": a.bytecode,
                "deployedBytecode": a.deployed_bytecode,
            }
            for name, a in artifacts.contracts.items()
        },
    }


def _artifacts_from_json(raw: Mapping[str, Any]) -> Artifacts:
    if raw.get("format") != CACHE_FORMAT:
        raise KeyError("format")
    return Artifacts(
        key=raw["key"],
        compiler_version=raw["compilerVersion"],
        contracts={
            name: ContractArtifact(
                name=name,
                source=entry["source"],
                abi=tuple(entry["abi"]),
                bytecode=entry["bytecode"],
                deployed_bytecode=entry["deployedBytecode"],
            )
            for name, entry in raw["contracts"].items()
        },
    )


def _atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so concurrent readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
