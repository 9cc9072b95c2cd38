"""A loopback S3 endpoint for benchmarks: HEAD, ranged GET, HeadBucket and ListObjectsV2 over
the files of a folder laid out `<root>/<bucket>/<key>`, each range sent with sendfile from
the file itself (never read into memory), so the endpoint costs the client almost nothing.

    python bench/s3_range_server.py DIR [--port N]
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import os
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root.resolve()
        self.requests: Counter[str] = Counter()
        """Requests served by kind: `HEAD`, `GET` (a range), `GET footer` (a range that ends
        at the end of the object: the footer), `LIST`."""
        self._count_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def count(self, kind: str) -> None:
        with self._count_lock:
            self.requests[kind] += 1

    def take_counts(self) -> dict[str, int]:
        """The counts since the last call, which resets them."""
        with self._count_lock:
            out = dict(self.requests)
            self.requests.clear()
        return out

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many ranges
    # The headers and a small body go out as two writes: with Nagle's algorithm the body
    # waits for the client's delayed ACK of the headers, 40 ms per small object on Linux.
    disable_nagle_algorithm = True
    server: RangeServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _target(self) -> tuple[str, str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        return bucket, key, parse_qs(parts.query)

    def _file(self, bucket: str, key: str) -> Path | None:
        path = (self.server.root / bucket / key).resolve()
        if self.server.root not in path.parents or not path.is_file():
            return None
        return path

    def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _missing(self, code: str) -> None:
        xml = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
        self._reply(404, xml, {"Content-Type": "application/xml"})

    def _object_headers(self, path: Path) -> dict[str, str]:
        st = path.stat()
        etag = hashlib.md5(f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}".encode()).hexdigest()
        return {
            "ETag": f'"{etag}"',
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }

    def do_HEAD(self) -> None:
        bucket, key, _ = self._target()
        if not key:
            exists = (self.server.root / bucket).is_dir()
            self._reply(200) if exists else self._missing("NoSuchBucket")
            return
        path = self._file(bucket, key)
        if path is None:
            self._missing("NoSuchKey")
            return
        self.server.count("HEAD")
        headers = self._object_headers(path)
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()

    def do_GET(self) -> None:
        bucket, key, query = self._target()
        if not key:
            self.server.count("LIST")
            self._list(bucket, query)
            return
        path = self._file(bucket, key)
        if path is None:
            self._missing("NoSuchKey")
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        code = 200
        spec = self.headers.get("Range", "")
        if spec.startswith("bytes="):
            first, _, last = spec[6:].split(",")[0].strip().partition("-")
            if first:
                start, end = int(first), min(int(last) if last else size - 1, size - 1)
            else:
                start, end = max(size - int(last), 0), size - 1
            if start > end:
                self._reply(416, headers={"Content-Range": f"bytes */{size}"})
                return
            code = 206
        self.server.count("GET footer" if end == size - 1 else "GET")
        self.send_response(code)
        for name, value in self._object_headers(path).items():
            self.send_header(name, value)
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.flush()
        with open(path, "rb") as f:
            offset, left = start, end - start + 1
            while left > 0:
                sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, left)
                if sent == 0:
                    break
                offset += sent
                left -= sent

    def _list(self, bucket: str, query: dict[str, list[str]]) -> None:
        base = self.server.root / bucket
        if not base.is_dir():
            self._missing("NoSuchBucket")
            return
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        keys, prefixes = [], set()
        for dirpath, _, files in os.walk(base):
            for name in files:
                key = (Path(dirpath) / name).relative_to(base).as_posix()
                if not key.startswith(prefix):
                    continue
                rest = key[len(prefix) :]
                if delimiter and delimiter in rest:
                    prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
                else:
                    keys.append(key)
        contents = "".join(
            f"<Contents><Key>{escape(k)}</Key><Size>{(base / k).stat().st_size}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
            for k in sorted(keys)
        )
        common = "".join(
            f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>"
            for p in sorted(prefixes)
        )
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(keys) + len(prefixes)}</KeyCount><IsTruncated>false</IsTruncated>"
            f"{contents}{common}</ListBucketResult>"
        ).encode()
        self._reply(200, xml, {"Content-Type": "application/xml"})


def serve_in_thread(root: Path, port: int = 0) -> RangeServer:
    """Start the endpoint on a daemon thread; `shutdown()` stops it."""
    server = RangeServer(root, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="s3-range").start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding one sub-folder per bucket")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = RangeServer(args.root, args.port)
    print(server.url, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
