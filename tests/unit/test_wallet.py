"""ledger.wallet: encrypted keystores that unlock into a LocalAccount."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from ledger import wallet
from ledger.errors import WalletError
from ledger.wallet import (
    KeystoreKdf,
    PasswordSource,
    create_wallet,
    import_wallet,
    keystore_address,
    load_wallet,
)

FAST = KeystoreKdf.fast_insecure()
PASSWORD = "correct horse battery staple 7d1f"
ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
ANVIL_ADDRESS_1 = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def test_create_then_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.json"
    created = create_wallet(path, PASSWORD, kdf=FAST)
    loaded = load_wallet(path, PASSWORD)
    assert loaded.address == created.address
    assert loaded.key == created.key
    assert keystore_address(path) == created.address
    # Two wallets are two different keys.
    assert create_wallet(tmp_path / "other.json", PASSWORD, kdf=FAST).address != created.address


def test_keystore_file_is_private_and_holds_no_plain_key(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    account = import_wallet(path, ANVIL_KEY_1, PASSWORD, kdf=FAST)
    assert account.address == ANVIL_ADDRESS_1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert ANVIL_KEY_1.removeprefix("0x") not in text.lower()
    assert PASSWORD not in text
    assert json.loads(text)["crypto"]["kdf"] == "scrypt"


def test_default_kdf_is_production_strength(tmp_path: Path) -> None:
    path = tmp_path / "prod.json"
    account = import_wallet(path, ANVIL_KEY_1, PASSWORD)
    params = json.loads(path.read_text())["crypto"]["kdfparams"]
    assert params["n"] >= 2**18 and params["r"] == 8
    assert load_wallet(path, PASSWORD).address == account.address


def test_weak_kdf_needs_the_explicit_insecure_flag() -> None:
    with pytest.raises(WalletError, match="below the minimum"):
        KeystoreKdf("scrypt", 2**10)
    with pytest.raises(WalletError, match="below the minimum"):
        KeystoreKdf.pbkdf2(10_000)
    with pytest.raises(WalletError, match="power of two"):
        KeystoreKdf("scrypt", 3_000, insecure=True)
    with pytest.raises(WalletError, match="unknown keystore KDF"):
        KeystoreKdf("argon2", 2**18)  # type: ignore[arg-type]
    assert KeystoreKdf("pbkdf2", 1_000, insecure=True).work_factor == 1_000


def test_pbkdf2_keystores_unlock_too(tmp_path: Path) -> None:
    path = tmp_path / "pbkdf2.json"
    import_wallet(path, ANVIL_KEY_1, PASSWORD, kdf=KeystoreKdf("pbkdf2", 1_000, insecure=True))
    assert json.loads(path.read_text())["crypto"]["kdf"] == "pbkdf2"
    assert load_wallet(path, PASSWORD).address == ANVIL_ADDRESS_1


def test_wrong_password_is_a_clear_error_without_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.json"
    import_wallet(path, ANVIL_KEY_1, PASSWORD, kdf=FAST)
    wrong = "not-the-password-91c2"
    with pytest.raises(WalletError, match="wrong password for keystore") as info:
        load_wallet(path, wrong)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert wrong not in str(info.value) and PASSWORD not in str(info.value)
    assert wrong not in caplog.text and PASSWORD not in caplog.text


def test_password_never_reaches_logs_or_reprs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.json"
    monkeypatch.setenv("STAKESWARM_TEST_PASSWORD", PASSWORD)
    source = PasswordSource.from_env("STAKESWARM_TEST_PASSWORD")
    account = import_wallet(path, ANVIL_KEY_1, source, kdf=FAST)
    load_wallet(path, source)
    load_wallet(path, PasswordSource.given(PASSWORD))
    assert "keystore" in caplog.text  # the operations are logged ...
    assert account.address in caplog.text
    assert PASSWORD not in caplog.text  # ... the secrets are not
    assert ANVIL_KEY_1.removeprefix("0x") not in caplog.text.lower()
    assert PASSWORD not in repr(PasswordSource.given(PASSWORD))


def test_password_from_an_environment_variable_named_by_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.json"
    import_wallet(path, ANVIL_KEY_1, PASSWORD, kdf=FAST)
    source = PasswordSource.from_env("STAKESWARM_TEST_PASSWORD")
    monkeypatch.delenv("STAKESWARM_TEST_PASSWORD", raising=False)
    with pytest.raises(WalletError, match="environment variable STAKESWARM_TEST_PASSWORD is not"):
        load_wallet(path, source)
    # Read when needed, not when the source was made.
    monkeypatch.setenv("STAKESWARM_TEST_PASSWORD", PASSWORD)
    assert load_wallet(path, source).address == ANVIL_ADDRESS_1


def test_prompted_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "node.json"
    answers = iter([PASSWORD, PASSWORD, PASSWORD, PASSWORD, "typo"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:  # no terminal under pytest
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(wallet.getpass, "getpass", fake_getpass)
    created = create_wallet(path, PasswordSource.prompted("New password: ", confirm=True), kdf=FAST)
    assert prompts == ["New password: ", "Repeat: "]
    assert load_wallet(path, PasswordSource.prompted()).address == created.address
    with pytest.raises(WalletError, match="do not match"):
        create_wallet(tmp_path / "b.json", PasswordSource.prompted(confirm=True), kdf=FAST)
    assert not (tmp_path / "b.json").exists()

    def no_terminal(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(wallet.getpass, "getpass", no_terminal)
    with pytest.raises(WalletError, match="no password entered"):
        load_wallet(path, PasswordSource.prompted())


def test_missing_and_broken_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WalletError, match="no keystore at .*absent.json"):
        load_wallet(tmp_path / "absent.json", PASSWORD)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(WalletError, match="not a keystore"):
        load_wallet(tmp_path / "notes.txt", PASSWORD)
    (tmp_path / "other.json").write_text('{"version": 3}')
    with pytest.raises(WalletError, match="no 'crypto' section"):
        load_wallet(tmp_path / "other.json", PASSWORD)
    with pytest.raises(WalletError, match="cannot read keystore"):
        load_wallet(tmp_path, PASSWORD)


def test_damaged_keystore_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    import_wallet(path, ANVIL_KEY_1, PASSWORD, kdf=FAST)
    keystore = json.loads(path.read_text())
    del keystore["crypto"]["kdfparams"]
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(keystore))
    with pytest.raises(WalletError, match="unsupported or damaged"):
        load_wallet(damaged, PASSWORD)


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    first = import_wallet(path, ANVIL_KEY_1, PASSWORD, kdf=FAST)
    before = path.read_bytes()
    with pytest.raises(WalletError, match="refusing to overwrite"):
        create_wallet(path, PASSWORD, kdf=FAST)
    assert path.read_bytes() == before
    assert load_wallet(path, PASSWORD).address == first.address


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WalletError, match="empty password"):
        create_wallet(tmp_path / "a.json", "", kdf=FAST)
    with pytest.raises(WalletError, match="not a valid 32-byte") as info:
        import_wallet(tmp_path / "b.json", "0x1234", PASSWORD, kdf=FAST)
    assert "1234" not in str(info.value)
    with pytest.raises(WalletError, match="exactly one of"):
        PasswordSource(password=PASSWORD, env_var="X")
    assert not list(tmp_path.iterdir())


def test_keystore_that_lies_about_its_address_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    import_wallet(path, ANVIL_KEY_1, PASSWORD, kdf=FAST)
    keystore = json.loads(path.read_text())
    keystore["address"] = "f39fd6e51aad88f6f4ce6ab8827279cfffb92266"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(keystore))
    forged.chmod(0o600)
    with pytest.raises(WalletError, match="holds another key"):
        load_wallet(forged, PASSWORD)


def test_loading_a_keystore_others_can_read_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.json"
    import_wallet(path, ANVIL_KEY_1, PASSWORD, kdf=FAST)
    load_wallet(path, PASSWORD)
    assert "accessible by other users" not in caplog.text
    path.chmod(0o644)
    load_wallet(path, PASSWORD)
    assert "accessible by other users (mode 644)" in caplog.text
