"""``qpbridge convert IN -o OUT``: annotations of any format into QuPath GeoJSON, ASAP XML or a label image."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from qpbridge.commands._common import reported_errors, warn
from qpbridge.commands._options import class_map_option, mpp_option, output_option
from qpbridge.errors import InputError

__all__ = ["parse_size_px", "register"]

HELP = """Convert annotations between formats: any file qpbridge reads (QuPath GeoJSON, ASAP XML, Aperio
ImageScope XML, DSA/HistomicsTK JSON, a label image; found by content, --from to force) into QuPath GeoJSON
(-o *.geojson or *.geojson.gz: valid for QuPath 0.4-0.7 after rounding, every class with a colour), ASAP XML
(-o *.xml: holes as exclusion annotations) or a label image (-o *.png, *.tif, *.tiff: --kind class or
instance).

Object types (--object-type auto): GeoJSON keeps its own, a label image's instances are detections and its
classes annotations, and ASAP/ImageScope/DSA files get detections when they hold many small objects (nuclei),
else annotations.

--class-map ('NAME=VALUE,...', a JSON file, a dataset.json or model): into GeoJSON or ASAP, VALUE renames the
class (a class name; a label number = that DeepBatch class, as in qpbridge masks; ignore = Ignore*, region =
Region*; skip leaves the objects out); into a class label image, VALUE is the pixel label (a number, ignore =
255, skip). A label image's classes are named by their numbers ('1=Tumor').

A label image written covers the slide (--slide, or --size-px WIDTHxHEIGHT at level 0) at --label-mpp um/px
(default the slide's full resolution; needs the slide's um/px from --slide or --mpp). One read is placed the
same way (default: the resolution it records, else level 0).

Examples:

  qpbridge convert A01.xml -o A01.geojson --class-map "Carcinoma in situ=2,Carcinoma invasive=3"

  qpbridge convert TCGA-B0-5698.xml -o nuclei.geojson

  qpbridge convert corrected.geojson -o corrected.xml

  qpbridge convert corrected.geojson -o labels.png --slide slide.svs --label-mpp 2 --kind class

  qpbridge convert instances.png -o nuclei.geojson --object-type detection"""

_SIZE = re.compile(r"^\s*(\d+)\s*[x,X]\s*(\d+)\s*$")
_MAX_WARNINGS = 10


def parse_size_px(text: str) -> tuple[int, int]:
    """``(width, height)`` from ``"WIDTHxHEIGHT"`` (or ``"WIDTH,HEIGHT"``), both positive.

    >>> parse_size_px("2220x2967"), parse_size_px("100, 80")
    ((2220, 2967), (100, 80))
    """
    match = _SIZE.match(text)
    if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
        raise InputError(f"--size-px {text!r} is not WIDTHxHEIGHT in pixels (e.g. --size-px 2220x2967)")
    return int(match.group(1)), int(match.group(2))


def register(app: typer.Typer) -> None:
    """Add the ``convert`` command to ``app``."""

    @app.command("convert", help=HELP)
    def convert_cmd(
        source: Path = typer.Argument(..., metavar="IN", help="Annotation file (format found by content)."),
        output: Path = output_option(
            "Output: .geojson/.geojson.gz (QuPath GeoJSON), .xml (ASAP XML), .png/.tif/.tiff (label image).",
            required=True,
        ),
        from_format: str | None = typer.Option(
            None, "--from", help="Input format, not detected: geojson, asap, imagescope, dsa or labels."
        ),
        object_type: str = typer.Option(
            "auto", "--object-type", help="auto, annotation or detection (the QuPath type of every object)."
        ),
        kind: str = typer.Option(
            "auto", "--kind",
            help="Label images: instance (one id per object) or class; auto: reading, instance; writing, instance "
            "when every object is a detection, else class.",
        ),
        class_map: str | None = class_map_option(
            "Class names -> new names (GeoJSON, ASAP) or labels (label image): 'NAME=VALUE,...', a JSON file, a "
            "dataset.json or card.json, or a model name."
        ),
        exclusion_group: list[str] | None = typer.Option(
            None, "--exclusion-group",
            help="ASAP: a group whose areas are holes in the others (repeatable; default _2, Exclusion, exclusion); "
            "the first is the group holes are written into.",
        ),
        slide: Path | None = typer.Option(
            None, "--slide", help="The slide: its size (clips objects; a label image's extent) and um/px."
        ),
        mpp: float | None = mpp_option(),
        label_mpp: float | None = typer.Option(
            None, "--label-mpp", help="um/px of the label image written or read (default: the slide's full resolution)."
        ),
        size_px: str | None = typer.Option(
            None, "--size-px", help="Without --slide: the level-0 image size, WIDTHxHEIGHT (for a label image)."
        ),
        threshold: float | None = typer.Option(
            None, "--threshold", help="A black-and-white mask read (a JPEG): pixels brighter than this are label 1."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print what was converted as JSON on stdout."),
    ) -> None:
        with reported_errors():
            from qpbridge.formats import convert_annotations
            from qpbridge.rasterize import parse_class_map

            mapping = parse_class_map(class_map) if class_map is not None else None
            size = parse_size_px(size_px) if size_px is not None else None
            slide_mpp = mpp
            if slide is not None:
                if size is not None:
                    raise InputError("give --slide or --size-px, not both: the slide gives the image size")
                from qpbridge.slide import open_slide

                with open_slide(slide, mpp=mpp) as opened:
                    size = opened.qupath_size_px
                    if opened.has_mpp:
                        slide_mpp = opened.mpp
            result = convert_annotations(
                source,
                output,
                from_format=from_format,
                object_type=object_type,
                class_map=mapping,
                exclusion_groups=exclusion_group,
                kind=kind,
                slide_size_px=size,
                slide_mpp=slide_mpp,
                label_mpp=label_mpp,
                threshold=threshold,
            )
        for message in result.warnings[:_MAX_WARNINGS]:
            warn(message)
        if len(result.warnings) > _MAX_WARNINGS:
            warn(f"... and {len(result.warnings) - _MAX_WARNINGS} more reading warnings")
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        typer.echo(result.summary_line(), err=True)
