"""The control API: loopback only, token-protected, every command works, bad input is refused
clearly and never stops the server or the loop."""
import asyncio
import json
import os
import socket
import stat

import aiohttp
import pytest
import requests

from avatarcam.config import AvatarConfig
from avatarcam.control_api import ApiConfig, ControlApi, ControlApiError, is_loopback, resolve_token
from avatarcam.controls import COMMANDS, ControlsConfig
from avatarcam.errors import ConfigError
from avatarcam.hotkeys import HOTKEYS

from conftest import avatarcam_threads
from live_harness import SpyPassthrough, live_config, replace, running, wait_for

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api(tmp_path_factory, driving_video, data_dir):
    folder = tmp_path_factory.mktemp("avatars")
    for name in ("avatar_jobs_glasses_photo.jpg", "avatar_obama_photo.jpg"):
        (folder / name).symlink_to(data_dir / name)
    config = replace(live_config(driving_video),
                     avatars=AvatarConfig(folder=str(folder), cache_dir=str(tmp_path_factory.mktemp("cache"))))
    engine = SpyPassthrough(size=96)
    api_config = ApiConfig(enabled=True, port=0, token=TOKEN)
    with running(config, engine=engine, api=api_config,
                 controls=ControlsConfig(settings_dir=str(tmp_path_factory.mktemp("settings")))) as live:
        live.engine = engine
        live.url = live.session.api.url
        yield live
    assert avatarcam_threads() == []


def post(api, name, body=None, **kw):
    return requests.post(f"{api.url}/command/{name}", json=body, headers=kw.pop("headers", AUTH), timeout=10, **kw)


def get(api, path, headers=AUTH):
    return requests.get(f"{api.url}{path}", headers=headers, timeout=10)


# -- binding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.7", "example.invalid"])
def test_non_loopback_hosts_are_refused_unless_allowed(host):
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="allow_remote"):
        ApiConfig(enabled=True, host=host)
    assert ApiConfig(enabled=True, host=host, allow_remote=True).allow_remote


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_hosts_are_accepted(host):
    assert is_loopback(host) and ApiConfig(enabled=True, host=host).host == host


def test_control_api_itself_refuses_a_remote_bind(api):
    with pytest.raises(ConfigError, match="non-loopback"):
        ControlApi(controller=api.controller, config=ApiConfig(host="0.0.0.0", token=TOKEN))


def test_remote_bind_when_explicitly_allowed(api):
    config = ApiConfig(host="0.0.0.0", port=0, token=TOKEN, allow_remote=True)
    with ControlApi(controller=api.controller, config=config) as remote:
        r = requests.get(f"http://127.0.0.1:{remote.port}/status", headers=AUTH, timeout=10)
        assert r.status_code == 200 and r.json()["ok"]
        assert requests.get(f"http://127.0.0.1:{remote.port}/status", timeout=10).status_code == 401
    assert not any(t.name == "avatarcam-api" and t.ident != api.session.api._thread.ident
                   for t in avatarcam_threads())


def test_a_port_in_use_is_a_clear_error(api):
    config = ApiConfig(port=api.session.api.port, token=TOKEN)
    with pytest.raises(ControlApiError, match="--api-port"):
        ControlApi(controller=api.controller, config=config).start()


def test_generated_token_is_private_and_reused(tmp_path):
    path = tmp_path / "cfg" / "api-token"
    token = resolve_token(ApiConfig(token_file=str(path)))
    assert len(token) >= 24 and path.read_text().strip() == token
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_token(ApiConfig(token_file=str(path))) == token
    with pytest.raises(ConfigError, match="too short"):
        ApiConfig(token="abc")


# -- auth ---------------------------------------------------------------------------------------------


def test_requests_without_the_right_token_are_refused(api):
    for headers in ({}, {"Authorization": "Bearer nope-nope-nope"}, {"X-Avatarcam-Token": "x" * 21},
                    {"Authorization": f"Basic {TOKEN}"}):
        r = get(api, "/status", headers=headers)
        assert r.status_code == 401, headers
        assert not r.json()["ok"] and "token" in r.json()["error"]
        assert "WWW-Authenticate" in r.headers
    freeze = api.controller.state.freeze
    assert post(api, "freeze", headers={}).status_code == 401
    assert api.controller.state.freeze == freeze  # nothing happened
    assert get(api, "/status", headers={"X-Avatarcam-Token": TOKEN}).status_code == 200
    assert get(api, "/status", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200


def test_a_foreign_host_name_is_refused(api):
    r = requests.get(f"{api.url}/status", headers={**AUTH, "Host": "evil.example:80"}, timeout=10)
    assert r.status_code == 403 and "127.0.0.1" in r.json()["error"]
    r = requests.get(f"{api.url}/status", headers={**AUTH, "Host": f"localhost:{api.session.api.port}"}, timeout=10)
    assert r.status_code == 200


# -- read-outs and commands ---------------------------------------------------------------------------


def test_status_reports_avatar_fps_latency_and_camera(api):
    wait_for(lambda: get(api, "/status").json()["state"]["fps"]["output"], what="an output rate")
    s = get(api, "/status").json()["state"]
    assert s["avatar"]["count"] == 3 and s["avatar"]["names"][0] == "astronaut"
    assert s["avatar"]["index"] == 1 and s["avatar"]["showing"] == "astronaut"
    assert 10 < s["fps"]["output"] < 30 and s["fps"]["input"] > 10
    assert 0 < s["latency_ms"]["p50"] < 1000 and s["latency_ms"]["p95"] >= s["latency_ms"]["p50"]
    assert s["camera"] == "ok" and s["engine"] == "passthrough"
    assert s["frames_out"] > 0 and set(s["state"]) >= {"freeze", "passthrough", "zoom", "mirror_output"}


def test_commands_listing_mirrors_the_hotkeys(api):
    body = get(api, "/commands").json()
    names = {c["name"] for c in body["commands"]}
    assert names == set(COMMANDS) == {h.command for h in HOTKEYS}
    assert {h["command"] for h in body["hotkeys"]} == names
    avatar = next(c for c in body["commands"] if c["name"] == "avatar")
    assert [p["name"] for p in avatar["params"]] == ["index", "name"]


def _toggle_check(field, attr):
    def check(api, state):
        assert state["state"][field] is True
        assert attr(api) is True
    return check


CASES = [
    ("avatar", {"index": 2}, lambda api, s: s["avatar"]["index"] == 2 and wait_for(
        lambda: api.session.processor.avatar is api.controller.avatars[1], what="avatar 2")),
    ("avatar", {"name": "astronaut"}, lambda api, s: s["avatar"]["index"] == 1),
    ("next_avatar", None, lambda api, s: s["avatar"]["index"] == 2),
    ("prev_avatar", None, lambda api, s: s["avatar"]["index"] == 1),
    ("passthrough", {"on": True}, lambda api, s: s["state"]["passthrough"] and wait_for(
        lambda: api.session.processor.passthrough, what="passthrough")),
    ("passthrough", {"on": False}, lambda api, s: not s["state"]["passthrough"] and wait_for(
        lambda: not api.session.processor.passthrough, what="engine again")),
    ("calibrate", None, lambda api, s: s["state"]["calibrations"] >= 1 and wait_for(
        lambda: api.engine.calibrate_calls >= 1, what="calibrate()")),
    ("best_frame", {"on": True}, lambda api, s: s["state"]["best_frame"] and wait_for(
        lambda: api.engine.options.find_best_frame, what="best frame on")),
    ("zoom", {"value": 1.5}, lambda api, s: s["state"]["zoom"] == 1.5 and wait_for(
        lambda: api.session.processor.cropper.zoom == 1.5, what="zoom")),
    ("zoom", {"step": -1}, lambda api, s: s["state"]["zoom"] == pytest.approx(1.5 / 1.1)),
    ("move", {"x": 0.2, "y": -0.1}, lambda api, s: s["state"]["offset"] == [0.2, -0.1] and wait_for(
        lambda: api.session.processor.cropper.offset == (0.2, -0.1), what="offset")),
    ("move", {"dx": -1}, lambda api, s: s["state"]["offset"] == pytest.approx([0.18, -0.1])),
    ("reset_crop", None, lambda api, s: s["state"]["offset"] == [0.0, 0.0] and s["state"]["zoom"] == 1.0),
    ("mirror_preview", None, lambda api, s: s["state"]["mirror_preview"]),
    ("mirror_output", {"on": True}, lambda api, s: s["state"]["mirror_output"] and wait_for(
        lambda: api.session.processor.compositor.mirror, what="mirror")),
    ("reload", None, lambda api, s: wait_for(lambda: api.controller.state.reloads == 1, 60, "reload")),
    ("stats", {"on": True}, lambda api, s: s["state"]["stats"] and api.session.pipeline.show_stats),
    ("overlay", {"on": True}, lambda api, s: s["state"]["overlay"] and api.session.processor.overlay),
    ("help", {"on": True}, lambda api, s: s["state"]["help"]),
    ("freeze", {"on": True}, lambda api, s: s["state"]["freeze"] and api.session.pipeline.freeze),
    ("freeze", {"on": False}, lambda api, s: not api.session.pipeline.freeze),
    ("brb", {"on": True}, lambda api, s: s["state"]["brb"] and api.session.pipeline.still is not None),
    ("brb", {"on": False}, lambda api, s: api.session.pipeline.still is None),
    ("blur", {"on": True}, lambda api, s: s["state"]["blur"] and api.session.processor.blur),
]


@pytest.mark.parametrize("name, args, check", CASES, ids=[f"{c[0]}-{json.dumps(c[1])}" for c in CASES])
def test_each_command_changes_the_state(api, name, args, check):
    r = post(api, name, args)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] and body["command"] == name
    assert check(api, body["state"]) is not False


def test_the_body_may_name_the_command(api):
    r = requests.post(f"{api.url}/command", json={"command": "zoom", "value": 2.0}, headers=AUTH, timeout=10)
    assert r.status_code == 200 and api.controller.state.zoom == 2.0
    post(api, "reset_crop")


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, body, status, needle", [
    ("fly", None, 400, "unknown command 'fly'"),
    ("avatar", {"index": 7}, 400, "no avatar 7: choose 1..3"),
    ("avatar", {"index": 0}, 400, "choose 1..3"),
    ("avatar", {"index": "two"}, 400, "must be a int"),
    ("avatar", {"index": True}, 400, "must be a int"),
    ("avatar", {"index": 1.5}, 400, "must be a int"),
    ("avatar", {"name": "nobody"}, 404, "no avatar named 'nobody'"),
    ("avatar", {}, 400, "needs either index"),
    ("avatar", {"index": 1, "colour": "red"}, 400, "has no parameter 'colour'"),
    ("zoom", {"value": 99}, 400, "out of range"),
    ("zoom", {"value": "NaN"}, 400, "must be a number"),
    ("move", {"x": 3}, 400, "out of range"),
    ("freeze", {"on": "yes"}, 400, "must be a bool"),
    ("freeze", [1, 2], 400, "JSON object"),
    ("freeze", "on", 400, "JSON object"),
])
def test_bad_commands_get_clear_errors(api, name, body, status, needle):
    before = api.controller.state
    r = post(api, name, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["ok"] is False and needle in err["error"]
    assert api.controller.state == before
    if name == "fly":
        assert set(err["commands"]) == set(COMMANDS)
    if err["error"].startswith("no avatar 7"):
        assert err["valid"] == [1, 3]


def test_malformed_and_oversized_bodies_and_wrong_routes(api):
    url = f"{api.url}/command/freeze"
    for data in (b"{not json", b"\xff\xfe\x00garbage", b"[" * 100000):
        r = requests.post(url, data=data, headers={**AUTH, "Content-Type": "application/json"}, timeout=10)
        assert r.status_code in (400, 413) and not r.json()["ok"], (data[:10], r.text)
    r = requests.post(url, data=b'{"on": true, "pad": "' + b"x" * 100_000 + b'"}', headers=AUTH, timeout=10)
    assert r.status_code == 413 and "too large" in r.json()["error"]
    r = requests.post(url, data=(b"x" * 8192 for _ in range(300)), headers=AUTH, timeout=10)  # chunked, 2.4 MB
    assert r.status_code == 413
    assert requests.get(url, headers=AUTH, timeout=10).status_code == 405
    assert get(api, "/nothing/here").status_code == 404
    r = requests.post(f"{api.url}/command", json={"value": 2}, headers=AUTH, timeout=10)
    assert r.status_code == 400 and "missing \"command\"" in r.json()["error"]
    assert not api.controller.state.freeze
    assert get(api, "/status").status_code == 200


def raw(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, socket.timeout):
            pass
    return b"".join(chunks)


def test_garbage_on_the_socket_never_stops_the_server_or_the_loop(api):
    port = api.session.api.port
    frames = api.controller.status()["frames_out"]
    for payload in (os.urandom(4096), b"\x16\x03\x01\x02\x00" + os.urandom(300),  # random, a TLS hello
                    b"GET / HTTP/1.1\r\nHost: " + b"a" * 20000 + b"\r\n\r\n",  # giant header
                    b"POST /command/freeze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n{",  # truncated
                    b"POST /command/freeze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
                    b"\r\n\r\n\r\n", b""):
        reply = raw(port, payload)
        assert reply == b"" or (reply.startswith(b"HTTP/1.") and reply[9:10] == b"4"), reply[:80]
    assert get(api, "/status").status_code == 200
    wait_for(lambda: api.controller.status()["frames_out"] > frames + 5, what="the loop keeps running")
    assert api.thread.is_alive() and api.error is None


def test_websocket_commands_and_errors(api):
    async def talk():
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(f"{api.url}/ws")
            assert info.value.status == 401
            async with session.ws_connect(f"{api.url}/ws", headers=AUTH) as ws:
                await ws.send_json({"command": "freeze", "on": True})
                on = await ws.receive_json(timeout=10)
                await ws.send_str("not json")
                bad = await ws.receive_json(timeout=10)
                await ws.send_json({"command": "avatar", "index": 9})
                index = await ws.receive_json(timeout=10)
                await ws.send_bytes(b"\x00\x01")
                binary = await ws.receive_json(timeout=10)
                await ws.send_json({"command": "status"})
                status = await ws.receive_json(timeout=10)
                await ws.send_json({"command": "freeze", "on": False})
                off = await ws.receive_json(timeout=10)
                return on, bad, index, binary, status, off

    on, bad, index, binary, status, off = asyncio.run(talk())
    assert on["ok"] and on["state"]["state"]["freeze"] is True
    assert not bad["ok"] and bad["status"] == 400 and "not valid JSON" in bad["error"]
    assert not index["ok"] and "choose 1..3" in index["error"]
    assert not binary["ok"] and "JSON text" in binary["error"]
    assert status["ok"] and status["state"]["camera"] == "ok"
    assert off["ok"] and not api.session.pipeline.freeze


def test_zz_quit_stops_the_loop(api):
    r = post(api, "quit")
    assert r.status_code == 200
    api.thread.join(10)
    assert not api.thread.is_alive() and api.error is None
    assert get(api, "/status").status_code == 200  # the API outlives the loop until the session closes
