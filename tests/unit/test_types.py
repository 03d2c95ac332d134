from eth_utils import keccak

from ledger.types import Leaf, model_id


def make_leaf(**changes: object) -> Leaf:
    fields: dict[str, object] = dict(
        session_id=b"\x01" * 32,
        model_id=model_id("tiny-llama"),
        span_start=2,
        span_end=5,
        step=7,
        tokens=3,
        input_hash=b"\x02" * 32,
        output_hash=b"\x03" * 32,
        sketch_hash=b"\x04" * 32,
        issued_at=1_767_225_600,
    )
    fields.update(changes)
    return Leaf(**fields)  # type: ignore[arg-type]


def test_leaf_encoding_is_ten_words_in_solidity_order() -> None:
    encoded = make_leaf().encode()
    words = [encoded[i : i + 32] for i in range(0, len(encoded), 32)]
    assert len(words) == 10
    assert words[0] == b"\x01" * 32
    assert words[1] == keccak(text="tiny-llama")
    assert [int.from_bytes(w, "big") for w in words[2:6]] == [2, 5, 7, 3]
    assert words[8] == b"\x04" * 32
    assert int.from_bytes(words[9], "big") == 1_767_225_600  # issuedAt, a uint64, last


def test_leaf_hash_changes_with_any_field() -> None:
    base = make_leaf()
    assert make_leaf().hash() == base.hash()
    assert make_leaf(step=8).hash() != base.hash()
    assert make_leaf(output_hash=b"\x05" * 32).hash() != base.hash()
    assert make_leaf(step=8).slot() != base.slot()
    assert make_leaf(output_hash=b"\x05" * 32).slot() == base.slot()
    # Signed at another time, the same step is another leaf for the same slot.
    assert make_leaf(issued_at=1_767_225_601).hash() != base.hash()
    assert make_leaf(issued_at=1_767_225_601).slot() == base.slot()
