"""``qpbridge validate FILE``: what each QuPath version (0.4-0.7) makes of a GeoJSON file; ``--fix -o OUT`` repairs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qpbridge.commands._common import reported_errors
from qpbridge.commands._options import output_option
from qpbridge.errors import InputError
from qpbridge.formats import require_geojson
from qpbridge.qupath.validate import fix_geojson, parse_qupath_versions, validate_geojson

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``validate`` command to ``app``."""

    @app.command(
        "validate",
        help=(
            "Check a GeoJSON file against what QuPath 0.4, 0.5, 0.6 and 0.7 import (0.6 and 0.7 read GeoJSON "
            "alike): lists every feature a version would reject or mangle (classification without colour, "
            "unclosed ring, null geometry, GeometryCollection, polygon invalid after rounding to 0.01 px, "
            "\"NaN\" measurements, objectType outside properties, ...) with the reason, then one verdict per "
            "version: imports it as intended, imports it but mangles some objects (which, and how), or "
            "rejects the whole file (why, and the first feature). Exit code 0 when every version asked "
            "imports it as intended (warnings allowed), 1 otherwise; with --fix, the exit code is that of "
            "the repaired file.\n\n"
            "Examples:\n\n  qpbridge validate out.geojson\n\n"
            "  qpbridge validate export.geojson --qupath 0.5+\n\n"
            "  qpbridge validate tiatoolbox.json --fix -o fixed.geojson\n\n"
            "  qpbridge validate out.geojson.gz --json\n\n"
            "  qpbridge validate corrected.geojson --slide slide.svs"
        ),
    )
    def validate_cmd(
        file: Path = typer.Argument(..., metavar="FILE", help="GeoJSON file (.geojson, .json, .gz, .zip)."),
        qupath: str | None = typer.Option(
            None,
            "--qupath",
            metavar="VERSIONS",
            help=(
                "QuPath version(s) to judge for: 0.6, a range 0.5+ or 0.4-0.5. Default: every version "
                "qpbridge supports (0.4-0.7), since files travel between labs."
            ),
        ),
        fix: bool = typer.Option(
            False, "--fix", help="Write a copy repaired for the versions asked to -o (never over FILE)."
        ),
        output: Path | None = output_option("Output of --fix (.geojson[.gz])."),
        slide: Path | None = typer.Option(
            None, "--slide", metavar="SLIDE",
            help="The slide the file belongs to: objects far outside its image are errors (without it, only "
            "coordinates larger than any slide are, as warnings).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
        max_lines: int = typer.Option(50, "--max-lines", min=0, help="Issues listed before '... and N more'."),
    ) -> None:
        with reported_errors(output):
            versions = parse_qupath_versions(qupath)
            if fix and output is None:
                raise InputError("--fix needs an output file: add -o FIXED.geojson")
            if output is not None and not fix:
                raise InputError(f"-o {output} is only used with --fix: add --fix or drop -o")
            require_geojson(file)  # another format: one line that suggests qpbridge convert
            size = None
            if slide is not None:
                from qpbridge.slide import open_slide

                with open_slide(slide) as opened:
                    size = opened.qupath_size_px
            report = validate_geojson(file, versions, image_size_px=size)
            fixed = None
            if fix and output is not None:
                fixed = fix_geojson(file, output, versions)
                if size is not None:  # the repaired file, judged against the slide too
                    fixed.report = validate_geojson(output, versions, image_size_px=size)
        if as_json:
            data = report.to_dict()
            if fixed is not None:
                data["fixed"] = {
                    "output": str(output),
                    "read": {
                        "total": fixed.read.total,
                        "skipped": fixed.read.skipped,
                        "repaired": fixed.read.repaired,
                    },
                    "written": fixed.written.to_dict(),
                    "metadata_dropped": fixed.metadata_dropped,
                    "report": fixed.report.to_dict(),
                }
            typer.echo(json.dumps(data, indent=2))
        else:
            for line in report.lines(max_lines):
                typer.echo(line)
            for line in report.summary_lines():
                typer.echo(line)
            if fixed is not None:
                w = fixed.written
                n = fixed.metadata_dropped
                metadata = (
                    f", metadata left out of {n} detection{'s' * (n != 1)} (QuPath 0.5 logs a stack trace for each)"
                    if n
                    else ""
                )
                typer.echo(
                    f"fixed: wrote {output}: {w.written} features ({fixed.read.total} read, "
                    f"{len(fixed.read.skipped)} skipped on reading, {len(fixed.read.repaired) + w.repaired} "
                    f"repaired, {w.dropped_empty} dropped as empty, {w.replaced_ids} ids replaced, "
                    f"{w.skipped_measurements} non-finite measurements left out{metadata})"
                )
                for line in fixed.report.lines(max_lines):
                    typer.echo(f"  {line}")
                for line in fixed.report.summary_lines():
                    typer.echo(line)
        final = fixed.report if fixed is not None else report
        if not final.ok:
            raise typer.Exit(1)
