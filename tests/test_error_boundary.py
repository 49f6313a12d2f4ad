"""The one error boundary (commands/fail.py): a bug is one line naming the file that holds
its traceback; a damaged run dir or a run's checkpoints/ folder is read, not refused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from bertpretrain.training import checkpoint


def test_a_bug_is_one_line_naming_the_file_that_holds_its_traceback(
    tmp_path, bertpretrain, monkeypatch
):
    import bertpretrain.commands.runs as runs

    def broken(root):
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(runs, "find_runs", broken)
    result = bertpretrain(["runs", str(tmp_path)], tmp_path)
    assert result.code == 1 and "Traceback" not in result.err
    [line] = result.err.strip().splitlines()
    assert "a bug in bertpretrain" in line and "ZeroDivisionError: a bug of ours" in line
    report = Path(re.search(r"traceback is in (\S+);", line)[1])
    assert "Traceback" in report.read_text() and "a bug of ours" in report.read_text()
    report.unlink()


def test_runs_lists_every_run_and_marks_the_damaged_ones(tmp_path, tiny_run, bertpretrain):
    for name in ("good", "bad-summary", "not-an-object", "bad-overrides"):
        shutil.copytree(tiny_run, tmp_path / "outputs" / name, symlinks=True)
    (tmp_path / "outputs" / "bad-summary" / "summary.json").write_text("{not json")
    (tmp_path / "outputs" / "not-an-object" / "summary.json").write_text("[1, 2]")
    (tmp_path / "outputs" / "bad-overrides" / ".hydra" / "overrides.yaml").write_bytes(b"\xff")
    (tmp_path / "outputs" / "bad-overrides" / ".hydra" / "config.yaml").write_text("{[")
    result = bertpretrain(["runs"], tmp_path)
    assert result.code == 0, result.err
    assert "damaged: summary.json unreadable" in result.out
    assert "damaged: summary.json is not a JSON object" in result.out
    assert "damaged: overrides.yaml unreadable" in result.out
    assert result.out.count("/good\n") == 1 and "/good (" not in result.out


def test_a_runs_checkpoints_folder_stands_for_its_newest_checkpoint(
    tmp_path, tiny_run, bertpretrain
):
    folder = tiny_run / checkpoint.SUBDIR
    assert checkpoint.resolve(folder) == checkpoint.list_checkpoints(tiny_run)[-1]
    encoded = bertpretrain(["encode", "a crane", "--checkpoint", str(folder)], tmp_path)
    assert encoded.code == 0, encoded.err
    exported = bertpretrain(["export", str(folder), "out"], tmp_path)
    assert exported.code == 0, exported.err
