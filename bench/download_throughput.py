"""Download throughput of the image cache, as a ratio to curl fetching the same file.

Both fetch the locally built test image from the same local HTTP server in the same
run; the figure that matters is the ratio (1.0 = as fast as curl). Run:
    .venv/bin/python -m bench.download_throughput [--rounds N]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from nexus_components.core.download import ImageSource, fetch_image
from tests.support.debian_image import IMAGE_NAME, ensure_test_image


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds

    image_dir = ensure_test_image(log=lambda _: None)
    size = (image_dir / IMAGE_NAME).stat().st_size
    handler = functools.partial(QuietHandler, directory=str(image_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{IMAGE_NAME}"

    curl_seconds, curl_hash_seconds, ours_seconds = [], [], []
    try:
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as scratch:
                started = time.perf_counter()
                subprocess.run(["curl", "-sSf", "-o", str(Path(scratch) / "curl.img"), url], check=True)
                curl_seconds.append(time.perf_counter() - started)

                # The fairer baseline: curl plus the digest check fetch_image always does.
                started = time.perf_counter()
                subprocess.run(["curl", "-sSf", "-o", str(Path(scratch) / "curl2.img"), url], check=True)
                subprocess.run(
                    ["sha256sum", str(Path(scratch) / "curl2.img")], check=True, capture_output=True
                )
                curl_hash_seconds.append(time.perf_counter() - started)

                started = time.perf_counter()
                # Digest lookup (SHA256SUMS), streaming hash, fsync and atomic rename included.
                fetch_image(ImageSource(url=url), Path(scratch) / "cache")
                ours_seconds.append(time.perf_counter() - started)
    finally:
        server.shutdown()

    mib = size / (1 << 20)
    curl_median = statistics.median(curl_seconds)
    curl_hash_median = statistics.median(curl_hash_seconds)
    ours_median = statistics.median(ours_seconds)
    print(f"file: {IMAGE_NAME}, {mib:.1f} MiB, {rounds} rounds, medians")
    print(f"curl:              {curl_median:6.2f} s  {mib / curl_median:7.1f} MiB/s")
    print(f"curl + sha256sum:  {curl_hash_median:6.2f} s  {mib / curl_hash_median:7.1f} MiB/s")
    print(f"fetch_image:       {ours_median:6.2f} s  {mib / ours_median:7.1f} MiB/s")
    print(f"throughput ratio fetch_image/curl:            {curl_median / ours_median:.2f}")
    print(f"throughput ratio fetch_image/(curl+sha256sum): {curl_hash_median / ours_median:.2f}")


if __name__ == "__main__":
    main()
