"""`data download` against a real local HTTP server (404s, dropped connections, Range) and the real files."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest
from rich.progress import Progress
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.data import download as dl
from gru_bench.data import registry
from gru_bench.data.registry import DataFile, Dataset
from gru_bench.errors import UserError

PAYLOAD = os.urandom(300_000)  # several CHUNKs, so a drop lands mid-file
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]  # URL path -> body
    drops: dict[str, int]  # URL path -> how many more responses to cut off halfway
    ranges: bool  # honour Range headers
    requests: list[tuple[str, str | None]]  # (path, Range header) of every GET


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path, rng = unquote(self.path), self.headers.get("Range")
        self.server.requests.append((path, rng))
        body = self.server.files.get(path)
        if body is None:
            self.send_error(404)
            return
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and self.server.ranges else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        part = body[start:]
        self.send_header("Content-Length", str(len(part)))
        self.send_header(
            "Content-Type", "text/html" if path.endswith(".html") else "application/octet-stream"
        )
        self.end_headers()
        if self.server.drops.get(path, 0) > 0:
            self.server.drops[path] -= 1
            part = part[: len(part) // 2]
            self.close_connection = True
        self.wfile.write(part)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.drops, srv.ranges, srv.requests = {}, {}, True, []
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "BACKOFF_S", 0.0)


def url(srv: _Server, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_port}{path}"


def toy(monkeypatch: pytest.MonkeyPatch, *files: DataFile) -> None:
    """Register a dataset `toy` made of `files` (the real registry is untouched after the test)."""
    monkeypatch.setitem(registry.DATASETS, "toy", Dataset("toy", "Toy", {}, {}, "eighth", files))


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/toy.bin"


def test_downloads_verifies_and_then_skips(server, data_home, monkeypatch, capsys):
    server.files["/toy.bin"] = PAYLOAD
    toy(monkeypatch, DataFile("toy.bin", "mat", (SHA,), (url(server, "/toy.bin"),)))
    target = data_home / "raw" / "toy" / "toy.bin"
    assert dl.download("toy") == [target]
    assert target.read_bytes() == PAYLOAD
    assert "downloaded" in capsys.readouterr().out
    assert dl.download("toy") == [target]  # present and valid: no new request
    assert len(server.requests) == 1
    assert "present" in capsys.readouterr().out


def test_falls_back_to_next_url_after_404_and_after_retries(server, data_home, monkeypatch):
    server.files["/b/toy.bin"] = server.files["/c/toy.bin"] = PAYLOAD
    server.drops["/b/toy.bin"] = 99  # always cut off: give up after RETRIES + 1 attempts
    urls = tuple(url(server, p) for p in ("/a/toy.bin", "/b/toy.bin", "/c/toy.bin"))
    toy(monkeypatch, DataFile("toy.bin", "mat", (SHA,), urls))
    [path] = dl.download("toy")
    assert path.read_bytes() == PAYLOAD
    tried = [p for p, _ in server.requests]
    assert tried == ["/a/toy.bin"] + ["/b/toy.bin"] * (dl.RETRIES + 1) + ["/c/toy.bin"]


@pytest.mark.parametrize("ranges", [True, False])
def test_dropped_connection_resumes_or_restarts(server, data_home, monkeypatch, ranges):
    server.files["/toy.bin"], server.drops["/toy.bin"], server.ranges = PAYLOAD, 1, ranges
    toy(monkeypatch, DataFile("toy.bin", "mat", (SHA,), (url(server, "/toy.bin"),)))
    [path] = dl.download("toy")
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/toy.bin", None), ("/toy.bin", f"bytes={len(PAYLOAD) // 2}-")]
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy.bin"]  # no temporary file left


def test_hash_mismatch_deletes_partial_file_and_names_hashes(server, data_home, monkeypatch):
    server.files["/toy.bin"] = PAYLOAD
    wrong = "0" * 64
    toy(monkeypatch, DataFile("toy.bin", "mat", (wrong,), (url(server, "/toy.bin"),)))
    with pytest.raises(UserError) as e:
        dl.download("toy")
    msg = str(e.value)
    assert "toy.bin" in msg and wrong in msg and SHA in msg and "\n" not in msg
    folder = data_home / "raw" / "toy"
    assert not folder.exists() or not any(folder.iterdir())


def test_unknown_hash_needs_the_flag(server, data_home, monkeypatch, capsys):
    server.files["/toy.bin"] = server.files["/other.bin"] = PAYLOAD
    toy(
        monkeypatch,
        DataFile("toy.bin", "mat", (), (url(server, "/toy.bin"),)),
        DataFile("other.bin", "pickle", ("1" * 64,), (url(server, "/other.bin"),), required=False),
    )
    with pytest.raises(UserError, match="--allow-unknown-hash"):
        dl.download("toy")
    assert server.requests == []  # nothing is fetched that could not be checked
    paths = dl.download("toy", allow_unknown_hash=True)
    assert [p.read_bytes() for p in paths] == [PAYLOAD, PAYLOAD]
    out = capsys.readouterr()
    assert out.err.count(SHA) == 2 and "unverified" in out.out


def test_wrong_file_already_present_is_replaced(server, data_home, monkeypatch):
    server.files["/toy.bin"] = PAYLOAD
    toy(monkeypatch, DataFile("toy.bin", "mat", (SHA,), (url(server, "/toy.bin"),)))
    target = data_home / "raw" / "toy" / "toy.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    dl.download("toy")
    assert target.read_bytes() == PAYLOAD


def test_ctrl_c_mid_download_keeps_old_file_and_no_temp(server, data_home, monkeypatch):
    server.files["/toy.bin"] = PAYLOAD
    toy(monkeypatch, DataFile("toy.bin", "mat", (SHA,), (url(server, "/toy.bin"),)))
    target = data_home / "raw" / "toy" / "toy.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old")
    update = Progress.update

    def interrupt(self, task, **kw):
        if kw.get("completed"):
            raise KeyboardInterrupt
        update(self, task, **kw)

    monkeypatch.setattr(Progress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        dl.download("toy")
    assert [p.name for p in target.parent.iterdir()] == ["toy.bin"]
    assert target.read_bytes() == b"old"


def test_html_page_is_never_taken_for_the_file(server, data_home, monkeypatch, capsys):
    server.files["/moved.html"] = b"<html>this site has moved</html>"
    toy(monkeypatch, DataFile("toy.pickle", "pickle", (SHA,), (url(server, "/moved.html"),), required=False))
    assert dl.download("toy", allow_unknown_hash=True) == []
    assert "HTML page" in capsys.readouterr().err


def test_optional_file_failure_warns_and_continues(server, data_home, monkeypatch, capsys):
    server.files["/toy.bin"] = PAYLOAD
    toy(
        monkeypatch,
        DataFile("toy.pickle", "pickle", (SHA,), (url(server, "/gone.pickle"),), required=False),
        DataFile("toy.bin", "mat", (SHA,), (url(server, "/toy.bin"),)),
    )
    assert [p.name for p in dl.download("toy")] == ["toy.bin"]
    out = capsys.readouterr()
    assert "warning" in out.err and "toy.pickle" in out.err and "404" in out.err
    assert "missing" in out.out


def test_no_network_is_one_line_pointing_to_source(data_home, monkeypatch):
    urls = (closed_port_url(), "http://nonexistent-host.invalid/toy.bin")
    toy(monkeypatch, DataFile("toy.bin", "mat", (SHA,), urls))
    with pytest.raises(UserError) as e:
        dl.download("toy")
    msg = str(e.value)
    assert "no network access" in msg and "--source" in msg and "\n" not in msg


def test_cli_error_exits_2_without_traceback(data_home, monkeypatch):
    toy(monkeypatch, DataFile("toy.bin", "mat", (SHA,), (closed_port_url(),)))
    result = CliRunner().invoke(app, ["data", "download", "toy"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: no network access") and "--source" in line


def test_source_mirror_url_quotes_file_names(server, data_home, monkeypatch):
    server.files["/mirror/toy file.bin"] = PAYLOAD
    toy(monkeypatch, DataFile("toy file.bin", "mat", (SHA,), ("http://unused.invalid/x",)))
    [path] = dl.download("toy", source=url(server, "/mirror/"), dest=data_home / "elsewhere")
    assert path == data_home / "elsewhere" / "toy file.bin" and path.read_bytes() == PAYLOAD
    assert server.requests == [("/mirror/toy file.bin", None)]


def test_source_folder_picks_the_copy_whose_hash_matches(tmp_path, data_home, monkeypatch):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "b").mkdir()
    (tmp_path / "src" / "a" / "toy.bin").write_bytes(b"a different file")
    (tmp_path / "src" / "b" / "toy.bin").write_bytes(PAYLOAD)
    toy(monkeypatch, DataFile("toy.bin", "mat", (SHA,), ("http://unused.invalid/x",)))
    [path] = dl.download("toy", source=str(tmp_path / "src"))
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(UserError, match="not-there"):
        dl.download("toy", source=str(tmp_path / "not-there"))


def test_cli_source_shared_datasets_gives_every_file_verified(shared_datasets, data_home):
    result = CliRunner().invoke(app, ["data", "download", "all", "--source", str(shared_datasets)])
    assert result.exit_code == 0, result.output
    assert "copied" in result.stdout
    for d in registry.DATASETS.values():
        for f in d.files:
            path = data_home / "raw" / d.key / f.filename
            assert path.exists() or not f.required, path
            if path.exists():
                assert dl.sha256_file(path) in f.sha256
    again = CliRunner().invoke(app, ["data", "download", "all", "--source", str(shared_datasets)])
    assert again.exit_code == 0 and "copied" not in again.stdout and "present" in again.stdout
