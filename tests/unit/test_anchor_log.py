"""The anchor log's files: create-only note folders, entries that survive a crash, the origin."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from lucidd import merkle
from lucidd.daemon.aggregator.anchor_log import ENTRY_SIZE, AnchorLog
from lucidd.daemon.aggregator.notary import ORIGIN_FILE, resolve_origin
from lucidd.daemon.aggregator.note_files import NoteFolder
from lucidd.errors import ConfigError
from lucidd.receipt import note_hash


def test_a_note_folder_writes_each_size_once_and_keeps_the_first(tmp_path: Path) -> None:
    folder = NoteFolder(tmp_path / "checkpoints")
    assert folder.write(7, b"first") is True
    assert folder.write(7, b"second") is False
    assert folder.read(7) == b"first"
    assert folder.write(7, b"attestation", kind="command") is True
    assert folder.write(12, b"later") is True
    assert folder.sizes() == [7, 12]
    assert folder.kinds(7) == ["command"]
    assert folder.index() == {7: {"command"}, 12: set()}
    assert folder.read(8) is None
    assert not [p for p in folder.path.iterdir() if p.name.startswith(".")], "no temp left"
    assert (folder.path.stat().st_mode & 0o777) == 0o700


def _notes(count: int) -> list[tuple[bytes, int, bytes]]:
    return [(uuid.uuid4().bytes, i + 1, os.urandom(100)) for i in range(count)]


def test_appends_are_indexed_by_session_and_size_and_survive_a_reopen(tmp_path: Path) -> None:
    notes = _notes(5)
    log = AnchorLog.open(tmp_path)
    indices = [log.append(s, n, note) for s, n, note in notes]
    assert indices == list(range(5))
    assert log.append(*notes[2]) == 2  # once per (session, size)
    log.sync()
    root = log.merkle.root()
    log.close()
    again = AnchorLog.open(tmp_path)
    assert again.size == 5 and again.merkle.root() == root
    assert again.index_of(notes[3][0], notes[3][1]) == 3
    assert again.logged(notes[1][0]) == [(2, 1)]
    expected = [merkle.leaf_hash(note_hash(note)) for _, _, note in notes]
    assert [again.merkle.leaf(i) for i in range(5)] == expected
    again.close()


def test_leaves_the_log_lost_in_a_crash_are_appended_again_from_the_entries(
    tmp_path: Path,
) -> None:
    notes = _notes(6)
    log = AnchorLog.open(tmp_path)
    for s, n, note in notes[:3]:
        log.append(s, n, note)
    log.sync()
    for s, n, note in notes[3:]:
        log.append(s, n, note)
    log.sync()
    log.close()
    # The worst a crash can leave: entries on disk, the log's files behind them (here: gone).
    shutil.rmtree(tmp_path / "anchor" / "merkle")
    again = AnchorLog.open(tmp_path)
    assert again.size == 6
    reference = merkle.root_of([merkle.leaf_hash(note_hash(note)) for _, _, note in notes])
    assert again.merkle.root() == reference
    again.close()


def test_a_torn_last_entry_is_cut_off(tmp_path: Path) -> None:
    notes = _notes(2)
    log = AnchorLog.open(tmp_path)
    for s, n, note in notes:
        log.append(s, n, note)
    log.sync()
    log.close()
    with open(tmp_path / "anchor" / "entries.bin", "ab") as f:
        f.write(b"\x01" * (ENTRY_SIZE // 2))
    again = AnchorLog.open(tmp_path)
    assert again.size == 2
    assert (tmp_path / "anchor" / "entries.bin").stat().st_size == 2 * ENTRY_SIZE
    again.close()


def test_the_origin_is_derived_once_and_then_kept(tmp_path: Path) -> None:
    first = resolve_origin("", tmp_path)
    assert first.endswith("/lucidd")
    (tmp_path / ORIGIN_FILE).write_text("renamed.example/lucidd\n")
    assert resolve_origin("", tmp_path) == "renamed.example/lucidd"
    assert resolve_origin("set.example/x", tmp_path) == "set.example/x"
    (tmp_path / ORIGIN_FILE).write_text("bad origin\n")
    with pytest.raises(ConfigError, match="origin"):
        resolve_origin("", tmp_path)
