"""Writes one WebDataset shard of photo-sized JPEGs (0.1 to 1 megapixel) for the GPU device
check's end-to-end throughput: smooth colour fields with texture, so that they compress like
photographs rather than like noise. Seeded: the same bytes every time.

    python make_photos.py OUT.tar [COUNT]
"""
import io
import sys
import tarfile

import numpy as np
from PIL import Image


def photo(rng, width, height):
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 4.0, size=2) * 2 * np.pi
        phase = rng.uniform(0, 2 * np.pi)
        field = np.sin(fx * x / width + phase) * np.cos(fy * y / height)
        channels.append(128 + 90 * field + rng.normal(0, 12, size=field.shape))
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def main():
    out, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 48
    rng = np.random.default_rng(20261202)
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(count):
            megapixels = rng.uniform(0.1, 1.0)
            aspect = rng.uniform(0.6, 1.7)
            width = int((megapixels * 1e6 * aspect) ** 0.5)
            height = int(megapixels * 1e6 / width)
            buf = io.BytesIO()
            photo(rng, width, height).save(buf, "JPEG", quality=90)
            for name, data in [(f"{i:06d}.jpg", buf.getvalue()), (f"{i:06d}.txt", b"a photo")]:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
