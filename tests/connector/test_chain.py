"""Chain parents of a store job's keys (no vLLM, no GPU)."""

from __future__ import annotations

from connector.chain import chain_parents


def k(n: int, group: int = 0) -> bytes:
    return n.to_bytes(8, "big") + group.to_bytes(4, "big")


def test_a_key_right_after_its_predecessor_in_the_same_group_has_it_as_parent() -> None:
    keys = [k(1), k(2, group=1), k(3), k(4, group=1), k(5), k(7)]
    positions = [4, 4, 5, 5, 7, 8]
    parents = chain_parents(keys, positions, lambda key: key[:-4].hex())
    # 3 follows 1 in group 0 and 4 follows 2 in group 1; 1 and 2 start the job; 5 skips position 6; 7 follows 5.
    assert parents == [None, None, k(1)[:-4].hex(), k(2)[:-4].hex(), None, k(5)[:-4].hex()]
    # Unknown positions (-1) never give a parent.
    assert chain_parents([k(1), k(2)], [-1, -1], lambda key: "x") == [None, None]
    assert chain_parents([k(1), k(2)], [0, 0], lambda key: "x") == [None, None]
