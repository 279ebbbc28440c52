"""gateway.dev.chain against a real anvil node: deploy, mint, burn, roles, snapshots, EIP-1271, cleanup."""

import os

import pytest
from eth_abi import decode
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from gateway.dev.chain import DEV_ACCOUNTS, Anvil, DevChain, anvil_binary, load_artifact

try:
    anvil_binary()
except RuntimeError as exc:  # pragma: no cover - depends on `npm ci` having run in chain/
    pytest.skip(str(exc), allow_module_level=True)

ADMIN, ADMIN_KEY = DEV_ACCOUNTS[0]
ALICE, ALICE_KEY = DEV_ACCOUNTS[1]
MALLORY, MALLORY_KEY = DEV_ACCOUNTS[2]
PLAN_ID = 1

UNAUTHORIZED = "0xe2517d3f"  # AccessControlUnauthorizedAccount(address,bytes32)
INSUFFICIENT = "0x03dee4c5"  # ERC1155InsufficientBalance(address,uint256,uint256,uint256)


@pytest.fixture(scope="module")
def anvil():
    with Anvil() as node:
        yield node


@pytest.fixture(scope="module")
def chain(anvil):
    return DevChain(anvil.rpc_url)


@pytest.fixture(scope="module")
def plan(chain):
    return chain.deploy_credits_plan()


@pytest.fixture(autouse=True)
def _isolated(request):
    """Each test that touches the chain runs in a snapshot, reverted afterwards."""
    if "chain" not in request.fixturenames:
        yield
        return
    chain = request.getfixturevalue("chain")
    snap = chain.snapshot()
    yield
    chain.revert(snap)


def _custom_error(exc: ContractCustomError) -> tuple[str, bytes]:
    data = exc.data if isinstance(exc.data, str) else Web3.to_hex(exc.data)
    return data[:10], bytes.fromhex(data[10:])


def test_dev_accounts_are_anvils(chain, anvil):
    assert chain.w3.eth.chain_id == anvil.chain_id == 31337
    assert chain.w3.eth.accounts == [address for address, _ in DEV_ACCOUNTS]
    for address, key in DEV_ACCOUNTS:
        assert Account.from_key(key).address == address


def test_artifacts_have_abi_and_bytecode():
    for name in ("CreditsPlan", "AccessPass", "SmartWallet"):
        art = load_artifact(name)
        assert art["contractName"] == name
        assert art["abi"] and art["bytecode"].startswith("0x") and len(art["bytecode"]) > 2


def test_mint_credits_and_balances(chain, plan):
    assert Web3.is_checksum_address(plan)
    assert chain.credits_of(plan, ALICE, PLAN_ID) == 0
    chain.mint_credits(plan, ALICE, PLAN_ID, 100)
    assert chain.credits_of(plan, ALICE, PLAN_ID) == 100
    assert chain.credits_of(plan, ALICE, PLAN_ID + 1) == 0
    assert chain.credits_of(plan, MALLORY, PLAN_ID) == 0


def test_admin_burns_credits(chain, plan):
    chain.mint_credits(plan, ALICE, PLAN_ID, 100)
    receipt = chain.transact(plan, "CreditsPlan", "burnCredits", ALICE, PLAN_ID, 30)
    assert receipt["status"] == 1
    assert chain.credits_of(plan, ALICE, PLAN_ID) == 70
    contract = chain.w3.eth.contract(address=plan, abi=load_artifact("CreditsPlan")["abi"])
    (event,) = contract.events.CreditsBurned().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {"from": ALICE, "id": PLAN_ID, "amount": 30, "operator": ADMIN}


def test_burn_more_than_balance_reverts(chain, plan):
    chain.mint_credits(plan, ALICE, PLAN_ID, 5)
    with pytest.raises(ContractCustomError) as info:
        chain.transact(plan, "CreditsPlan", "burnCredits", ALICE, PLAN_ID, 6)
    selector, args = _custom_error(info.value)
    assert selector == INSUFFICIENT
    assert decode(["address", "uint256", "uint256", "uint256"], args) == (ALICE.lower(), 5, 6, PLAN_ID)
    assert chain.credits_of(plan, ALICE, PLAN_ID) == 5


def test_burn_without_burner_role_reverts(chain, plan):
    chain.mint_credits(plan, ALICE, PLAN_ID, 10)
    with pytest.raises(ContractCustomError) as info:
        chain.transact(plan, "CreditsPlan", "burnCredits", ALICE, PLAN_ID, 1, sender_key=MALLORY_KEY)
    selector, args = _custom_error(info.value)
    assert selector == UNAUTHORIZED
    account, role = decode(["address", "bytes32"], args)
    assert account == MALLORY.lower()
    assert role == chain.call(plan, "CreditsPlan", "BURNER_ROLE")
    assert chain.credits_of(plan, ALICE, PLAN_ID) == 10


def test_grant_and_revoke_burner(chain, plan):
    chain.mint_credits(plan, ALICE, PLAN_ID, 10)
    chain.grant_burner(plan, MALLORY)
    chain.transact(plan, "CreditsPlan", "burnCredits", ALICE, PLAN_ID, 4, sender_key=MALLORY_KEY)
    assert chain.credits_of(plan, ALICE, PLAN_ID) == 6
    chain.revoke_burner(plan, MALLORY)
    with pytest.raises(ContractCustomError):
        chain.transact(plan, "CreditsPlan", "burnCredits", ALICE, PLAN_ID, 1, sender_key=MALLORY_KEY)
    assert chain.credits_of(plan, ALICE, PLAN_ID) == 6


def test_snapshot_revert_restores_balance(chain, plan):
    chain.mint_credits(plan, ALICE, PLAN_ID, 50)
    snap = chain.snapshot()
    chain.transact(plan, "CreditsPlan", "burnCredits", ALICE, PLAN_ID, 20)
    chain.mint_credits(plan, MALLORY, PLAN_ID, 7)
    assert chain.credits_of(plan, ALICE, PLAN_ID) == 30
    chain.revert(snap)
    assert chain.credits_of(plan, ALICE, PLAN_ID) == 50
    assert chain.credits_of(plan, MALLORY, PLAN_ID) == 0


def test_access_pass_sequential_ids(chain):
    pass_address = chain.deploy_access_pass()
    assert chain.call(pass_address, "AccessPass", "balanceOf", ALICE) == 0
    assert chain.mint_pass(pass_address, ALICE) == 1
    assert chain.mint_pass(pass_address, MALLORY) == 2
    assert chain.call(pass_address, "AccessPass", "balanceOf", ALICE) == 1
    assert chain.call(pass_address, "AccessPass", "ownerOf", 2) == MALLORY
    with pytest.raises(ContractCustomError):  # only MINTER_ROLE mints
        chain.transact(pass_address, "AccessPass", "mint", MALLORY, sender_key=MALLORY_KEY)


def test_smart_wallet_eip1271(chain, plan):
    wallet = chain.deploy("SmartWallet", ALICE)
    assert chain.call(wallet, "SmartWallet", "owner") == ALICE
    digest = Web3.keccak(text="gateway login challenge")
    by_owner = Account.unsafe_sign_hash(digest, ALICE_KEY).signature
    by_other = Account.unsafe_sign_hash(digest, MALLORY_KEY).signature
    check = lambda sig: chain.call(wallet, "SmartWallet", "isValidSignature", digest, sig)  # noqa: E731
    assert check(by_owner) == bytes.fromhex("1626ba7e")
    assert check(by_other) == bytes.fromhex("ffffffff")
    assert check(b"\x01" * 64) == bytes.fromhex("ffffffff")  # bad length: no revert
    assert check(Web3.keccak(text="other")[:32] + by_owner[32:]) == bytes.fromhex("ffffffff")
    # the wallet can hold credits, so it can be a subscriber
    chain.mint_credits(plan, wallet, PLAN_ID, 3)
    assert chain.credits_of(plan, wallet, PLAN_ID) == 3


def test_stop_leaves_no_process():
    node = Anvil().start()
    pid = node.pid
    assert pid is not None
    assert DevChain(node.rpc_url).w3.eth.block_number == 0
    node.stop()
    assert node.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone and reaped (a zombie would still accept signal 0)
    node.stop()  # idempotent


def test_start_refuses_a_taken_port(anvil):
    node = Anvil(port=anvil.port)
    with pytest.raises(RuntimeError, match="already in use"):
        node.start()
    assert node.pid is None


def test_start_reports_anvil_stderr():
    node = Anvil(chain_id=2**70)  # anvil rejects it: chain ids are u64
    with pytest.raises(RuntimeError, match="anvil exited .*--chain-id"):
        node.start()
    assert node.pid is None
