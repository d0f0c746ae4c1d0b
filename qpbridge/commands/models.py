"""``qpbridge models list|show``: the models qpbridge can find, and their cards."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from qpbridge.commands._common import reported_errors

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``models`` command group to ``app``."""
    group = typer.Typer(
        help=(
            "List the models qpbridge finds (QPBRIDGE_MODELS, the user directory, the shipped models/) "
            "and show their cards.\n\nExamples:\n\n  qpbridge models list\n\n  qpbridge models show my-cell --json"
        ),
        no_args_is_help=True,
    )
    app.add_typer(group, name="models")

    @group.command("list", help="List models: name, role, classes, um/px, tile size, path.")
    def list_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        from qpbridge.cards import list_models, model_search_dirs

        with reported_errors():
            entries = list_models()
        if as_json:
            rows = [
                {"name": e.name, "path": str(e.path), "shadowed": e.shadowed, "error": e.error,
                 "role": e.card.role if e.card else None, "mpp": e.card.mpp if e.card else None,
                 "tile_px": e.card.tile_px if e.card else None,
                 "classes": [c.name for c in e.card.classes] if e.card else None}
                for e in entries
            ]
            typer.echo(json.dumps(rows, indent=2))
            return
        if not entries:
            dirs = ", ".join(str(d) for d in model_search_dirs())
            typer.echo(f"no models found (searched {dirs})")
            return
        table = Table()
        for header in ("name", "role", "classes", "um/px", "tile px", "path"):
            table.add_column(header)
        for e in entries:
            name = e.name + (" (shadowed)" if e.shadowed else "")
            if e.card is None:
                table.add_row(name, "invalid", e.error or "", "", "", str(e.path))
                continue
            classes = ", ".join(c.name for c in e.card.classes)
            table.add_row(name, e.card.role, classes, f"{e.card.mpp:g}", str(e.card.tile_px), str(e.path))
        Console(width=200).print(table)

    @group.command("show", help="Show a model's card (by name or path).")
    def show_cmd(
        name: str = typer.Argument(..., metavar="NAME", help="Model name or path."),
        as_json: bool = typer.Option(False, "--json", help="Print the card's JSON."),
    ) -> None:
        from qpbridge.cards import load_card, resolve_model_path

        with reported_errors():
            directory = resolve_model_path(name)
            card = load_card(directory)
        if as_json:
            typer.echo(card.to_json().rstrip("\n"))
            return
        lines = [
            f"name:          {card.name}",
            f"path:          {directory}",
            f"role:          {card.role}" + (f" (threshold {card.threshold:g})" if card.threshold is not None else ""),
            f"intended use:  {card.intended_use}",
            f"licence:       {card.license}",
            f"network:       {card.architecture.network} "
            + ", ".join(f"{k}={v}" for k, v in card.architecture.args.items()),
            f"input:         {card.mpp:g} um/px, {card.color_space}, tiles of {card.tile_px} px, "
            f"overlap {card.overlap_frac:g}, {card.blend} blending",
            f"normalisation: mean {list(card.norm_mean)}, std {list(card.norm_std)}",
            f"label 0:       {card.label0}",
            "classes:",
        ]
        for c in card.classes:
            extra = f"; also {', '.join(c.aliases)}" if c.aliases else ""
            lines.append(f"  {c.label}  {c.name}  rgb{c.color}{'' if c.emit else '  (not emitted)'}{extra}")
        metrics = card.metrics
        # A card's metrics are the validation figures, or {"validation": {...}, "held_out": {...}} once evaluated.
        validation = metrics.get("validation", metrics) if isinstance(metrics.get("validation"), dict) else metrics
        if validation:
            keys = ("mean_dice_foreground", "mean_iou_foreground", "pixel_accuracy", "mean_auc", "aji", "dice", "pq",
                    "f1", "val_loss")
            shown = {k: validation.get(k) for k in keys if isinstance(validation.get(k), (int, float))}
            lines.append("validation:    " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
        held_out = metrics.get("held_out")
        if isinstance(held_out, dict):
            for slide, figures in held_out.items():
                if isinstance(figures, dict) and "mean_iou" in figures:
                    lines.append(f"held out {slide}: mean IoU {figures['mean_iou']:.4f}")
        training = card.training
        if training:
            lines.append(f"trained:       {training.get('recipe', {}).get('steps', '?')} steps on "
                         f"{sum(d.get('n_tiles', 0) for d in training.get('data', []))} tiles, "
                         f"{training.get('wall_time_s', '?')} s on {training.get('device', '?')}")
            for command in training.get("commands", []):
                lines.append(f"  $ {command}")
        lines.append(f"weights:       {card.weights_file} (sha256 {card.weights_sha256})")
        typer.echo("\n".join(lines))
