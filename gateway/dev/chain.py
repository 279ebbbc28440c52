"""A real local chain for the demo and the tests: anvil from npm plus the compiled plan contracts.

`Anvil` runs the anvil binary installed by `npm ci --ignore-scripts` in `chain/` (directly, so it
can be killed by PID) on a loopback port. `DevChain` is a small synchronous web3 helper that
deploys the artifacts compiled by `chain/compile.js` (CreditsPlan, AccessPass, SmartWallet,
PaymentToken: an EIP-3009 ERC-20 for x402 payments), sends
signed transactions from anvil's well-known dev accounts and reads state.

Never used in the request path: the gateway itself talks to chains asynchronously.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3
from web3.logs import DISCARD

from gateway.process.parent_death import die_with_parent

CHAIN_DIR: Path = Path(__file__).resolve().parents[2] / "chain"

# anvil's 10 default accounts, from the "test test test ... test junk" mnemonic (public knowledge:
# never use these keys outside a local dev chain).
DEV_ACCOUNTS: list[tuple[str, str]] = [
    ("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"),
    ("0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"),
    ("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"),
    ("0x90F79bf6EB2c4f870365E785982E1f101E93b906", "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"),
    ("0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65", "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"),
    ("0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc", "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"),
    ("0x976EA74026E726554dB657fA54763abd0C3a0aa9", "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e"),
    ("0x14dC79964da2C08b23698B3D3cc7Ca32193d9955", "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356"),
    ("0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f", "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97"),
    ("0xa0Ee7A142d267C1f36714E4a8F75612F20a79720", "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"),
]

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_READY_TIMEOUT_S = 15.0


def anvil_binary() -> Path:
    """Path of the anvil binary that npm installed for this machine's architecture."""
    arch = _ARCH.get(platform.machine().lower(), platform.machine().lower())
    path = CHAIN_DIR / "node_modules" / "@foundry-rs" / f"anvil-linux-{arch}" / "bin" / "anvil"
    if not path.is_file():
        raise RuntimeError("anvil not installed: run `npm ci --ignore-scripts` in chain/")
    return path


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def load_artifact(name: str) -> dict:
    """The compiled contract `chain/artifacts/<name>.json`: {contractName, abi, bytecode}."""
    return json.loads((CHAIN_DIR / "artifacts" / f"{name}.json").read_text())


def _chain_id(rpc_url: str) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    req = urllib.request.Request(rpc_url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=1) as resp:
        return int(json.loads(resp.read())["result"], 16)


class Anvil:
    """A local anvil node: `with Anvil() as a: ... a.rpc_url`."""

    def __init__(self, port: int | None = None, chain_id: int = 31337):
        self.port = port if port is not None else free_port()
        self.chain_id = chain_id
        self._proc: subprocess.Popen | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> "Anvil":
        """Start anvil and wait until it answers `eth_chainId` (15 s deadline)."""
        if self._proc is not None:
            return self
        if _port_in_use(self.port):  # else another node there would pass the readiness check
            raise RuntimeError(f"port {self.port} is already in use on 127.0.0.1")
        cmd = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port),
               "--chain-id", str(self.chain_id), "--silent"]
        stderr = tempfile.TemporaryFile()
        # preexec: anvil (a native binary) dies with this process, kill -9 included (the parent-death
        # signal survives exec).
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                      preexec_fn=partial(die_with_parent, os.getpid()))
        deadline = time.monotonic() + _READY_TIMEOUT_S
        try:
            while True:
                if self._proc.poll() is not None:
                    stderr.seek(0)
                    err = stderr.read().decode(errors="replace").strip()
                    code = self._proc.returncode
                    self._proc = None
                    raise RuntimeError(f"anvil exited with code {code} on port {self.port}: {err or '(no stderr)'}")
                try:
                    if _chain_id(self.rpc_url) == self.chain_id:
                        return self
                except OSError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"anvil not ready on {self.rpc_url} after {_READY_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
        except BaseException:  # timeout, Ctrl-C, ...: never leave a half-started node behind
            self.stop()
            raise
        finally:
            stderr.close()

    def stop(self) -> None:
        """Terminate anvil (kill if it does not exit in 5 s) and reap it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> "Anvil":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class DevChain:
    """Synchronous web3 helper: deploy artifacts, send signed transactions, read state."""

    def __init__(self, rpc_url: str):
        self.w3 = Web3(Web3.HTTPProvider(rpc_url))
        self._abis: dict[str, list] = {}

    def _contract(self, address: str, name: str):
        if name not in self._abis:
            self._abis[name] = load_artifact(name)["abi"]
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=self._abis[name])

    def _send(self, fn_or_ctor, sender_key: str) -> dict:
        sender = Account.from_key(sender_key)
        tx = fn_or_ctor.build_transaction({  # estimates gas: a revert raises ContractLogicError here
            "from": sender.address,
            "nonce": self.w3.eth.get_transaction_count(sender.address, "pending"),
            "chainId": self.w3.eth.chain_id,
        })
        signed = sender.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.01)
        if receipt["status"] != 1:
            raise RuntimeError(f"transaction {tx_hash.to_0x_hex()} reverted")
        return dict(receipt)

    def deploy(self, name: str, *args, sender_key: str = DEV_ACCOUNTS[0][1]) -> str:
        art = load_artifact(name)
        self._abis[name] = art["abi"]
        factory = self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        receipt = self._send(factory.constructor(*args), sender_key)
        return Web3.to_checksum_address(receipt["contractAddress"])

    def transact(self, address: str, name: str, fn: str, *args, sender_key: str = DEV_ACCOUNTS[0][1]) -> dict:
        return self._send(self._contract(address, name).functions[fn](*args), sender_key)

    def call(self, address: str, name: str, fn: str, *args):
        return self._contract(address, name).functions[fn](*args).call()

    def snapshot(self) -> str:
        return self.w3.manager.request_blocking("evm_snapshot", [])

    def revert(self, snap_id: str) -> None:
        """Restore a snapshot (anvil drops it once used: take a new one to revert again)."""
        if not self.w3.manager.request_blocking("evm_revert", [snap_id]):
            raise RuntimeError(f"evm_revert failed for snapshot {snap_id}")

    def deploy_credits_plan(self, admin: str = DEV_ACCOUNTS[0][0]) -> str:
        return self.deploy("CreditsPlan", admin, "")

    def deploy_access_pass(self, admin: str = DEV_ACCOUNTS[0][0]) -> str:
        return self.deploy("AccessPass", admin)

    def mint_credits(self, plan: str, to: str, token_id: int, amount: int) -> None:
        self.transact(plan, "CreditsPlan", "mint", to, token_id, amount)

    def credits_of(self, plan: str, holder: str, token_id: int) -> int:
        return self.call(plan, "CreditsPlan", "balanceOf", holder, token_id)

    def mint_pass(self, pass_address: str, to: str) -> int:
        receipt = self.transact(pass_address, "AccessPass", "mint", to)
        events = self._contract(pass_address, "AccessPass").events.Transfer().process_receipt(receipt, errors=DISCARD)
        return events[0]["args"]["tokenId"]

    def grant_burner(self, plan: str, operator: str) -> None:
        role = self.call(plan, "CreditsPlan", "BURNER_ROLE")
        self.transact(plan, "CreditsPlan", "grantRole", role, operator)

    def revoke_burner(self, plan: str, operator: str) -> None:
        role = self.call(plan, "CreditsPlan", "BURNER_ROLE")
        self.transact(plan, "CreditsPlan", "revokeRole", role, operator)

    def deploy_payment_token(self, owner: str = DEV_ACCOUNTS[0][0], name: str = "Demo USD",
                             symbol: str = "DUSD") -> str:
        """An EIP-3009 ERC-20 (6 decimals; EIP-712 domain `name`, version "1") for x402 payments."""
        return self.deploy("PaymentToken", owner, name, symbol)

    def mint_tokens(self, token: str, to: str, amount: int) -> None:
        """Mint `amount` atomic units (10**6 per token) to a demo payer."""
        self.transact(token, "PaymentToken", "mint", to, amount)

    def token_balance(self, token: str, holder: str) -> int:
        return self.call(token, "PaymentToken", "balanceOf", holder)


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway.dev.chain deploy --rpc-url URL [--mint ADDR=N ...]`: the one-shot
    deploy job of docker-compose (a local dev chain only: it uses anvil's public dev keys)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gateway.dev.chain")
    parser.add_argument("action", choices=["deploy"])
    parser.add_argument("--rpc-url", required=True)
    parser.add_argument("--mint", action="append", default=[], metavar="ADDRESS=CREDITS")
    parser.add_argument("--token-id", type=int, default=1)
    args = parser.parse_args(argv)
    chain = DevChain(args.rpc_url)
    plan = chain.deploy_credits_plan()
    for item in args.mint:
        holder, _, amount = item.partition("=")
        chain.mint_credits(plan, Web3.to_checksum_address(holder), args.token_id, int(amount))
    print(f"CreditsPlan deployed at {plan}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
