"""training.download against a local HTTP server (Range support switchable): full, resume, restart, mismatch."""
import hashlib
import http.server
import subprocess
import sys
import threading

import pytest

from training.download import DownloadError, download

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    honour_range = True
    requests = []

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        if self.path != "/Galaxy10_DECals.h5":
            self.send_error(404)
            return
        start = 0
        if rng and self.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:])

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    Handler.honour_range, Handler.requests = True, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_full_download_then_no_second_download(server, tmp_path):
    out = tmp_path / "data" / "Galaxy10_DECals.h5"
    download(f"{server}/Galaxy10_DECals.h5", out, SHA)
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "data" / "Galaxy10_DECals.h5.part").exists()
    assert Handler.requests == [None]
    download(f"{server}/Galaxy10_DECals.h5", out, SHA)
    assert Handler.requests == [None]  # verified file: not fetched again


def test_resume_from_partial(server, tmp_path):
    out = tmp_path / "Galaxy10_DECals.h5"
    (tmp_path / "Galaxy10_DECals.h5.part").write_bytes(PAYLOAD[:300_000])
    download(f"{server}/Galaxy10_DECals.h5", out, SHA)
    assert Handler.requests == ["bytes=300000-"]
    assert out.read_bytes() == PAYLOAD


def test_complete_partial_gets_416_and_verifies(server, tmp_path):
    out = tmp_path / "Galaxy10_DECals.h5"
    (tmp_path / "Galaxy10_DECals.h5.part").write_bytes(PAYLOAD)
    download(f"{server}/Galaxy10_DECals.h5", out, SHA)
    assert out.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path):
    Handler.honour_range = False
    out = tmp_path / "Galaxy10_DECals.h5"
    (tmp_path / "Galaxy10_DECals.h5.part").write_bytes(b"garbage" * 1000)
    download(f"{server}/Galaxy10_DECals.h5", out, SHA)
    assert out.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    out = tmp_path / "Galaxy10_DECals.h5"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{server}/Galaxy10_DECals.h5", out, "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_cli_mismatch_and_404(server, tmp_path):
    out = tmp_path / "g.h5"
    r = subprocess.run([sys.executable, "-m", "training.download", "--out", str(out),
                        "--url", f"{server}/Galaxy10_DECals.h5", "--sha256", "ab" * 32],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "checksum mismatch" in r.stderr
    assert not out.exists() and not (tmp_path / "g.h5.part").exists()
    r = subprocess.run([sys.executable, "-m", "training.download", "--out", str(out),
                        "--url", f"{server}/missing.h5", "--sha256", SHA],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "HTTP 404" in r.stderr and not out.exists()
