"""Weights management: registry, verified/resumable downloads (against a local HTTP server),
`add` of user checkpoints, verification, resolution and the `weights` CLI."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from avatarcam.errors import WeightsError
from avatarcam.weights import cli
from avatarcam.weights.add import add_checkpoint, check_fomm_state, expected_shapes
from avatarcam.weights.checkpoint import read_fomm_state
from avatarcam.weights.download import download, make_session
from avatarcam.weights.registry import CONFIGS_DIR, REGISTRY, WeightSpec
from avatarcam.weights.store import (
    ENV_VAR,
    installed_weights,
    resolve_fomm_weights,
    sha256_of,
    verify,
    weights_dir,
)

FIXTURES = Path(__file__).parents[1] / ".." / "shared" / "fixtures" / "fomm"
TINY = FIXTURES / "tiny.pth.tar"
TINY_YAML = FIXTURES / "tiny.yaml"
MiB = 1 << 20


# ---- a local HTTP server serving generated files ------------------------------------------------

@dataclass
class Route:
    body: bytes
    content_type: str = "application/octet-stream"
    ranges: bool = True  # honour Range requests
    drop_after: int | None = None  # first request only: close the connection after this many body bytes
    fail_first: int = 0  # answer 503 this many times first


@dataclass
class Server:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)

    def requests_for(self, path: str) -> list[str | None]:
        return [r for p, r in self.log if p == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        state: Server = self.server.state  # type: ignore[attr-defined]
        state.log.append((self.path, self.headers.get("Range")))
        route = state.routes.get(self.path)
        if route is None or route.fail_first:
            if route is not None:
                route.fail_first -= 1
            self.send_response(404 if route is None else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body, start, status = route.body, 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and route.ranges:
            start, status = int(m.group(1)), 206
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(body) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        payload = body[start:]
        if route.drop_after is not None:
            payload, route.drop_after = payload[: route.drop_after], None
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.state  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _spec(urls: tuple[str, ...], body: bytes | None, **kw) -> WeightSpec:
    fields = dict(name="fake", filename="fake.pth.tar", urls=urls, licence="test only", source="local test server",
                  config="vox-256.yaml",
                  sha256=hashlib.sha256(body).hexdigest() if body is not None else None,
                  size=len(body) if body is not None else None)
    fields.update(kw)
    return WeightSpec(**fields)


def _get(spec: WeightSpec, tmp_path: Path, **kw) -> Path:
    return download(spec, directory=tmp_path, session=make_session(backoff=0), progress=False, **kw)


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


# ---- downloads ------------------------------------------------------------------------------------

def test_good_file_is_verified_installed_and_shows_progress(server, tmp_path, capsys):
    data = _blob(3 * MiB)
    server.routes["/good"] = Route(data)
    spec = _spec((server.url + "/good",), data)
    path = download(spec, directory=tmp_path, session=make_session(backoff=0), progress=True)
    assert path == tmp_path / "fake.pth.tar" and path.read_bytes() == data
    err = capsys.readouterr().err
    assert "fake.pth.tar" in err and "100%" in err  # the tqdm bar ran to the end
    meta = json.loads((tmp_path / "fake.pth.tar.json").read_text())
    assert meta["sha256"] == spec.sha256 and meta["size"] == len(data) and meta["published_hash"] is True
    assert not (tmp_path / "fake.pth.tar.part").exists()
    # Installed and verified: a second call does not touch the network.
    del server.routes["/good"]
    assert _get(spec, tmp_path) == path and len(server.log) == 1


def test_dropped_connection_is_resumed_with_range(server, tmp_path):
    data = _blob(3 * MiB, seed=1)
    server.routes["/drop"] = Route(data, drop_after=MiB + MiB // 2)
    path = _get(_spec((server.url + "/drop",), data), tmp_path)
    assert path.read_bytes() == data
    ranges = server.requests_for("/drop")
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", ranges[1]).group(1))
    assert 0 < resumed_at <= MiB + MiB // 2  # continued from the bytes kept, not from zero


@pytest.mark.parametrize("ranges", [True, False], ids=["server-resumes", "server-ignores-range"])
def test_leftover_part_from_an_earlier_run(server, tmp_path, ranges):
    data = _blob(2 * MiB, seed=2)
    (tmp_path / "fake.pth.tar.part").write_bytes(data[:12345])
    server.routes["/f"] = Route(data, ranges=ranges)
    assert _get(_spec((server.url + "/f",), data), tmp_path).read_bytes() == data
    assert server.requests_for("/f") == ["bytes=12345-"]
    assert _leftovers(tmp_path) == ["fake.pth.tar", "fake.pth.tar.json", "fake.pth.tar.sha256"]


def test_truncated_file_is_refused(server, tmp_path):
    data = _blob(MiB, seed=3)
    server.routes["/short"] = Route(data[:-1000])
    with pytest.raises(WeightsError, match=r"offers 1,047,576 bytes, expected 1,048,576"):
        _get(_spec((server.url + "/short",), data), tmp_path)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_page_is_refused_with_instructions(server, tmp_path, content_type):
    page = b"\n<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>"
    server.routes["/page"] = Route(page, content_type=content_type)
    with pytest.raises(WeightsError) as info:
        _get(_spec((server.url + "/page",), _blob(1000)), tmp_path)
    msg = str(info.value)
    assert "web page" in msg and "browser" in msg and "avatarcam weights add PATH" in msg
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("size_known", [True, False])
def test_wrong_hash_is_refused_and_the_part_deleted(server, tmp_path, size_known):
    data = _blob(MiB, seed=4)
    server.routes["/evil"] = Route(_blob(MiB + (0 if size_known else 1), seed=5))  # wrong bytes
    spec = _spec((server.url + "/evil",), data, **({} if size_known else {"size": None}))
    with pytest.raises(WeightsError, match=r"sha256 mismatch.*deleted the partial download"):
        _get(spec, tmp_path)
    assert _leftovers(tmp_path) == []


def test_next_mirror_after_404_html_and_transient_503(server, tmp_path):
    data = _blob(MiB, seed=6)
    server.routes["/html"] = Route(b"<html>quota exceeded</html>", content_type="text/html")
    server.routes["/good"] = Route(data, fail_first=2)  # urllib3's Retry absorbs these
    spec = _spec(tuple(server.url + p for p in ("/missing", "/html", "/good")), data)
    assert _get(spec, tmp_path).read_bytes() == data
    assert [p for p, _ in server.log] == ["/missing", "/html", "/good", "/good", "/good"]


def test_all_mirrors_failing_names_each_failure(server, tmp_path):
    server.routes["/503"] = Route(b"", fail_first=100)
    spec = _spec((server.url + "/missing", server.url + "/503"), _blob(10))
    with pytest.raises(WeightsError) as info:
        _get(spec, tmp_path)
    msg = str(info.value)
    assert "/missing: HTTP 404" in msg and "/503: HTTP 503" in msg and "avatarcam weights add PATH" in msg


def test_unverifiable_record_needs_allow_unverified_and_still_checks_md5(server, tmp_path, monkeypatch):
    data = TINY.read_bytes()  # a real (tiny) FOMM checkpoint, so it can be resolved and read afterwards
    server.routes["/tiny"] = Route(data)
    md5 = hashlib.md5(data).hexdigest()
    spec = _spec((server.url + "/tiny",), None, md5=md5, config="vox-256.yaml")
    with pytest.raises(WeightsError, match="cannot verify fake.*--allow-unverified"):
        _get(spec, tmp_path)
    assert server.log == []  # refused before any request
    bad = _spec((server.url + "/tiny",), None, md5="0" * 32)
    with pytest.raises(WeightsError, match="md5 mismatch"):
        _get(bad, tmp_path, allow_unverified=True)
    path = _get(spec, tmp_path, allow_unverified=True)
    assert path.read_bytes() == data
    assert json.loads((tmp_path / "fake.pth.tar.json").read_text())["published_hash"] is False

    monkeypatch.setitem(REGISTRY, "fake", spec)
    ckpt, cfg = resolve_fomm_weights("fake", directory=tmp_path)
    assert ckpt == path and cfg == CONFIGS_DIR / "vox-256.yaml"
    assert set(read_fomm_state(ckpt)) == {"kp_detector", "generator"}
    [(item, ok, detail)] = verify(tmp_path)
    assert ok and "recorded at download" in detail
    with open(path, "r+b") as f:  # corrupt one byte: the recorded hash catches it
        f.seek(5000)
        f.write(bytes([f.read(1)[0] ^ 0xFF]))
    [(item, ok, detail)] = verify(tmp_path)
    assert not ok and "sha256" in detail


# ---- hash cache, verify, resolve ----------------------------------------------------------------

def test_hash_cache_is_cheap_but_verify_always_rehashes(tmp_path, monkeypatch):
    data = _blob(4096, seed=7)
    spec = _spec(("http://127.0.0.1:9/unused",), data)
    monkeypatch.setitem(REGISTRY, "fake", spec)
    path = tmp_path / spec.filename
    path.write_bytes(data)
    assert sha256_of(path) == spec.sha256 and (tmp_path / "fake.pth.tar.sha256").is_file()
    st = path.stat()
    path.write_bytes(_blob(4096, seed=8))  # same size, and restore the mtime: the cache cannot notice
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sha256_of(path) == spec.sha256  # cache hit, no hashing
    assert resolve_fomm_weights("fake", directory=tmp_path)[0] == path
    [(_, ok, detail)] = verify(tmp_path)  # verify rehashes and finds the change
    assert not ok and "sha256" in detail
    with pytest.raises(WeightsError, match="failed verification"):  # the cache now holds the true hash
        resolve_fomm_weights("fake", directory=tmp_path)


def test_missing_weights_message_says_how_to_get_them(tmp_path):
    for name in (None, "vox-cpk"):
        with pytest.raises(WeightsError) as info:
            resolve_fomm_weights(name, directory=tmp_path)
        msg = str(info.value)
        assert "avatarcam weights download vox-cpk" in msg
        assert "avatarcam weights add PATH" in msg and "--engine mesh" in msg and str(tmp_path) in msg
    with pytest.raises(WeightsError, match="no FOMM weights named 'nope'"):
        resolve_fomm_weights("nope", directory=tmp_path)


def test_resolve_a_path_uses_the_registry_config_for_known_file_names(tmp_path):
    copy = tmp_path / "vox-adv-cpk.pth.tar"
    copy.write_bytes(b"x")
    assert resolve_fomm_weights(copy) == (copy, CONFIGS_DIR / "vox-adv-256.yaml")
    assert resolve_fomm_weights(str(TINY), config=TINY_YAML) == (TINY, TINY_YAML)
    with pytest.raises(WeightsError, match="not found"):
        resolve_fomm_weights(tmp_path / "absent.pth.tar")


def test_weights_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert weights_dir() == Path(__file__).resolve().parents[1] / "weights"  # running from a checkout
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert weights_dir() == tmp_path / "env"
    assert weights_dir(tmp_path / "cfg") == tmp_path / "cfg"


# ---- records and configs ------------------------------------------------------------------------

def test_registry_records_and_packaged_configs():
    vox = REGISTRY["vox-cpk"]
    assert (vox.filename, vox.size, vox.config) == ("vox-cpk.pth.tar", 728766691, "vox-256.yaml")
    assert vox.sha256 == "abb41ab1f279f26326c0d6e4d20702de6658364665aa1313daa7a63e89ea2b23"
    assert "non-commercial" in vox.licence and "first-order-model" in vox.source
    assert REGISTRY["vox-adv-cpk"].config == "vox-adv-256.yaml"
    assert not REGISTRY["vox-adv-cpk-avatarify"].verifiable
    assert len({s.filename for s in REGISTRY.values()}) == len(REGISTRY)
    assert (CONFIGS_DIR / "vox-256.yaml").read_bytes() == (FIXTURES / "vox-256.yaml").read_bytes()
    import yaml

    vox256, adv = (yaml.safe_load((CONFIGS_DIR / n).read_text()) for n in ("vox-256.yaml", "vox-adv-256.yaml"))
    assert adv["model_params"]["discriminator_params"]["use_kp"] is True
    assert {k: v for k, v in adv["model_params"].items() if k != "discriminator_params"} == \
        {k: v for k, v in vox256["model_params"].items() if k != "discriminator_params"}
    with pytest.raises(ValueError, match="sha256"):
        WeightSpec(name="x", filename="x", urls=(), sha256="ABC", size=1, licence="", source="", config="")


def test_packaged_manifest_matches_the_reference_manifest():
    ref = json.loads((FIXTURES / "vox-256-manifest.json").read_text())
    for config in ("vox-256.yaml", "vox-adv-256.yaml"):
        shapes = expected_shapes(config)
        for m in ("kp_detector", "generator"):
            assert shapes[m] == {k: tuple(s) for k, s, _ in ref[m]["entries"]}


def test_shapes_built_from_the_model_match_the_tiny_manifest():
    assert expected_shapes(TINY_YAML) == expected_shapes(TINY_YAML, manifest=FIXTURES / "tiny-manifest.json")


# ---- add ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_add_stores_a_slim_copy_that_reads_back(tmp_path, fp16):
    path = add_checkpoint(TINY, config=TINY_YAML, fp16=fp16, directory=tmp_path,
                          manifest=FIXTURES / "tiny-manifest.json")
    assert path == tmp_path / "tiny.safetensors"
    original, slim = read_fomm_state(TINY), read_fomm_state(path)
    assert set(slim) == {"kp_detector", "generator"}
    for m in slim:
        assert slim[m].keys() == original[m].keys()
        for k, t in slim[m].items():
            assert t.dtype == original[m][k].dtype  # fp16 is widened back to fp32 on read
            if fp16 and t.is_floating_point():
                torch.testing.assert_close(t, original[m][k], atol=2e-3, rtol=1e-3)
            else:
                assert torch.equal(t, original[m][k])
    meta = json.loads((tmp_path / "tiny.safetensors.json").read_text())
    assert meta["dtype"] == ("float16" if fp16 else "float32")
    assert meta["source_sha256"] == hashlib.sha256(TINY.read_bytes()).hexdigest()
    assert meta["config"] == "tiny.yaml" and (tmp_path / "tiny.yaml").read_bytes() == TINY_YAML.read_bytes()
    # Slim: no discriminator or optimiser state (fp32 slim < 30 % of the training file, fp16 about half of that).
    assert path.stat().st_size < (0.15 if fp16 else 0.3) * TINY.stat().st_size
    assert resolve_fomm_weights(directory=tmp_path) == (path, tmp_path / "tiny.yaml")
    assert installed_weights(tmp_path) == ["tiny"]
    [(_, ok, _)] = verify(tmp_path)
    assert ok


def test_add_slim_copy_loads_into_the_model(tmp_path):
    fomm = pytest.importorskip("avatarcam.models.fomm")
    add_checkpoint(TINY, name="t16", config=TINY_YAML, fp16=True, directory=tmp_path)
    model = fomm.load_fomm(*resolve_fomm_weights("t16", directory=tmp_path))
    image = torch.rand(1, 3, 64, 64)
    assert model.kp_detector(image)["value"].shape == (1, 10, 2)


def test_add_refuses_a_checkpoint_for_another_config(tmp_path):
    with pytest.raises(WeightsError, match=r"not a FOMM checkpoint for this config: kp_detector: .*wrong shape"):
        add_checkpoint(TINY, config="vox-256.yaml", directory=tmp_path)
    assert _leftovers(tmp_path) == []


def test_add_refuses_missing_keys(tmp_path):
    state = read_fomm_state(TINY)
    del state["generator"]["final.weight"]
    torch.save(state, tmp_path / "broken.pth.tar")
    with pytest.raises(WeightsError, match=r"generator: 1 missing \(final.weight\)"):
        add_checkpoint(tmp_path / "broken.pth.tar", config=TINY_YAML, directory=tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("kind", ["truncated", "random", "html"])
def test_add_refuses_corrupt_and_html_files(tmp_path, kind):
    bad = tmp_path / "bad.pth.tar"
    data = TINY.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "random": _blob(5000),
                     "html": b"<!DOCTYPE html><html><body>Sign in</body></html>"}[kind])
    with pytest.raises(WeightsError, match="not added") as info:
        add_checkpoint(bad, config=TINY_YAML, directory=tmp_path / "w")
    if kind == "html":
        assert "HTML" in str(info.value)
    assert not (tmp_path / "w").exists()


def test_add_keeps_an_existing_copy_unless_forced(tmp_path):
    add_checkpoint(TINY, config=TINY_YAML, directory=tmp_path)
    with pytest.raises(WeightsError, match="already exists"):
        add_checkpoint(TINY, config=TINY_YAML, directory=tmp_path)
    add_checkpoint(TINY, config=TINY_YAML, directory=tmp_path, overwrite=True, fp16=True)
    assert json.loads((tmp_path / "tiny.safetensors.json").read_text())["dtype"] == "float16"


def test_check_fomm_state_reports_extra_keys():
    state = read_fomm_state(TINY)
    expected = expected_shapes(TINY_YAML, manifest=FIXTURES / "tiny-manifest.json")
    check_fomm_state(state, expected)
    state["kp_detector"]["stray.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"kp_detector: 1 unexpected \(stray.weight\)"):
        check_fomm_state(state, expected)


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_list_add_verify(tmp_path, capsys):
    d = ["--dir", str(tmp_path)]
    assert cli.main([*d, "list"]) == 0
    out = capsys.readouterr().out
    assert "vox-cpk" in out and "728.8 MB" in out and "CC BY-NC" in out and "none" in out
    assert cli.main([*d, "add", str(TINY), "--config", str(TINY_YAML), "--name", "mine", "--fp16"]) == 0
    assert "mine.safetensors" in capsys.readouterr().out
    assert cli.main([*d, "list"]) == 0 and "mine" in capsys.readouterr().out
    assert cli.main([*d, "verify"]) == 0 and "OK" in capsys.readouterr().out
    slim = tmp_path / "mine.safetensors"
    with open(slim, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"\0" * 10)
    assert cli.main([*d, "verify"]) == 1 and "FAIL" in capsys.readouterr().out


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    d = ["--dir", str(tmp_path)]
    assert cli.main([*d, "download", "nope"]) == 1
    assert "unknown checkpoint 'nope'" in capsys.readouterr().err
    assert cli.main([*d, "download", "vox-adv-cpk-avatarify"]) == 1  # refused before any network access
    assert "--allow-unverified" in capsys.readouterr().err
    assert cli.main([*d, "add", str(tmp_path / "missing.pth.tar")]) == 1
    assert "not found" in capsys.readouterr().err


def test_cli_registers_into_a_parent_parser():
    parser = argparse.ArgumentParser(prog="avatarcam")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["weights", "download", "vox-cpk", "--allow-unverified"])
    assert args.func is cli.run and args.name == "vox-cpk" and args.allow_unverified and args.progress
