"""The live view: a local HTTP server showing the image so far and the losses."""
import http.client
import io
import json
import socket
import time
import urllib.error
import urllib.request

import pytest
import torch
from PIL import Image

from nst_fast import NstError, StepInfo, StyleTransfer
from nst_fast.app import cli, web


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


@pytest.fixture
def preview():
    live = web.LivePreview("127.0.0.1", 0)
    yield live
    live.close()


@pytest.mark.slow
def test_serves_the_page_status_and_image_of_a_run(preview, small_images):
    content, style = small_images
    status, kind, page = _get(preview.url)
    assert status == 200 and kind.startswith("text/html") and b"/image.png" in page
    with pytest.raises(urllib.error.HTTPError) as exc:
        _get(preview.url + "image.png")
    assert exc.value.code == 404  # nothing to show before the first step

    seen = []
    transfer = StyleTransfer(weights="random", device="cpu")
    out = transfer.stylize_tensor(content, style, size=32, steps=6, report_every=2, live=preview,
                                  callback=lambda info: seen.append(float(info.losses["total"])))
    state = json.loads(_get(preview.url + "status")[2])
    assert state["step"] == state["steps"] == 6 and state["size"] == [24, 32] and state["done"]  # the run ended
    assert state["losses"]["total"] == pytest.approx(seen[-1], rel=1e-6)
    status, kind, png = _get(preview.url + "image.png?step=6")
    assert status == 200 and kind == "image/png"
    shown = Image.open(io.BytesIO(png))
    assert shown.size == (32, 24)
    assert shown.tobytes() == Image.open(io.BytesIO(_png_of(out))).tobytes()
    with pytest.raises(urllib.error.HTTPError) as exc:
        _get(preview.url + "nothing")
    assert exc.value.code == 404


def _png_of(image):
    from nst_fast.imaging import images

    buf = io.BytesIO()
    images.to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def test_the_next_run_on_the_view_is_not_done_until_it_ends(preview):
    preview.finish()  # of the first image of a batch
    preview.update(StepInfo(step=2, steps=6, size=(24, 32), losses={}, image=None), torch.zeros(1, 3, 24, 32))
    assert not preview.status()["done"]


def test_a_live_view_needs_update_and_finish(small_images):
    content, style = small_images
    with pytest.raises(NstError, match="^live must be a nst_fast.app.web.LivePreview, or have its update"):
        StyleTransfer(weights="random", device="cpu").stylize_tensor(content, style, size=32, steps=1,
                                                                      live=object())


@pytest.mark.slow
def test_updates_follow_report_every(preview, small_images):
    content, style = small_images
    steps = []
    real_update = preview.update
    preview.update = lambda info, image: (steps.append(info.step), real_update(info, image))
    StyleTransfer(weights="random", device="cpu").stylize_tensor(content, style, size=32, steps=7, report_every=3,
                                                                  live=preview)
    assert steps == [3, 6, 7]


def _status_code_for_host(preview, host):
    """GET /status with this Host header (None: none at all) -> the HTTP status code."""
    connection = http.client.HTTPConnection("127.0.0.1", preview.server.server_address[1], timeout=10)
    try:
        connection.putrequest("GET", "/status", skip_host=True)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_only_requests_for_its_own_address_are_answered(preview):
    """Against DNS rebinding: a page of evil.example whose name comes to resolve to
    127.0.0.1 reaches the server, but with its own name in the Host header."""
    port = preview.server.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}",
                 f"{socket.gethostname()}:{port}",
                 f"192.168.1.5:{port}"):  # an address (of a server listening everywhere) is no rebound name
        assert _status_code_for_host(preview, host) == 200, host
    for host in (f"evil.example:{port}", f"localhost.evil.example:{port}", "localhost:1", "localhost",
                 f"evil.example@localhost:{port}", f"localhost:{port}/x", "", None):
        assert _status_code_for_host(preview, host) == 403, host


def test_the_name_it_listens_on_is_its_own(monkeypatch):
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, 0)
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    monkeypatch.setattr(web.socket, "gethostname", lambda: "another-name")  # so that only the listening name can pass
    live = web.LivePreview(name, 0)
    try:
        assert _status_code_for_host(live, f"{name.upper()}:{live.server.server_address[1]}") == 200
        assert _status_code_for_host(live, f"elsewhere:{live.server.server_address[1]}") == 403
    finally:
        live.close()


def test_a_busy_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(NstError, match=f"cannot serve the live view on 127.0.0.1:{port}"):
            web.LivePreview("127.0.0.1", port)


@pytest.mark.slow
def test_cli_web_prints_the_address_and_stops_serving(tmp_path, small_images, capsys):
    content, style = small_images
    out = tmp_path / "out.png"
    code = cli.main([str(content), str(style), "-o", str(out), "--weights", "random", "--device", "cpu",
                     "--size", "32", "--steps", "2", "--web", "--web-port", "0"])
    err = capsys.readouterr().err
    assert code == 0 and out.exists(), err
    url = next(line.split(" at ", 1)[1] for line in err.splitlines() if "live view at" in line)
    with pytest.raises(urllib.error.URLError):
        _get(url)  # the server closed with the run
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = cli.main([str(content), str(style), "-o", str(tmp_path / "b.png"), "--weights", "random",
                         "--device", "cpu", "--size", "32", "--steps", "2", "--web", "--web-port",
                         str(taken.getsockname()[1])])
    assert code == 1 and "cannot serve the live view" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists()


@pytest.mark.slow
def test_cli_browser_opens_the_live_view(tmp_path, small_images, capsys, monkeypatch):
    content, style = small_images
    opened = []
    monkeypatch.setattr(web.webbrowser, "open", lambda url: opened.append(url) or True)
    monkeypatch.setattr(web.sys, "platform", "linux")
    argv = [str(content), str(style), "--weights", "random", "--device", "cpu", "--size", "32", "--steps", "2",
            "--browser", "--web-port", "0", "--web-host", "0.0.0.0"]
    monkeypatch.setenv("DISPLAY", ":0")
    assert cli.main(argv + ["-o", str(tmp_path / "a.png")]) == 0  # --browser alone serves the view
    err = capsys.readouterr().err
    port = next(line.rsplit(":", 1)[1].rstrip("/") for line in err.splitlines() if "live view at" in line)
    for _ in range(100):  # the browser is opened from a thread
        if opened:
            break
        time.sleep(0.05)
    assert opened == [f"http://127.0.0.1:{port}/"]  # loopback for an everywhere-listening server
    monkeypatch.delenv("DISPLAY")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli.main(argv + ["-o", str(tmp_path / "b.png")]) == 0
    assert "no graphical display" in capsys.readouterr().err and len(opened) == 1
