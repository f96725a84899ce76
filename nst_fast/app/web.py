"""A live view of a run in the browser (crowsonkb/style-transfer-pytorch's --web).

A small HTTP server on a background thread serves a page that shows the image so
far and the losses, refreshed as the run goes:

  /            the page
  /status      JSON: step, steps, size, losses, done
  /image.png   the image so far (PNG, encoded when asked for)

A request whose Host header names another server is refused (403): against DNS
rebinding, by which a web page could otherwise read the view (LivePreview.answers_to).
"""
import http.server
import io
import ipaddress
import json
import os
import re
import socket
import sys
import threading
import webbrowser

from ..errors import NstError

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>nst-fast</title>
<style>body{font-family:sans-serif;background:#222;color:#ddd;margin:2em}
img{max-width:100%;image-rendering:auto;border:1px solid #444}</style></head>
<body><p id="status">waiting for the first step...</p><img id="image" alt="">
<script>
let shown = -1;
async function poll() {
  try {
    const s = await (await fetch("/status", {cache: "no-store"})).json();
    const losses = Object.entries(s.losses).map(([k, v]) => k + " " + v.toPrecision(4)).join(", ");
    document.getElementById("status").textContent = (s.done ? "done: " : "") + "step " + s.step + "/" +
      s.steps + (s.size ? ", " + s.size[1] + "x" + s.size[0] : "") + (losses ? ", " + losses : "");
    if (s.step !== shown) { document.getElementById("image").src = "/image.png?step=" + s.step; shown = s.step; }
  } catch (e) {
    document.getElementById("status").textContent = "the run has ended";
    return;
  }
  setTimeout(poll, 1000);
}
poll();
</script></body></html>
"""
LOSSES_SHOWN = ("total", "content", "style", "tv")
HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[^\s:/@\[\]]+)(?::(\d+))?", re.IGNORECASE)  # name or [IPv6], port


class LivePreview:
    """Serves the image and losses of a run; feed it with update(info, image).
    port 0 picks a free port (see .url)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080):
        self._lock = threading.Lock()
        self._status = {"step": 0, "steps": 0, "size": None, "losses": {}, "done": False}
        self._image = None  # (step, (1, 3, H, W) CPU tensor in [0, 1])
        self._png = (None, b"")  # (step, its PNG bytes)
        try:
            self.server = http.server.ThreadingHTTPServer((host, port), self._handler())
        except (OSError, OverflowError) as exc:
            raise NstError(f"cannot serve the live view on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") \
                from None
        self.server.daemon_threads = True
        self._names = {"localhost", socket.gethostname().lower(), str(host).lower()}  # what answers_to accepts
        self._thread = threading.Thread(target=self.server.serve_forever, name="nst-fast-web", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def update(self, info, image) -> None:
        """info: a StepInfo; image: what the user would see now, (1, 3, H, W) on the CPU."""
        losses = {k: float(info.losses[k]) for k in LOSSES_SHOWN if k in info.losses}
        with self._lock:  # a step of another run (the next image of a batch) is no longer done
            self._status.update(step=info.step, steps=info.steps, size=list(info.size), losses=losses, done=False)
            self._image = (info.step, image)

    def finish(self) -> None:
        """The run has ended (StyleTransfer.run says so); a next run's update() goes on."""
        with self._lock:
            self._status["done"] = True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answers_to(self, host_header) -> bool:
        """Whether a request's Host header names this server: its port, with an IP
        address (a browser sends one where it connected to that address itself),
        localhost, this machine's name or the name the server listens on. A web page
        whose own name was made to resolve here (DNS rebinding) sends that name: refused."""
        match = HOST_HEADER.fullmatch(host_header or "")
        if match is None or int(match[2] or 80) != self.server.server_address[1]:
            return False
        name = match[1].strip("[]").lower()
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return name in self._names
        return True

    def status(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._status))

    def png(self) -> bytes:
        from ..imaging import images

        with self._lock:
            image = self._image
            if image is None:
                return b""
            if self._png[0] != image[0]:
                buf = io.BytesIO()
                images.to_pil(image[1]).save(buf, format="PNG")
                self._png = (image[0], buf.getvalue())
            return self._png[1]

    def _handler(self):
        preview = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server name)
                path = self.path.split("?", 1)[0]
                hosts = self.headers.get_all("Host") or []
                if len(hosts) != 1 or not preview.answers_to(hosts[0]):
                    self._send(403, "text/plain", b"this live view answers only to its own address (the Host header)")
                elif path == "/":
                    self._send(200, "text/html; charset=utf-8", PAGE)
                elif path == "/status":
                    self._send(200, "application/json", json.dumps(preview.status()).encode())
                elif path == "/image.png":
                    body = preview.png()
                    self._send(200 if body else 404, "image/png" if body else "text/plain", body or b"no image yet")
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, code, content_type, body):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep stderr for the progress bar
                pass

        return Handler


def open_in_browser(live: LivePreview) -> None:
    """Open the live view in the default browser, without waiting for it. On Linux
    without a graphical display only a console browser could open, which would take
    over the terminal: the address is printed instead."""
    host, port = live.server.server_address[:2]
    if host == "0.0.0.0":  # listening everywhere: this machine reaches it on loopback
        host = "127.0.0.1"
    url = f"http://{host}:{port}/"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        sys.stderr.write(f"nst-fast: warning: no graphical display to open a browser on; visit {url}\n")
        return

    def run():
        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
        if not opened:
            sys.stderr.write(f"nst-fast: warning: no web browser could be opened; visit {url}\n")

    threading.Thread(target=run, name="nst-fast-browser", daemon=True).start()
