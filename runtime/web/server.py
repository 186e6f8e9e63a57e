"""`mlc web`: the chat page and one `webgpu` build, served on localhost or written out as a
static site that any web server can host.

Layout, served and exported alike:
    /index.html, /app.js, ...   the page (`chat/`)
    /tvmjs.js                   the TVM JavaScript runtime, bundled (`bundle.py`)
    /model/...                  the build's files, plus `chat-format.json` (`../chat_format.py`)
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..chat_config import ArtifactError, ChatConfig
from ..chat_format import FORMAT_NAME, chat_format
from ..tensor_cache import TENSOR_CACHE_NAME
from .bundle import BUNDLE_NAME, tvmjs_bundle

PAGE_DIR = Path(__file__).with_name("chat")
PAGE_FILES = ("index.html", "chat.css", "app.js", "engine.js", "session.js", "tokenizer.js")
MODEL_PREFIX = "model"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
}


def check_web_build(model_dir: Path) -> ChatConfig:
    """The build's chat config; ArtifactError unless `model_dir` is a whole `webgpu` build."""
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory not found: {model_dir}")
    config = ChatConfig.load(model_dir)
    if config.target != "webgpu":
        raise ArtifactError(
            f"{model_dir} is a build for the {config.target} target; the chat page needs "
            f"a webgpu build: mlc build {config.source_model} --target webgpu "
            f"--quantization {config.quantization}"
        )
    needed = [config.model_lib, TENSOR_CACHE_NAME, "tokenizer.json"]
    missing = [name for name in needed if not (model_dir / name).is_file()]
    if missing:
        raise ArtifactError(f"{model_dir} lacks {', '.join(missing)}: is the build complete?")
    return config


def site_files(model_dir: Path, conv_template: str | None = None) -> dict[str, Path | bytes]:
    """Every path of the site (relative, `/`-separated) with its file or contents."""
    check_web_build(model_dir)
    fmt = json.dumps(chat_format(model_dir, conv_template), indent=2).encode()
    files: dict[str, Path | bytes] = {name: PAGE_DIR / name for name in PAGE_FILES}
    files[BUNDLE_NAME] = tvmjs_bundle(log=lambda m: print(m, file=sys.stderr, flush=True))
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            files[f"{MODEL_PREFIX}/{path.name}"] = path
    files[f"{MODEL_PREFIX}/{FORMAT_NAME}"] = fmt
    return files


def export_site(model_dir: Path, out_dir: Path, conv_template: str | None = None) -> Path:
    """Write the site into `out_dir` (new or empty): upload it to any static web host."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; export into a new directory")
    files = site_files(model_dir, conv_template)
    for name, source in files.items():
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            target.write_bytes(source)
        else:
            shutil.copyfile(source, target)
    return out_dir


def _handler(files: dict[str, Path | bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._respond(body=True)

        def do_HEAD(self) -> None:
            self._respond(body=False)

        def _respond(self, body: bool) -> None:
            name = unquote(urlsplit(self.path).path).lstrip("/") or "index.html"
            source = files.get(name)
            if source is None:
                self.send_error(HTTPStatus.NOT_FOUND, f"{name} is not part of this site")
                return
            data = source if isinstance(source, bytes) else None
            size = len(data) if data is not None else source.stat().st_size
            self.send_response(HTTPStatus.OK)
            suffix = Path(name).suffix
            self.send_header("Content-Type", CONTENT_TYPES.get(suffix, "application/octet-stream"))
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if not body:
                return
            if data is not None:
                self.wfile.write(data)
            else:
                with open(source, "rb") as f:
                    shutil.copyfileobj(f, self.wfile, 1 << 20)

        def log_message(self, format: str, *args) -> None:
            pass  # one line per weight shard and script would drown the URL

    return Handler


def serve(
    model_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    conv_template: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the site until interrupted; `on_ready(url)` once it listens."""
    files = site_files(model_dir, conv_template)
    with ThreadingHTTPServer((host, port), _handler(files)) as server:
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{server.server_address[1]}/"
        (on_ready or print)(url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
