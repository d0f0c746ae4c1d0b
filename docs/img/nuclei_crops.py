"""Render the README's real-slide nuclei figure: nuclei outlines from ``predict`` drawn on crops of the slides.

Usage (from the repository root, after the two predictions)::

    qpbridge predict ../shared/data/wsi/cmu-1-small-region.svs -o /tmp/cmu1.geojson --nuclei-only
    qpbridge predict ../shared/data/monuseg-train/images/TCGA-A7-A13E-01Z-00-DX1.tif --mpp 0.25 \\
        -o /tmp/a7.geojson --nuclei-only
    python docs/img/nuclei_crops.py /tmp/cmu1.geojson:../shared/data/wsi/cmu-1-small-region.svs:900:1300:400 \\
        /tmp/a7.geojson:../shared/data/monuseg-train/images/TCGA-A7-A13E-01Z-00-DX1.tif:300:300:400 \\
        -o docs/img/nuclei_real.jpg

Each argument is ``GEOJSON:SLIDE:X:Y:SIDE`` (a level-0 crop); the crops are scaled to 480 px and put side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw

from qpbridge.qupath import read_geojson
from qpbridge.slide import open_slide

SIDE_OUT = 480


def crop_with_nuclei(geojson: Path, slide_path: Path, x: int, y: int, side: int, mpp: float | None) -> Image.Image:
    """The crop ``[x, x + side) x [y, y + side)`` of the slide with the nuclei outlined in green."""
    with open_slide(slide_path, mpp=mpp) as slide:
        rgb = slide.read_region_at(x, y, side, side, slide.mpp)
    image = Image.fromarray(rgb).resize((SIDE_OUT, SIDE_OUT), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    scale = SIDE_OUT / side
    box = shapely.box(x, y, x + side, y + side)
    for feature in read_geojson(geojson).features:
        geom = feature.geometry
        if geom is None or not geom.intersects(box):
            continue
        for poly in getattr(geom, "geoms", [geom]):
            ring = np.asarray(poly.exterior.coords)
            draw.line([((px - x) * scale, (py - y) * scale) for px, py in ring], fill=(0, 230, 60), width=2)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("crops", nargs="+", help="GEOJSON:SLIDE:X:Y:SIDE")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    images = []
    for spec in args.crops:
        geojson, slide, x, y, side = spec.rsplit(":", 4)
        mpp = 0.25 if slide.endswith((".tif", ".png")) else None
        images.append(crop_with_nuclei(Path(geojson), Path(slide), int(x), int(y), int(side), mpp))
    out = Image.new("RGB", (SIDE_OUT * len(images) + 8 * (len(images) - 1), SIDE_OUT), (255, 255, 255))
    for k, image in enumerate(images):
        out.paste(image, (k * (SIDE_OUT + 8), 0))
    out.save(args.output, quality=85, optimize=True)  # .jpg (small) or .png
    print(f"wrote {args.output} ({out.width} x {out.height})")


if __name__ == "__main__":
    main()
