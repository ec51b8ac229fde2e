"""Per-session reorder window (layer 1).

Chunks become durable in any order (several workers, several connections), but a Merkle log
takes leaves in index order. The window holds the leaf hashes of chunks past the contiguous
prefix and releases them as soon as the gap before them closes. Its size is bounded by the
supervisor's admission rule (no index beyond ``prefix + reorder_window``).
"""

from __future__ import annotations


class ReorderWindow:
    """Leaves held until every lower index has arrived; ``next_index`` is the prefix length."""

    def __init__(self, next_index: int = 0) -> None:
        if next_index < 0:
            raise ValueError("next_index must be >= 0")
        self.next_index = next_index
        self._held: dict[int, bytes] = {}

    def add(self, index: int, leaf_hash: bytes) -> list[bytes]:
        """Accept one leaf; returns the leaves now ready, in index order (maybe none)."""
        if index < self.next_index or index in self._held:
            raise ValueError(f"index {index} was already accepted")
        self._held[index] = leaf_hash
        ready: list[bytes] = []
        while self.next_index in self._held:
            ready.append(self._held.pop(self.next_index))
            self.next_index += 1
        return ready

    def __contains__(self, index: object) -> bool:
        return index in self._held

    def __len__(self) -> int:
        return len(self._held)

    def held_indices(self) -> list[int]:
        return sorted(self._held)
