"""`bertpretrain encode` and the Encoder API, on the tiny checkpoint trained once per session."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from bertpretrain import cli
from bertpretrain.commands.encode import read_inputs
from bertpretrain.data.vocab import token_index
from bertpretrain.encode import Encoder
from bertpretrain.errors import UserError
from bertpretrain.load import default_checkpoint

SENTENCE = "a crane is flying"
PAIR = ("a crane driver came", "he just left")
FILE_LINES = [SENTENCE, "\t".join(PAIR), "The crane zyzzyva"]
TOO_LONG = " ".join(["word"] * 70)  # 72 tokens with <cls>/<sep>; the tiny run's max_len is 64


@pytest.fixture(scope="module")
def encoder(tiny_run) -> Encoder:
    return Encoder.load(tiny_run)


# --- the Python API ------------------------------------------------------------------------


def test_api_wraps_a_sentence_as_in_training(encoder):
    out = encoder.encode(SENTENCE)
    assert out.tokens == ["<cls>", "a", "crane", "is", "flying", "<sep>"]
    assert out.segments == [0] * 6
    assert out.vectors.shape == (6, 128)
    assert out.vectors.dtype == torch.float32 and not out.vectors.is_inference()


def test_api_pair_gets_segment_ids_0_then_1(encoder):
    out = encoder.encode(*PAIR)
    assert out.tokens == [
        "<cls>",
        "a",
        "crane",
        "driver",
        "came",
        "<sep>",
        "he",
        "just",
        "left",
        "<sep>",
    ]
    assert out.segments == [0] * 6 + [1] * 4
    assert out.vectors.shape == (10, 128)


def test_api_cls_is_the_encoders_vector_for_cls_and_sees_the_whole_input(encoder):
    """`cls` is what the encoder's last layer gives the <cls> token (run here on the ids
    directly, without the Encoder's batching), and another second sentence changes it."""
    out = encoder.encode(*PAIR)
    index = token_index(encoder.vocab)
    ids = torch.tensor([[index[token] for token in out.tokens]])  # (1, L)
    with torch.no_grad():
        direct = encoder.model(ids, torch.tensor([out.segments]), torch.tensor([ids.shape[1]]))
    torch.testing.assert_close(out.cls, direct[0, 0].float(), atol=1e-5, rtol=0)  # (H,)
    other = encoder.encode(PAIR[0], "she stayed")
    assert float((other.cls - out.cls).abs().max()) > 1e-3


def test_api_context_changes_a_words_vector_but_the_same_input_does_not(encoder):
    """The reference's crane comparison. The margins are thousands of times float noise;
    a collapsed encoder (optim=d2l) gives a difference below 1e-3 and a cosine of 1.0000."""
    flying, driver = encoder.encode(SENTENCE), encoder.encode(*PAIR)
    assert flying.tokens[2] == driver.tokens[2] == "crane"
    x, y = flying.vectors[2], driver.vectors[2]
    assert float((x - y).abs().max()) > 0.03  # 0.07 for this 6-step run
    assert float(torch.nn.functional.cosine_similarity(x, y, dim=0)) < 0.9999
    assert torch.equal(encoder.encode(SENTENCE).vectors, flying.vectors)


def test_api_different_tokens_of_one_input_get_different_vectors(encoder):
    vectors = encoder.encode(SENTENCE).vectors  # (6, H)
    distances = torch.cdist(vectors, vectors)
    off_diagonal = distances[~torch.eye(len(vectors), dtype=torch.bool)]
    assert float(off_diagonal.min()) > 1.0  # vectors of norm ~11; collapsed: below 0.01


def test_api_lowercases_and_maps_unknown_words_to_unk(encoder):
    out = encoder.encode("The CRANE zyzzyva")
    assert out.words == ["<cls>", "the", "crane", "zyzzyva", "<sep>"]
    assert out.tokens == ["<cls>", "the", "crane", "<unk>", "<sep>"]


def test_api_padding_in_a_batch_changes_no_real_vector(encoder):
    inputs = [SENTENCE, PAIR, "the crane", (TOO_LONG[:100], "he left")]
    batched = encoder.encode_batch(inputs, batch_size=3)
    for x, b in zip(inputs, batched):
        single = encoder.encode(x) if isinstance(x, str) else encoder.encode(*x)
        assert single.tokens == b.tokens and single.segments == b.segments
        torch.testing.assert_close(b.vectors, single.vectors, atol=1e-5, rtol=0)


def test_api_input_over_max_len_fails_unless_truncated(encoder):
    with pytest.raises(UserError, match=r"75 tokens long.*limit is 64.*--truncate"):
        encoder.encode(TOO_LONG, "he left")
    out = encoder.encode(TOO_LONG, "he left", truncate=True)
    assert len(out.tokens) == 64 and out.truncated == 11
    assert out.tokens[-4:] == ["<sep>", "he", "left", "<sep>"]  # only the longer one was cut


def test_api_rejects_empty_text_and_more_than_two_sentences(encoder):
    with pytest.raises(UserError, match="empty"):
        encoder.encode("   ")
    with pytest.raises(UserError, match="3 sentences"):
        encoder.encode_batch([("a", "b", "c")])


def test_api_max_len_can_only_go_below_the_training_one(tiny_run):
    with pytest.raises(UserError, match="5 to 64"):
        Encoder.load(tiny_run, max_len=100)
    short = Encoder.load(tiny_run, max_len=6)
    assert len(short.encode(SENTENCE).tokens) == 6
    with pytest.raises(UserError, match=r"limit is 6 \(--max-len"):
        short.encode(SENTENCE, "he")


def test_default_checkpoint_prefers_outputs_latest_then_the_newest_file(tmp_path):
    older = tmp_path / "outputs" / "old" / "checkpoints" / "step_00000009.pt"
    newer = tmp_path / "outputs" / "new" / "checkpoints" / "step_00000001.pt"
    for i, path in enumerate([older, newer]):
        path.parent.mkdir(parents=True)
        path.touch()
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    assert default_checkpoint(tmp_path) == newer
    (tmp_path / "outputs" / "latest").symlink_to("old", target_is_directory=True)
    assert default_checkpoint(tmp_path).resolve() == older.resolve()


def test_default_checkpoint_missing_says_how_to_train_one(tmp_path):
    with pytest.raises(UserError, match="bertpretrain train model=tiny"):
        default_checkpoint(tmp_path)


def test_file_inputs_split_pairs_on_tabs_and_reject_bad_lines(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("a b\nc\td\n\n")
    assert read_inputs(str(path)) == [["a b"], ["c", "d"]]
    path.write_text("a\n\nb\n")
    with pytest.raises(UserError, match="line 2 is empty"):
        read_inputs(str(path))
    path.write_text("a\tb\tc\n")
    with pytest.raises(UserError, match="line 1 has 3"):
        read_inputs(str(path))


# --- the command line, as real processes -----------------------------------------------------


def _job_table(tiny_run: Path, files: Path, empty: Path) -> dict[str, tuple[list[str], Path]]:
    """Every CLI process these tests start: name -> (arguments, working dir)."""
    home = tiny_run.parent.parent  # holds outputs/latest -> tiny
    ckpt = str(sorted((tiny_run / "checkpoints").glob("step_*.pt"))[-1])
    in_txt, enc = str(files / "in.txt"), ["encode"]
    return {
        "text": ([*enc, SENTENCE], home),
        "pair": ([*enc, *PAIR, "--checkpoint", str(tiny_run)], home),
        "json": ([*enc, SENTENCE, "--checkpoint", ckpt, "--format", "json"], home),
        "npy": ([*enc, SENTENCE, "--output", str(files / "one.npy")], home),
        "token": ([*enc, "a crane saw a Crane", "--token", "crane"], home),
        "file_npz": (
            [*enc, "--file", in_txt, "--output", str(files / "v.npz"), "--batch-size", "2"],
            home,
        ),
        "file_json": ([*enc, "--file", in_txt, "--format", "json"], home),
        # user errors: one of each kind (checkpoint, text, length, file, output) as a process
        "no_checkpoint": ([*enc, SENTENCE], empty),
        "corrupt_checkpoint": ([*enc, SENTENCE, "--checkpoint", str(files / "corrupt.pt")], home),
        "empty_text": ([*enc, ""], home),
        "too_long": ([*enc, TOO_LONG], home),
        "file_missing": ([*enc, "--file", str(files / "nope.txt")], home),
        "bad_output_suffix": ([*enc, SENTENCE, "--output", str(files / "v.csv")], home),
    }


PROCESS_ERRORS = {
    "no_checkpoint": "no checkpoint found.*bertpretrain train model=tiny",
    "corrupt_checkpoint": "corrupt",
    "empty_text": "sentence 1 is empty",
    "too_long": "72 tokens long.*limit is 64.*--truncate",
    "file_missing": "nope.txt does not exist",
    "bad_output_suffix": r"\.npy.*\.npz",
}

# The rest run in-process through cli.main, the console script's own dispatcher: a process
# each would add seconds of torch import per case. {files} and {run} are filled in.
IN_PROCESS_ERRORS = [
    ([SENTENCE, "--checkpoint", "{files}/foreign.pt"], "not a bertpretrain checkpoint"),
    ([SENTENCE, "--checkpoint", "{files}/no/such/run"], "does not exist"),
    (["a", "b", "c"], "got 3 sentences"),
    ([], "no text to encode"),
    ([SENTENCE, "--token", "dog"], "'dog' is not in the input"),
    (["--file", "{files}/latin1.txt"], "cannot be read"),
    (["--file", "{files}/empty.txt"], "is empty"),
    (["--file", "{files}/long.txt"], "long.txt: input 2 is 72 tokens long"),
    ([SENTENCE, "--output", "{files}/no/such/dir/v.npz"], "cannot write"),
    ([SENTENCE, "--token", "crane", "--output", "{files}/v.npy"], "drop --file and --output"),
    (["--bogus"], "unrecognized arguments"),
    ([SENTENCE, "--file", "{files}/in.txt"], "not both"),
    ([SENTENCE, "--max-len", "100"], "5 to 64"),
    ([SENTENCE, "--device", "nonsense"], "not a device"),
]


@pytest.fixture(scope="module")
def files(tiny_run, tmp_path_factory) -> Path:
    """Inputs for the CLI: a batch file, broken files, broken checkpoints."""
    folder = tmp_path_factory.mktemp("encode-files")
    (folder / "in.txt").write_text("\n".join(FILE_LINES) + "\n")
    (folder / "empty.txt").write_text("\n\n")
    (folder / "long.txt").write_text(f"a crane\n{TOO_LONG}\n")
    (folder / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    ckpt = sorted((tiny_run / "checkpoints").glob("step_*.pt"))[-1]
    (folder / "corrupt.pt").write_bytes(ckpt.read_bytes()[:100_000])
    torch.save({"weights": torch.zeros(2)}, folder / "foreign.pt")
    return folder


@pytest.fixture(scope="module")
def runs(tiny_run, files, cli_env, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every CLI process, started once. Each pays torch's import (seconds), so they run side
    by side and the tests below only read their results."""
    jobs = _job_table(tiny_run, files, tmp_path_factory.mktemp("empty"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(run_cli, args, cwd, cli_env, 120)
            for name, (args, cwd) in jobs.items()
        }
        light = pool.submit(_modules_after_import, cli_env)
    results = {name: f.result() for name, f in futures.items()}
    results["import"] = light.result()
    return results


def _modules_after_import(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "import sys, bertpretrain.encode; print(' '.join(sorted(sys.modules)))"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _text_rows(stdout: str) -> dict[int, tuple[str, list[float]]]:
    """The text output's per-token table: position -> (token, first elements)."""
    rows = {}
    for m in re.finditer(r"^\s*(\d+)\s+(\S+)\s+[01]\s+([-+\d. ]+?)( \.\.\.)?$", stdout, re.M):
        rows[int(m[1])] = (m[2], [float(v) for v in m[3].split()])
    return rows


@pytest.mark.slow
def test_cli_text_output_uses_outputs_latest_by_default(runs):
    out = _ok(runs["text"])
    assert "outputs/latest/checkpoints/step_" in out
    assert "tokens     <cls> a crane is flying <sep>" in out
    assert "(1, 6, 128)" in out
    assert [token for token, _ in _text_rows(out).values()] == [
        "<cls>",
        *SENTENCE.split(),
        "<sep>",
    ]


@pytest.mark.slow
def test_cli_pair_from_a_run_dir(runs):
    out = _ok(runs["pair"])
    assert "(1, 10, 128)" in out
    assert "segments   0 0 0 0 0 0 1 1 1 1" in out


@pytest.mark.slow
def test_cli_json_from_a_checkpoint_file_agrees_with_text_and_api(runs, encoder):
    doc = json.loads(_ok(runs["json"]))
    assert doc["tokens"] == ["<cls>", *SENTENCE.split(), "<sep>"]
    assert doc["segments"] == [0] * 6 and doc["shape"] == [1, 6, 128]
    vectors = np.array(doc["vectors"], dtype=np.float32)
    assert vectors.shape == (6, 128) and doc["cls"] == doc["vectors"][0]
    np.testing.assert_array_equal(vectors, encoder.encode(SENTENCE).vectors.numpy())
    for i, (token, shown) in _text_rows(_ok(runs["text"])).items():
        assert token == doc["tokens"][i]
        np.testing.assert_allclose(shown, vectors[i, : len(shown)], atol=6e-5)


@pytest.mark.slow
def test_cli_npy_holds_the_same_vectors_as_json(runs, files):
    _ok(runs["npy"])
    doc = json.loads(_ok(runs["json"]))
    saved = np.load(files / "one.npy")
    assert saved.shape == (1, 6, 128)
    np.testing.assert_array_equal(saved[0], np.array(doc["vectors"], dtype=np.float32))


@pytest.mark.slow
def test_cli_token_prints_every_occurrence_in_full(runs, encoder):
    out = _ok(runs["token"])
    expected = encoder.encode("a crane saw a crane").vectors
    blocks = re.findall(r"^crane at position (\d+) .*\n((?:  .*\n)+)", out, re.M)
    assert [int(p) for p, _ in blocks] == [2, 5]
    for position, numbers in blocks:
        values = [float(v) for v in numbers.split()]
        np.testing.assert_allclose(values, expected[int(position)].numpy(), atol=6e-5)


@pytest.mark.slow
def test_cli_file_batches_to_npz_with_the_one_by_one_vectors(runs, files, encoder):
    assert "wrote" in _ok(runs["file_npz"])
    with np.load(files / "v.npz") as z:
        vectors, lengths, cls, tokens = z["vectors"], z["lengths"], z["cls"], z["tokens"]
    assert vectors.shape == (3, 10, 128) and lengths.tolist() == [6, 10, 5]
    np.testing.assert_array_equal(cls, vectors[:, 0])
    for row, line in enumerate(FILE_LINES):
        single = encoder.encode(*line.split("\t"))
        n = lengths[row]
        assert tokens[row, :n].tolist() == single.tokens and set(tokens[row, n:]) <= {""}
        np.testing.assert_allclose(vectors[row, :n], single.vectors.numpy(), atol=1e-5)
        assert not vectors[row, n:].any()  # padding is zeros


@pytest.mark.slow
def test_cli_file_json_lines_agree_with_the_npz(runs, files):
    _ok(runs["file_npz"])
    docs = [json.loads(line) for line in _ok(runs["file_json"]).splitlines()]
    with np.load(files / "v.npz") as z:
        assert [d["tokens"] for d in docs] == [
            row[:n].tolist() for row, n in zip(z["tokens"], z["lengths"])
        ]
        for doc, row, n in zip(docs, z["vectors"], z["lengths"]):
            np.testing.assert_allclose(doc["vectors"], row[:n], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", PROCESS_ERRORS)
def test_cli_user_errors_are_one_line_and_exit_2(runs, name):
    result = runs[name]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("bertpretrain: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(PROCESS_ERRORS[name], lines[0]), lines[0]


@pytest.mark.parametrize(
    ("args", "needle"), IN_PROCESS_ERRORS, ids=[n for _, n in IN_PROCESS_ERRORS]
)
def test_cli_more_user_errors_are_one_line_and_exit_2(tiny_run, files, capsys, args, needle):
    args = [a.format(files=files, run=tiny_run) for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(tiny_run)]
    with pytest.raises(SystemExit) as exit_:  # anything but SystemExit(2) fails the test
        cli.main(["encode", *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("bertpretrain: error: "), lines
    assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_importing_encode_stays_light(runs):
    loaded = set(_ok(runs["import"]).split())
    assert "torch" in loaded
    heavy = {"hydra", "tensorboard", "bertpretrain.cli", "bertpretrain.commands.train"}
    assert not loaded & (heavy | {"bertpretrain.training.loop", "bertpretrain.training.setup"})
