"""A synchronous HTTP client (urllib, as requests would be) called from a coroutine: the loop
thread sits deep inside http.client and socket for 0.4 s, and the site is still the program's own
line that made the call."""
import http.server
import threading
import time
import urllib.request

import _e2e


class SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.4)
        body = b"42"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


async def fetch_price(url):
    with urllib.request.urlopen(url, timeout=10) as reply:  # EXPECT: blocking-call min_duration=0.3
        return int(reply.read())


async def main():
    server = http.server.HTTPServer(("127.0.0.1", 0), SlowHandler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        print("price:", await fetch_price("http://127.0.0.1:%d/" % server.server_port))
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


_e2e.run(main)
