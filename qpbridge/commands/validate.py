"""``qpbridge validate FILE``: will QuPath 0.4-0.7 import this GeoJSON as intended? ``--fix -o OUT`` repairs it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qpbridge.commands._common import reported_errors
from qpbridge.commands._options import output_option
from qpbridge.errors import InputError
from qpbridge.formats import require_geojson
from qpbridge.qupath import fix_geojson, validate_geojson


def register(app: typer.Typer) -> None:
    """Add the ``validate`` command to ``app``."""

    @app.command(
        "validate",
        help=(
            "Check a GeoJSON file against what QuPath 0.4-0.7 imports: lists every feature QuPath would "
            "reject or mangle (classification without colour, unclosed ring, null geometry, "
            "GeometryCollection, polygon invalid after rounding to 0.01 px, objectType outside properties, "
            "...) with the reason. Exit code 0 when everything imports as intended (warnings allowed), 1 "
            "otherwise; with --fix, the exit code is that of the repaired file.\n\n"
            "Examples:\n\n  qpbridge validate out.geojson\n\n"
            "  qpbridge validate tiatoolbox.json --fix -o fixed.geojson\n\n"
            "  qpbridge validate out.geojson.gz --json"
        ),
    )
    def validate_cmd(
        file: Path = typer.Argument(..., metavar="FILE", help="GeoJSON file (.geojson, .json, .gz, .zip)."),
        fix: bool = typer.Option(False, "--fix", help="Write a repaired copy to -o (never over FILE)."),
        output: Path | None = output_option("Output of --fix (.geojson[.gz])."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
        max_lines: int = typer.Option(50, "--max-lines", min=0, help="Issues listed before '... and N more'."),
    ) -> None:
        with reported_errors():
            if fix and output is None:
                raise InputError("--fix needs an output file: add -o FIXED.geojson")
            if output is not None and not fix:
                raise InputError(f"-o {output} is only used with --fix: add --fix or drop -o")
            require_geojson(file)  # another format: one line that suggests qpbridge convert
            report = validate_geojson(file)
            fixed = fix_geojson(file, output) if fix and output is not None else None
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
                    "report": fixed.report.to_dict(),
                }
            typer.echo(json.dumps(data, indent=2))
        else:
            for line in report.lines(max_lines):
                typer.echo(line)
            typer.echo(report.summary_line())
            if fixed is not None:
                w = fixed.written
                typer.echo(
                    f"fixed: wrote {output}: {w.written} features ({fixed.read.total} read, "
                    f"{len(fixed.read.skipped)} skipped on reading, {len(fixed.read.repaired) + w.repaired} "
                    f"repaired, {w.dropped_empty} dropped as empty, {w.replaced_ids} ids replaced, "
                    f"{w.skipped_measurements} non-finite measurements left out)"
                )
                for line in fixed.report.lines(max_lines):
                    typer.echo(f"  {line}")
                typer.echo(fixed.report.summary_line())
        final = fixed.report if fixed is not None else report
        if not final.ok:
            raise typer.Exit(1)
