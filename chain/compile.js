#!/usr/bin/env node
// Compiles chain/contracts/*.sol offline with solc-js (standard-JSON input) and writes
// chain/artifacts/<ContractName>.json = {contractName, abi, bytecode}. Deterministic output;
// exits non-zero on any compile error. Usage: cd chain && node compile.js
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = __dirname;
const CONTRACTS_DIR = path.join(ROOT, "contracts");
const ARTIFACTS_DIR = path.join(ROOT, "artifacts");
const NODE_MODULES = path.join(ROOT, "node_modules");

function findImports(importPath) {
  const file = path.join(NODE_MODULES, importPath);
  if (!file.startsWith(NODE_MODULES + path.sep) || !fs.existsSync(file)) {
    return { error: `import not found in node_modules: ${importPath}` };
  }
  return { contents: fs.readFileSync(file, "utf8") };
}

function main() {
  const files = fs.readdirSync(CONTRACTS_DIR).filter((f) => f.endsWith(".sol")).sort();
  const sources = {};
  for (const f of files) {
    sources[`contracts/${f}`] = { content: fs.readFileSync(path.join(CONTRACTS_DIR, f), "utf8") };
  }
  const input = {
    language: "Solidity",
    sources,
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion: "cancun",
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
    },
  };

  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const diagnostics = output.errors || [];
  for (const d of diagnostics) {
    process.stderr.write((d.formattedMessage || d.message) + "\n");
  }
  if (diagnostics.some((d) => d.severity === "error")) {
    process.stderr.write("compile failed\n");
    process.exit(1);
  }

  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
  const written = new Set();
  for (const source of Object.keys(sources)) {
    const contracts = (output.contracts || {})[source] || {};
    for (const name of Object.keys(contracts).sort()) {
      const c = contracts[name];
      const bytecode = c.evm.bytecode.object;
      if (!bytecode) continue; // interfaces / abstract contracts
      const artifact = { contractName: name, abi: c.abi, bytecode: "0x" + bytecode };
      fs.writeFileSync(path.join(ARTIFACTS_DIR, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
      written.add(`${name}.json`);
      console.log(`${name}: ${bytecode.length / 2} bytes`);
    }
  }
  // Drop artifacts of contracts that no longer exist, so the folder mirrors the sources.
  for (const f of fs.readdirSync(ARTIFACTS_DIR)) {
    if (f.endsWith(".json") && !written.has(f)) fs.unlinkSync(path.join(ARTIFACTS_DIR, f));
  }
  console.log(`solc ${solc.version()}: ${written.size} artifacts in artifacts/`);
}

main();
