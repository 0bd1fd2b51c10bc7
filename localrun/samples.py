"""Photo-like sample images, generated (deterministically) rather than committed, and a static origin.

`make run` serves them so the README's sample CSV works offline; the benchmark uses them as its corpus.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from aiohttp import web
from PIL import Image, ImageDraw, ImageFilter

SAMPLE_NAMES = [f"product-{n:02d}.jpg" for n in range(1, 7)]


def photo(width: int, height: int, seed: int, quality: int = 92) -> bytes:
    """A JPEG with the statistics of a photo: smooth gradients, soft shapes, sensor-like noise."""
    rng = random.Random(seed)
    small = (max(1, width // 8), max(1, height // 8))
    channels = [
        Image.linear_gradient("L").rotate(rng.uniform(0, 360), expand=False).resize(small) for _ in range(3)
    ]
    base = Image.merge("RGB", channels)
    draw = ImageDraw.Draw(base)
    for _ in range(rng.randint(4, 12)):
        x, y = rng.randrange(small[0]), rng.randrange(small[1])
        r = rng.randint(2, max(3, min(small) // 2))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    image = base.filter(ImageFilter.GaussianBlur(2)).resize((width, height), Image.Resampling.BICUBIC)
    noise = Image.effect_noise((width, height), rng.uniform(12, 28)).convert("RGB")
    image = Image.blend(image, noise, 0.12)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def ensure_samples(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(SAMPLE_NAMES):
        path = directory / name
        if not path.exists():
            width, height = [
                (1600, 1200),
                (1200, 1200),
                (1920, 1080),
                (1024, 768),
                (1400, 1000),
                (800, 1200),
            ][seed]
            path.write_bytes(photo(width, height, seed))
    return directory


async def serve_directory(directory: Path, host: str, port: int) -> web.AppRunner:
    app = web.Application()
    app.router.add_static("/images/", directory)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
