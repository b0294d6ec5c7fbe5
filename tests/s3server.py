"""A real S3-compatible server for tests: moto's server app on 127.0.0.1, one request at a time.

Run as `python -m tests.s3server`; prints the port once listening. moto's own `moto_server` is
threaded, and moto checks `If-None-Match` and then stores the object without a lock, so two
racing exclusive creates could both succeed there; real S3 (and this single-threaded server)
applies them one at a time, which is the behaviour the registry's lock relies on.
"""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


def main() -> None:
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=False, request_handler=MotoRequestHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """`with S3Server() as s3:` a moto server in its own process; `s3.env` points boto/s3fs at it."""

    def __enter__(self) -> S3Server:
        import os
        import subprocess
        from pathlib import Path

        repo = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.s3server"], cwd=repo, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env={**os.environ, **S3_ENV})
        self.endpoint = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"
        self.env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": self.endpoint}
        return self

    def bucket(self, name: str) -> str:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret="testing").mkdir(name)
        return f"s3://{name}"

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
