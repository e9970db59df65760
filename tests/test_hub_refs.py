"""Repo ids and URLs, bad input refused before any request, GGUF names, and the token's keyring storage."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mockhub import MockHub, memory_keyring, mock_hub  # noqa: F401 - fixtures

from desktop.hub import tokens
from desktop.errors import UserError
from desktop.hub.repo import parse_repo_ref
from desktop.gguf.remote import group_gguf_files, quant_from_name

pytestmark = pytest.mark.usefixtures("memory_keyring")


@pytest.mark.parametrize(
    ("text", "repo_id", "revision", "filename"),
    [
        ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B", None, None),
        ("  gpt2 ", "gpt2", None, None),
        ("https://huggingface.co/Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B", None, None),
        ("https://huggingface.co/Qwen/Qwen3-0.6B/tree/v1.0", "Qwen/Qwen3-0.6B", "v1.0", None),
        ("huggingface.co/org/m-GGUF/blob/main/m.Q4_K_M.gguf", "org/m-GGUF", "main", "m.Q4_K_M.gguf"),
        ("https://hf.co/org/m/resolve/abc/sub/dir/f.json", "org/m", "abc", "sub/dir/f.json"),
    ],
)
def test_repo_ids_and_urls(text: str, repo_id: str, revision: str | None, filename: str | None) -> None:
    ref = parse_repo_ref(text)
    assert (ref.repo_id, ref.revision, ref.filename) == (repo_id, revision, filename)


def test_explicit_revision_wins_over_url() -> None:
    assert parse_repo_ref("https://huggingface.co/a/b/tree/dev", "v2").revision == "v2"


@pytest.mark.parametrize(
    "text",
    ["", "   ", "a/b/c", "../x", "./models/x", "/home/me/model", "~/model", "C:\\models\\x", "a//b", "a/b/",
     "org/na me", "org/-bad", "org/bad-", "org/a--b", "org/a..b", "https://example.com/org/model",
     "https://huggingface.co/datasets/org/data", "x" * 200],
)
def test_bad_input_is_refused_before_any_request(mock_hub: MockHub, text: str) -> None:  # noqa: F811
    from desktop.hub.inspect import inspect_repo
    from desktop.hub.download import download

    for job in (inspect_repo, download):
        with pytest.raises(UserError) as info:
            job(progress=lambda *a: None, cancelled=lambda: False, repo=text)
        assert info.value.kind == "invalid_repo"
        assert info.value.next_step
        assert "\n" not in str(info.value)
    assert mock_hub.requests == []


@pytest.mark.parametrize("revision", ["../main", "a b", "/abs"])
def test_bad_revision_is_refused(mock_hub: MockHub, revision: str) -> None:  # noqa: F811
    from desktop.hub.inspect import inspect_repo

    with pytest.raises(UserError) as info:
        inspect_repo(progress=lambda *a: None, cancelled=lambda: False, repo="org/model", revision=revision)
    assert info.value.kind == "invalid_revision"
    assert mock_hub.requests == []


def test_quant_type_from_file_names() -> None:
    assert quant_from_name("Qwen3-0.6B-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_from_name("llama.q8_0.gguf") == "Q8_0"
    assert quant_from_name("sub/model-IQ4_XS-00001-of-00002.gguf") == "IQ4_XS"
    assert quant_from_name("model-UD-Q4_K_XL.gguf") == "Q4_K_XL"
    assert quant_from_name("model-bf16.gguf") == "BF16"
    assert quant_from_name("model.gguf") == ""


def test_shards_group_into_one_model() -> None:
    files = [
        ("m-Q4_K_M-00002-of-00002.gguf", 50), ("m-Q4_K_M-00001-of-00002.gguf", 100), ("m-Q8_0.gguf", 300),
        ("mmproj-m-F16.gguf", 20), ("README.md", 1), ("Q2/m-Q2_K-00001-of-00003.gguf", 10),
    ]
    models, extras = group_gguf_files(files)
    assert [(m.name, m.quant, m.size_bytes, m.complete) for m in models] == [
        ("m-Q8_0", "Q8_0", 300, True),
        ("m-Q4_K_M", "Q4_K_M", 150, True),
        ("Q2/m-Q2_K", "Q2_K", 10, False),
    ]
    assert models[1].files == ["m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf"]
    assert extras == ["mmproj-m-F16.gguf"]


def test_token_kept_in_keyring_per_endpoint(memory_keyring, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert tokens.get_token() is None
    tokens.save_token("  hf_abcdefghijklmnop \n")
    assert tokens.get_token() == "hf_abcdefghijklmnop"
    assert tokens.get_token("https://huggingface.co") is None  # never sent to another endpoint
    assert list(memory_keyring.store.values()) == ["hf_abcdefghijklmnop"]
    tokens.delete_token()
    tokens.delete_token()  # forgetting twice is fine
    assert tokens.get_token() is None
    with pytest.raises(UserError) as info:
        tokens.save_token("not a token")
    assert info.value.kind == "invalid_token"


def test_no_keyring_is_a_sentence_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    import keyring
    from keyring.backends.fail import Keyring as FailKeyring

    previous = keyring.get_keyring()
    keyring.set_keyring(FailKeyring())
    try:
        assert tokens.get_token() is None
        with pytest.raises(UserError) as info:
            tokens.save_token("hf_abcdefghijklmnop")
        assert info.value.kind == "no_keyring" and "HF_TOKEN" in info.value.next_step
    finally:
        keyring.set_keyring(previous)


def test_a_token_goes_only_to_the_endpoint_it_was_saved_for(mock_hub: MockHub, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path) -> None:  # noqa: F811
    """13.7: with no keyring token for a custom HF_ENDPOINT, huggingface_hub fell back to HF_TOKEN or the saved
    login (both huggingface.co's) and sent it there."""
    from mockhub import checkpoint_files

    from desktop.hub.download import download
    from desktop.hub.inspect import inspect_repo
    from desktop.hub.search import search_models

    mock_hub.add_repo("org/tiny-llama", checkpoint_files())
    for token in ("hf_environment_token_1", "hf_saved_login_token_2"):
        mock_hub.add_token(token)  # valid on this server, so the mock records when one arrives
    monkeypatch.setenv("HF_TOKEN", "hf_environment_token_1")
    import os
    os.makedirs(os.environ["HF_HOME"], exist_ok=True)
    with open(os.path.join(os.environ["HF_HOME"], "token"), "w") as f:
        f.write("hf_saved_login_token_2")
    inspect_repo(progress=lambda *a: None, cancelled=lambda: False, repo="org/tiny-llama")
    search_models("tiny")
    download(progress=lambda *a: None, cancelled=lambda: False, repo="org/tiny-llama")
    assert mock_hub.requests and not any(r.authorized for r in mock_hub.requests)
    # The token saved for this endpoint is sent to it.
    tokens.save_token("hf_environment_token_1")
    inspect_repo(progress=lambda *a: None, cancelled=lambda: False, repo="org/tiny-llama")
    assert mock_hub.requests[-1].authorized


def test_never_over_plain_http_and_huggingface_tokens_only_to_huggingface(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens.save_token("hf_mirror_token_3", "http://mirror.example.org")
    assert tokens.token_for("http://mirror.example.org") is False  # saved for it, but plain http on a network
    assert tokens.token_for("http://mirror.example.org", "hf_explicit_token_4") is False
    tokens.save_token("hf_local_token_5", "http://127.0.0.1:8080")
    assert tokens.token_for("http://127.0.0.1:8080") == "hf_local_token_5"  # loopback never leaves the machine
    monkeypatch.setenv("HF_TOKEN", "hf_environment_token_1")
    assert tokens.token_for("https://mirror.example.org") is False
    assert tokens.token_for("https://huggingface.co") == "hf_environment_token_1"
    tokens.save_token("hf_hub_token_6", "https://huggingface.co")
    assert tokens.token_for("https://huggingface.co") == "hf_hub_token_6"


@contextmanager
def hub_server(respond: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A one-off HTTP server on loopback whose every GET is answered by ``respond``: a Hub that misbehaves."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            try:
                respond(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading, as it should

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_next_page_links_stay_on_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """13.7: paginated listings followed any next-page link, taking the token to another host."""
    seen: list[tuple[str, str | None]] = []

    def respond(handler: BaseHTTPRequestHandler) -> None:
        seen.append((handler.headers.get("Host", ""), handler.headers.get("Authorization")))
        body = json.dumps([{"id": f"org/m{len(seen)}"}]).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        # The next page on another host name (the same server, reached as "localhost").
        port = handler.server.server_port
        handler.send_header("Link", f'<http://localhost:{port}/api/models?p=2>; rel="next"')
        handler.end_headers()
        handler.wfile.write(body)

    with hub_server(respond) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        tokens.save_token("hf_endpoint_token_7", endpoint)
        from desktop.hub.repo import get_json_pages, hub_context

        with pytest.raises(UserError) as info:
            get_json_pages(hub_context(), "/api/models", {})
    assert info.value.kind == "bad_server"
    assert seen == [(endpoint.removeprefix("http://"), "Bearer hf_endpoint_token_7")]


def test_a_plaintext_keyring_counts_as_none(tmp_path) -> None:
    """13-Low: the keyring backend was not checked; a plaintext backend would have put the token in a file."""
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring_pass.cfg")
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    try:
        assert "PlaintextKeyring" in tokens.keyring_problem()
        with pytest.raises(UserError) as info:
            tokens.save_token("hf_abcdefghijklmnop")
        assert info.value.kind == "no_keyring"
        backend.set_password(tokens.SERVICE, tokens.endpoint(), "hf_planted_in_a_file")
        assert tokens.get_token() is None  # never read back from a plain file either
    finally:
        keyring.set_keyring(previous)
    assert "hf_abcdefghijklmnop" not in (tmp_path / "keyring_pass.cfg").read_text()


def test_numbers_and_sizes_from_listings_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """13.1/13.9: a search answer's numbers went through int() (a string or 1e308 was an internal error), and a
    listing page was buffered whole, however long."""
    import tracemalloc

    from desktop.hub.search import search_models

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        if "endless" in handler.path:  # a page that never ends
            handler.wfile.write(b'[{"id": "org/a", "pad": "')
            while True:
                handler.wfile.write(b"x" * 65536)
        handler.wfile.write(json.dumps([{"id": "org/a", "downloads": "lots", "likes": -3, "tags": "gguf"},
                                        {"id": "org/b", "downloads": 1e308, "likes": True},
                                        {"id": "org/c", "downloads": 7, "tags": ["gguf"]}]).encode())

    with hub_server(respond) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        result = search_models("org")
        assert [(h.repo_id, h.downloads, h.likes, h.is_gguf) for h in result.hits] == [
            ("org/a", 0, 0, False), ("org/b", 0, 0, False), ("org/c", 7, 0, True)]
        from desktop.hub.repo import get_json_pages, hub_context

        tracemalloc.start()
        try:
            with pytest.raises(UserError) as info:
                get_json_pages(hub_context(), "/api/endless", {})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert info.value.kind == "bad_server" and "larger than" in info.value.message
    assert peak < 200 * 1024 * 1024
