"""The resumable CSV journal on its own: exact bytes kept after a torn write, the keys a resume skips,
refusals that name the file, and a write that is durable and whole even when the OS writes in pieces."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from xraytriage.scoring import journal as journal_module
from xraytriage.scoring.journal import CsvJournal, JournalMismatch, _last_record_end, _repair_tail, read_rows

WHOLE = b'path,v\n"/a\nb",1\n"/c ""q""",2\n'  # a quoted newline and escaped quotes: 3 records


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
@pytest.mark.parametrize(
    ("tail", "kept"),
    [(b"", len(WHOLE)), (b'"/d\n', len(WHOLE)), (b"/d,", len(WHOLE)), (b'"/d ""\n', len(WHOLE))],
)
def test_the_last_record_end_is_the_byte_after_the_last_unquoted_newline(
    tmp_path: Path, chunk: int, tail: bytes, kept: int
) -> None:
    path = tmp_path / "j.csv"
    path.write_bytes(WHOLE + tail)
    assert _last_record_end(path, chunk) == kept


def test_a_file_without_a_complete_record_ends_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "j.csv"
    path.write_bytes(b'"path\n')
    assert _last_record_end(path) == 0
    path.write_bytes(b"a\nb")
    assert _last_record_end(path, 1) == 2


def test_repair_cuts_exactly_the_partial_record_and_says_how_many_bytes(tmp_path: Path) -> None:
    path = tmp_path / "j.csv"
    path.write_bytes(b"")
    assert _repair_tail(path) == 0
    path.write_bytes(WHOLE)
    assert _repair_tail(path) == 0 and path.read_bytes() == WHOLE
    path.write_bytes(WHOLE + b'"/d\nx')
    assert _repair_tail(path) == 5
    assert path.read_bytes() == WHOLE
    path.write_bytes(b"p")  # a one-byte torn header
    assert _repair_tail(path) == 1 and path.read_bytes() == b""


def test_repair_is_durable_before_anything_is_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j.csv"
    path.write_bytes(WHOLE + b"/d,")
    synced: list[bytes] = []
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: synced.append(path.read_bytes()))
    assert _repair_tail(path) == 3
    assert synced == [WHOLE]


def test_a_torn_one_byte_header_is_replaced_by_the_header(tmp_path: Path) -> None:
    path = tmp_path / "j.csv"
    path.write_bytes(b"p")
    journal = CsvJournal(path, ["path"])
    assert journal.open() == set() and journal.repaired_bytes == 1
    journal.close()
    assert path.read_bytes() == b"path\n"


def test_a_fresh_journal_holds_exactly_its_header_and_then_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "j.csv"
    old = os.umask(0o022)
    try:
        with CsvJournal(path, ["path", "v"]) as journal:
            assert journal.open() == set() and journal.repaired_bytes == 0
            assert path.read_bytes() == b"path,v\n"
            journal.append([["/a", 1], ["/b\nc", "=2"]])
    finally:
        os.umask(old)
    assert path.read_bytes() == b'path,v\n/a,1\n"/b\nc",\'=2\n'
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert list(read_rows(path)) == [{"path": "/a", "v": "1"}, {"path": "/b\nc", "v": "'=2"}]


def test_reopening_returns_the_keys_written_and_appends_after_them(tmp_path: Path) -> None:
    path = tmp_path / "j.csv"
    path.write_bytes(b'id,path,v\n1,/a,x\n3,/short\n2,/b,y\n4,"/c')  # a short row and a torn one
    journal = CsvJournal(path, ["id", "path", "v"], key="path")
    assert journal.open() == {"/a", "/b"}
    assert journal.repaired_bytes == 5
    journal.append([[5, "/d", "z"]])
    journal.close()
    journal.close()  # closing twice is harmless
    assert path.read_bytes() == b"id,path,v\n1,/a,x\n3,/short\n2,/b,y\n5,/d,z\n"
    assert CsvJournal(path, ["id", "path", "v"], key="id").open() == {"1", "2", "5"}


def test_an_empty_existing_file_gets_a_header(tmp_path: Path) -> None:
    path = tmp_path / "j.csv"
    path.touch()
    with CsvJournal(path, ["path"]) as journal:
        assert journal.open() == set()
    assert path.read_bytes() == b"path\n"


def test_a_file_with_other_columns_is_refused_naming_the_file_and_both_layouts(tmp_path: Path) -> None:
    path = tmp_path / "j.csv"
    path.write_bytes(b"path,old\n/a,1\n")
    with pytest.raises(JournalMismatch) as caught:
        CsvJournal(path, ["path", "v"]).open()
    message = str(caught.value)
    assert message.startswith(f"{path}: existing file has columns ['path', 'old'], this run writes")
    assert "['path', 'v']" in message
    assert message.endswith("written by another model or version: choose another output or delete it")
    assert path.read_bytes() == b"path,old\n/a,1\n"


def test_rows_of_another_model_are_refused_naming_column_and_both_values(tmp_path: Path) -> None:
    path = tmp_path / "j.csv"
    path.write_bytes(b"path,model_id,v\n/a,m1,1\n/b,m2,1\n")
    with pytest.raises(JournalMismatch, match=r"model_id='m2' but this run has model_id='m1'") as caught:
        CsvJournal(path, ["path", "model_id", "v"]).open({"model_id": "m1"})
    assert str(caught.value) == (
        f"{path}: holds rows with model_id='m2' but this run has model_id='m1'; "
        "choose another output or delete it to rescore"
    )
    path.write_bytes(b"path,model_id,v\n/a,m1,1\n/b,m1,2\n")
    assert CsvJournal(path, ["path", "model_id", "v"]).open({"model_id": "m1"}) == {"/a", "/b"}


def test_a_journal_that_cannot_be_created_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "j.csv"
    path.symlink_to(tmp_path / "missing" / "target.csv")  # dangling: not there, cannot be created
    with pytest.raises(OSError) as caught:
        CsvJournal(path, ["path"]).open()
    assert caught.value.errno == errno.ENOENT and caught.value.filename == str(path)
    assert caught.value.strerror == os.strerror(errno.ENOENT)
    assert str(path) in str(caught.value)


def test_writing_before_open_or_after_close_is_an_error(tmp_path: Path) -> None:
    journal = CsvJournal(tmp_path / "j.csv", ["path"])
    with pytest.raises(RuntimeError, match=r"^journal is not open$"):
        journal.append([["/a"]])
    journal.open()
    journal.close()
    with pytest.raises(RuntimeError, match=r"^journal is not open$"):
        journal.append([["/a"]])


def test_each_batch_is_written_whole_and_fsynced_even_when_the_os_writes_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j.csv"
    real_write, synced = os.write, []
    monkeypatch.setattr(journal_module.os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: synced.append(path.read_bytes()))
    with CsvJournal(path, ["path", "v"]) as journal:
        journal.open()
        journal.append([])  # nothing to write: no write, no fsync
        journal.append([["/a", 1], ["/b", 2]])
    assert synced == [b"path,v\n", b"path,v\n/a,1\n/b,2\n"]


def test_a_full_disk_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "j.csv"
    with CsvJournal(path, ["path"]) as journal:
        journal.open()

        def full(fd: int, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(journal_module.os, "write", full)
        with pytest.raises(OSError) as caught:
            journal.append([["/a"]])
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert caught.value.strerror == "No space left on device"


def test_file_names_that_are_not_utf8_are_written_as_their_bytes_and_read_back(tmp_path: Path) -> None:
    name, crlf = os.fsdecode(b"/scans/\xff.png"), "/scans/a\r\nb.png"  # a Windows line break kept as is
    path = tmp_path / "j.csv"
    with CsvJournal(path, ["path"]) as journal:
        journal.open()
        journal.append([[name], [crlf]])
    assert path.read_bytes() == b'path\n/scans/\xff.png\n"/scans/a\r\nb.png"\n'
    assert CsvJournal(path, ["path"]).open() == {name, crlf}
    assert [r["path"] for r in read_rows(path)] == [name, crlf]
