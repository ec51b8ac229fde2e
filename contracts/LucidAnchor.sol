// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title LucidAnchor: a public record of lucidd anchor-log checkpoints.
/// @notice Anyone may anchor a checkpoint; the event is the evidence that the checkpoint note
/// existed by the time of its block. The first anchoring of a note hash is the one recorded
/// in `anchoredAt`; later ones still emit an event but never move that block.
contract LucidAnchor {
    /// @notice noteHash => number of the block that first anchored it (0: never; block 0,
    /// the genesis block, holds no transactions).
    mapping(bytes32 => uint256) public anchoredAt;

    event Anchored(
        address indexed submitter, bytes32 indexed noteHash, string origin, uint64 size, bytes32 root
    );

    /// @param origin the log's origin line (its name in the checkpoint note)
    /// @param size the tree size of the checkpoint
    /// @param root the checkpoint's root hash
    /// @param noteHash SHA-256 of the signed checkpoint note
    function anchor(string calldata origin, uint64 size, bytes32 root, bytes32 noteHash) external {
        if (anchoredAt[noteHash] == 0) {
            anchoredAt[noteHash] = block.number;
        }
        emit Anchored(msg.sender, noteHash, origin, size, root);
    }
}
