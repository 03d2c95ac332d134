// Hardhat 3 compiles contracts/ with the solc-js build from the npm `solc` package
// (no compiler download) and runs the Solidity tests under contracts/test/.
// The Python side (ledger/compile.py) reads the same contracts/solc.json, so both
// produce the same bytecode.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const solc = JSON.parse(readFileSync(new URL("./contracts/solc.json", import.meta.url)));

export default {
  solidity: {
    version: solc.version,
    path: require.resolve("solc/soljson.js"),
    settings: solc.settings,
  },
  paths: {
    sources: "contracts",
    tests: { solidity: "contracts/test" },
  },
  test: {
    solidity: {
      // The shared EIP-712 vector checked by contracts/test/Eip712Vector.t.sol.
      fsPermissions: { readFile: ["contracts/test/vectors/eip712.json"] },
      fuzz: { runs: 256 },
      invariant: { runs: 256, depth: 64, failOnRevert: false },
    },
  },
};
