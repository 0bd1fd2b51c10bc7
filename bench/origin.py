"""The image origin the benchmark's CSVs point at: `python -m bench.origin --dir D --port P`.

It runs as its own process (under the same supervisor as the services) so serving images does not compete
with the benchmark's clients for one event loop. `/img/<tag>/<n>.jpg` serves corpus file `n mod size`:
every URL is distinct, so each image is fetched separately, yet the corpus stays small and cached.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web


def make_app(images: list[bytes]) -> web.Application:
    async def image(request: web.Request) -> web.Response:
        stem = request.match_info["name"].removesuffix(".jpg")
        if not stem.isdigit():
            raise web.HTTPNotFound()
        return web.Response(body=images[int(stem) % len(images)], content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/img/{tag}/{name}", image)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    images = [p.read_bytes() for p in sorted(args.dir.glob("*.jpg"))]
    if not images:
        raise SystemExit(f"no .jpg files in {args.dir}")
    web.run_app(make_app(images), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
