"""WikiText-2 download against real HTTP servers on 127.0.0.1 serving a tiny synthetic zip."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bertpretrain.data.download import ARCHIVE, fetch_wikitext2
from bertpretrain.errors import UserError

TEXTS = {
    "train": " = Valkyria = \n The game began development in 2010 . \n",
    "valid": " = Homarus = \n Homarus is a genus of lobsters . \n",
    "test": " = Robert Boulter = \n Robert Boulter is an English actor . \n",
}
TIMEOUT = 5.0


def make_zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buffer.getvalue()


def sha1_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


GOOD_ZIP = make_zip({f"wikitext-2/wiki.{split}.tokens": text for split, text in TEXTS.items()})
GOOD_SHA1 = sha1_of(GOOD_ZIP)


@dataclass
class Mirror:
    """What one test server answers, and the User-Agent of every request it got."""

    body: bytes = GOOD_ZIP
    status: int = 200
    refuse_python_agent: bool = False  # like wikitext.smerity.com
    agents: list[str] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def serve() -> Iterator[Callable[[Mirror], Mirror]]:
    """Start a server for a Mirror on a free port; every server is shut down after the test."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(mirror: Mirror) -> Mirror:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(mirror))
        # A short poll interval keeps shutdown, and so each test, fast.
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        servers.append((server, thread))
        mirror.url = f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE}"
        return mirror

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


def _handler_for(mirror: Mirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            agent = self.headers.get("User-Agent", "")
            mirror.agents.append(agent)
            refused = mirror.refuse_python_agent and agent.startswith("Python-urllib")
            status = 403 if refused else mirror.status
            body = mirror.body if status == 200 else b"no\n"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # keep the test output quiet
            pass

    return Handler


@pytest.fixture
def dead_url() -> str:
    """An address on 127.0.0.1 where nothing listens: the connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ARCHIVE}"


def assert_unpacked(folder: Path) -> None:
    for split, text in TEXTS.items():
        assert (folder / f"wiki.{split}.tokens").read_text() == text


def test_good_archive_is_unpacked_into_root_wikitext2_and_second_call_stays_offline(
    tmp_path: Path, serve
) -> None:
    mirror = serve(Mirror())
    root = tmp_path / "cache"

    folder = fetch_wikitext2(root, [mirror.url], GOOD_SHA1, timeout=TIMEOUT)

    assert folder == root / "wikitext-2"
    assert_unpacked(folder)
    assert sorted(os.listdir(root)) == sorted([ARCHIVE, "wikitext-2"])
    assert (root / ARCHIVE).read_bytes() == GOOD_ZIP
    assert fetch_wikitext2(root, [mirror.url], GOOD_SHA1, timeout=TIMEOUT) == folder
    assert len(mirror.agents) == 1


def test_kept_archive_is_unpacked_again_without_downloading(tmp_path: Path, serve) -> None:
    mirror = serve(Mirror())
    fetch_wikitext2(tmp_path, [mirror.url], GOOD_SHA1, timeout=TIMEOUT)
    (tmp_path / "wikitext-2" / "wiki.valid.tokens").unlink()

    folder = fetch_wikitext2(tmp_path, [mirror.url], GOOD_SHA1, timeout=TIMEOUT)

    assert_unpacked(folder)
    assert len(mirror.agents) == 1


def test_kept_archive_with_wrong_sha1_is_replaced_by_a_download(tmp_path: Path, serve) -> None:
    mirror = serve(Mirror())
    (tmp_path / ARCHIVE).write_bytes(b"an old, broken download")

    folder = fetch_wikitext2(tmp_path, [mirror.url], GOOD_SHA1, timeout=TIMEOUT)

    assert_unpacked(folder)
    assert (tmp_path / ARCHIVE).read_bytes() == GOOD_ZIP
    assert len(mirror.agents) == 1


def test_unreachable_and_404_mirrors_are_skipped_for_a_good_one(
    tmp_path: Path, serve, dead_url: str
) -> None:
    missing = serve(Mirror(status=404))
    good = serve(Mirror())

    folder = fetch_wikitext2(
        tmp_path, [dead_url, missing.url, good.url], GOOD_SHA1, timeout=TIMEOUT
    )

    assert_unpacked(folder)
    assert len(missing.agents) == 1


def test_mirror_serving_wrong_bytes_is_skipped_for_a_good_one(tmp_path: Path, serve) -> None:
    tampered = make_zip({f"wikitext-2/wiki.{split}.tokens": "evil\n" for split in TEXTS})
    bad = serve(Mirror(body=tampered))
    good = serve(Mirror())

    folder = fetch_wikitext2(tmp_path, [bad.url, good.url], GOOD_SHA1, timeout=TIMEOUT)

    assert_unpacked(folder)
    assert (tmp_path / ARCHIVE).read_bytes() == GOOD_ZIP
    assert len(bad.agents) == 1


def test_every_mirror_failing_raises_one_line_user_error_and_leaves_nothing(
    tmp_path: Path, serve, dead_url: str
) -> None:
    forbidden = serve(Mirror(status=403))
    wrong = serve(Mirror(body=b"<html>not the archive</html>"))
    root = tmp_path / "cache"

    with pytest.raises(UserError) as caught:
        fetch_wikitext2(root, [dead_url, forbidden.url, wrong.url], GOOD_SHA1, timeout=TIMEOUT)

    message = str(caught.value)
    assert "\n" not in message
    assert f"{dead_url}: connection refused" in message
    assert f"{forbidden.url}: HTTP 403 Forbidden" in message
    assert (
        f"{wrong.url}: sha1 mismatch (got {sha1_of(wrong.body)}, expected {GOOD_SHA1})" in message
    )
    assert "data.dir" in message
    assert os.listdir(root) == []


def test_no_urls_raises_user_error_pointing_at_data_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.urls is empty.*data.dir"):
        fetch_wikitext2(tmp_path, [], GOOD_SHA1)


def test_own_user_agent_gets_through_a_mirror_that_refuses_python_urllib(
    tmp_path: Path, serve
) -> None:
    mirror = serve(Mirror(refuse_python_agent=True))

    folder = fetch_wikitext2(tmp_path, [mirror.url], GOOD_SHA1, timeout=TIMEOUT)

    assert_unpacked(folder)
    [agent] = mirror.agents
    assert agent and not agent.startswith("Python-urllib")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (make_zip({"wikitext-2/README": "no tokens here\n"}), "holds no wiki.train.tokens"),
        (b"right sha1, but not a zip at all", "not a zip archive"),
    ],
    ids=["zip-without-tokens", "not-a-zip"],
)
def test_archive_with_right_sha1_but_no_tokens_files_raises_and_leaves_nothing(
    tmp_path: Path, serve, body: bytes, reason: str
) -> None:
    mirror = serve(Mirror(body=body))

    with pytest.raises(UserError, match=reason):
        fetch_wikitext2(tmp_path, [mirror.url], sha1_of(body), timeout=TIMEOUT)

    assert os.listdir(tmp_path) == []


def test_members_with_parent_paths_cannot_escape_the_cache_folder(tmp_path: Path, serve) -> None:
    names = ["../../wiki.train.tokens", "/tmp/wiki.valid.tokens", "..\\wiki.test.tokens"]
    body = make_zip(dict(zip(names, TEXTS.values(), strict=True)))
    mirror = serve(Mirror(body=body))
    root = tmp_path / "a" / "cache"

    folder = fetch_wikitext2(root, [mirror.url], sha1_of(body), timeout=TIMEOUT)

    assert_unpacked(folder)
    assert sorted(os.listdir(folder)) == sorted(f"wiki.{split}.tokens" for split in TEXTS)
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["a", "cache", ARCHIVE, "wikitext-2", *os.listdir(folder)]
    )


def test_mirror_that_never_answers_is_skipped_after_the_timeout(tmp_path: Path, serve) -> None:
    good = serve(Mirror())
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/{ARCHIVE}"

        # long enough for the good mirror to answer on a loaded machine
        folder = fetch_wikitext2(tmp_path, [silent_url, good.url], GOOD_SHA1, timeout=2.0)

    assert_unpacked(folder)
