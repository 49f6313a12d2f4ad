"""files.py: a file, a folder or a link replaced all or nothing, and no temp left behind."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from bertpretrain import files


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def make_folder(path: Path, contents: dict[str, str]) -> Path:
    path.mkdir()
    for name, text in contents.items():
        (path / name).write_text(text)
    return path


def read_folder(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in path.iterdir()}


OLD = {"a.txt": "old a", "b.txt": "old b"}
NEW = {"a.txt": "new a", "c.txt": "new c", "d.txt": "new d"}


@pytest.fixture(params=["swap", "rename"])
def swap_or_rename(request, monkeypatch) -> str:
    """Each folder test twice: with the one-step swap, and as on a system without one."""
    if request.param == "rename":
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    return request.param


# --- atomic_write ----------------------------------------------------------------------------


def test_atomic_write_replaces_a_file_whole(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    files.atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_text() == "new" and names(tmp_path) == ["f.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failing_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")

    def half_then_full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.atomic_write(path, half_then_full)
    assert path.read_text() == "old" and names(tmp_path) == ["f.json"]


# --- temp_folder, replace_folder, place_folder -----------------------------------------------


def test_replace_folder_puts_a_new_folder_where_there_was_none(tmp_path, swap_or_rename):
    target = tmp_path / "out"
    with files.temp_folder(target) as tmp:
        (tmp / "a.txt").write_text("new a")
        files.replace_folder(tmp, target)
    assert read_folder(target) == {"a.txt": "new a"} and names(tmp_path) == ["out"]


def test_replace_folder_replaces_an_existing_folder_whole(tmp_path, swap_or_rename):
    target = make_folder(tmp_path / "out", OLD)
    with files.temp_folder(target) as tmp:
        for name, text in NEW.items():
            (tmp / name).write_text(text)
        files.replace_folder(tmp, target)
    assert read_folder(target) == NEW  # no file of the old one is left in it
    assert names(tmp_path) == ["out"]  # neither the temp folder nor the old one


def test_a_failing_build_leaves_the_old_folder_and_no_temp(tmp_path):
    target = make_folder(tmp_path / "out", OLD)
    with pytest.raises(OSError), files.temp_folder(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert read_folder(target) == OLD and names(tmp_path) == ["out"]


def test_a_failing_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    """Without the one-step swap the old folder is moved aside first: a failure of the
    rename after it moves it back, and nothing else is left."""
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = make_folder(tmp_path / "out", OLD)
    real_rename, renames_onto_target = os.rename, []

    def rename(src, dst):
        if Path(dst) == target and not renames_onto_target:  # the new one's, not the way back
            renames_onto_target.append(src)
            raise OSError(errno.EIO, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="Input/output"), files.temp_folder(target) as tmp:
        (tmp / "a.txt").write_text("new a")
        files.replace_folder(tmp, target)
    assert renames_onto_target and read_folder(target) == OLD and names(tmp_path) == ["out"]


def test_place_folder_keeps_a_good_folder_there_and_drops_its_own(tmp_path):
    target = make_folder(tmp_path / "out", OLD)
    with files.temp_folder(target) as tmp:
        (tmp / "a.txt").write_text("new a")
        assert not files.place_folder(tmp, target, keep=lambda there: True)
    assert read_folder(target) == OLD and names(tmp_path) == ["out"]


def test_place_folder_replaces_a_folder_that_is_not_good(tmp_path, swap_or_rename):
    target = make_folder(tmp_path / "out", OLD)
    seen = []
    with files.temp_folder(target) as tmp:
        for name, text in NEW.items():
            (tmp / name).write_text(text)
        assert files.place_folder(tmp, target, keep=lambda there: seen.append(there) or False)
    assert seen == [target]
    assert read_folder(target) == NEW and names(tmp_path) == ["out"]


def test_place_folder_takes_the_place_of_an_empty_folder_without_asking(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with files.temp_folder(target) as tmp:
        (tmp / "a.txt").write_text("new a")
        assert files.place_folder(tmp, target, keep=lambda there: pytest.fail("asked"))
    assert read_folder(target) == {"a.txt": "new a"} and names(tmp_path) == ["out"]


def test_a_temp_folder_of_a_killed_writer_is_an_orphan(tmp_path):
    with files.temp_folder(tmp_path / "out") as tmp:
        dead = tmp.with_name(tmp.name.replace(f".{os.getpid()}.", ".999999999."))
        dead.mkdir()  # as a writer whose process is gone would have left it
        files.remove_orphans(tmp_path)
        assert tmp.is_dir() and not dead.exists()  # a live writer's folder stays


def exchange_works(folder: Path) -> bool:
    a, b = folder / "probe-a", folder / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return files._exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


def test_concurrent_readers_always_find_a_whole_folder(tmp_path):
    """Where the system can swap two folders in one step, a reader of the folder while it
    is replaced again and again finds one every time, and each listing of a folder that
    stayed in place while it was listed is a whole one, old or new: never a part."""
    if not exchange_works(tmp_path):
        pytest.skip("this system or filesystem cannot swap two folders in one step")
    target = make_folder(tmp_path / "out", OLD)
    wholes = [sorted(OLD), sorted(NEW)]
    listings, problems, stop = [], [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                fd = os.open(target, os.O_RDONLY)
            except OSError as e:
                problems.append(repr(e))
                continue
            try:
                # An open folder keeps its inode number, so the same number at the path
                # before and after means the listing is of the folder in place throughout
                # (an old folder swapped out is then deleted under its reader).
                before = os.stat(target).st_ino == os.fstat(fd).st_ino
                listing = sorted(os.listdir(fd))
                if before and os.stat(target).st_ino == os.fstat(fd).st_ino:
                    listings.append(listing)
            except FileNotFoundError as e:
                problems.append(repr(e))
            finally:
                os.close(fd)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(200):
            with files.temp_folder(target) as tmp:
                for name, text in (NEW if i % 2 == 0 else OLD).items():
                    (tmp / name).write_text(text)
                files.replace_folder(tmp, target)
    finally:
        stop.set()
        reader.join()
    assert not problems, problems[:3]
    assert listings and all(listing in wholes for listing in listings)
    assert names(tmp_path) == ["out"]


# --- replace_symlink -------------------------------------------------------------------------


def test_replace_symlink_repoints_a_link_and_leaves_no_temp(tmp_path):
    link = tmp_path / "latest"
    files.replace_symlink(link, "run1", target_is_directory=True)
    files.replace_symlink(link, "run2", target_is_directory=True)
    assert os.readlink(link) == "run2" and names(tmp_path) == ["latest"]


def test_a_failing_link_replace_leaves_the_old_link_and_no_temp(tmp_path, monkeypatch):
    link = tmp_path / "latest"
    link.symlink_to("run1")

    def replace(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Read-only"):
        files.replace_symlink(link, "run2")
    assert os.readlink(link) == "run1" and names(tmp_path) == ["latest"]


def test_concurrent_readers_always_find_the_link(tmp_path):
    link = tmp_path / "latest"
    link.symlink_to("run0")
    seen, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(os.readlink(link))
            except OSError as e:
                seen.append(repr(e))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            files.replace_symlink(link, f"run{i % 2}")
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) <= {"run0", "run1"}
    assert names(tmp_path) == ["latest"]
