"""Every annotation format wherever GeoJSON is read: ``masks``, ``diff``, ``evaluate``; ``validate`` names the
format and points to ``convert``; the BACH recipe of ``docs/bach.md``."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely import box
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.diff import diff_files, match_pairs
from qpbridge.formats import write_asap
from qpbridge.qupath import Feature, read_geojson, write_geojson

DOCS = Path(__file__).resolve().parents[1] / "docs"
MASKS_FAST = ("--tile-px", "128", "--qa-mpp", "0", "--min-tissue-frac", "0")


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _ring(points: np.ndarray) -> str:
    return "".join(f'<Vertex X="{x!r}" Y="{y!r}"/>' for x, y in points[:-1].tolist())


def write_imagescope(path: Path, features: list[Feature], *, per_region: bool = True) -> Path:
    """Aperio ImageScope XML: BACH's layout (one unnamed layer, each region's class in its ``Text``), or one
    named layer per class (``per_region=False``). Polygons only, without holes."""
    def region(k: int, f: Feature, text: str) -> str:
        ring = np.asarray(f.geometry.exterior.coords)
        return (f'<Region Id="{k + 1}" Type="0" Text="{text}" NegativeROA="0"><Attributes/>'
                f"<Vertices>{_ring(ring)}</Vertices></Region>")

    if per_region:
        regions = "".join(region(k, f, f.class_name or "") for k, f in enumerate(features))
        layers = (f'<Annotation Id="1" Name="" LineColor="65280"><Attributes><Attribute Name="Description" Id="0" '
                  f'Value=""/></Attributes><Regions>{regions}</Regions></Annotation>')
    else:
        names = sorted({f.class_name or "" for f in features})
        layers = "".join(
            f'<Annotation Id="{n + 1}" Name="{name}" LineColor="255"><Regions>'
            + "".join(region(k, f, "") for k, f in enumerate(features) if (f.class_name or "") == name)
            + "</Regions></Annotation>"
            for n, name in enumerate(names)
        )
    path.write_text(f'<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.25">{layers}</Annotations>\n')
    return path


def write_dsa(path: Path, features: list[Feature]) -> Path:
    """A DSA annotation document: one closed polyline per polygon, labelled with its class."""
    elements = [
        {"type": "polyline", "closed": True, "label": {"value": f.class_name},
         "points": [[x, y, 0] for x, y in np.asarray(f.geometry.exterior.coords)[:-1].tolist()],
         "holes": [[[x, y, 0] for x, y in np.asarray(h.coords)[:-1].tolist()] for h in f.geometry.interiors]}
        for f in features
    ]
    path.write_text(json.dumps([{"annotation": {"name": "corrections", "elements": elements}}]))
    return path


# --- diff ---------------------------------------------------------------------------------------------
PREDICTED = [Feature(box(0, 0, 100, 100), "Benign"), Feature(box(200, 0, 300, 100), "Invasive carcinoma")]
CORRECTED = [
    Feature(shapely.Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [[(20, 20), (40, 20), (40, 40), (20, 40)]]),
            "Invasive carcinoma"),
    Feature(box(200, 0, 260, 100), "Invasive carcinoma"),
    Feature(box(400, 0, 450, 50), "In situ carcinoma"),
]


def _corrections_in_every_format(folder: Path) -> dict[str, Path]:
    plain = [f for f in CORRECTED if not f.geometry.interiors]
    return {
        "geojson": write_geojson(folder / "c.geojson", CORRECTED) and folder / "c.geojson",
        "asap": write_asap(folder / "c_asap.xml", CORRECTED) and folder / "c_asap.xml",
        "dsa": write_dsa(folder / "c_dsa.json", CORRECTED),
        "imagescope": write_imagescope(folder / "c_imagescope.xml", plain, per_region=False),
        "imagescope_geojson": write_geojson(folder / "c_plain.geojson", plain) and folder / "c_plain.geojson",
    }


def test_diff_reads_every_format(tmp_path: Path) -> None:
    write_geojson(tmp_path / "p.geojson", PREDICTED)
    files = _corrections_in_every_format(tmp_path)
    reference = diff_files(tmp_path / "p.geojson", files["geojson"], mpp=0.5).to_dict()
    assert reference["relabelled_um2"] == {"Benign": {"Invasive carcinoma": 2400.0}}
    assert reference["totals"]["removed_um2"] == 1100.0 and reference["totals"]["added_um2"] == 625.0
    for name in ("asap", "dsa"):
        got = diff_files(tmp_path / "p.geojson", files[name], mpp=0.5).to_dict()
        assert got["totals"] == reference["totals"] and got["relabelled_um2"] == reference["relabelled_um2"], name
    plain = diff_files(tmp_path / "p.geojson", files["imagescope_geojson"], mpp=0.5).to_dict()
    via_xml = diff_files(tmp_path / "p.geojson", files["imagescope"], mpp=0.5).to_dict()
    assert via_xml["totals"] == plain["totals"] and via_xml["totals"]["removed_um2"] == 3500.0
    assert via_xml["per_class"] == plain["per_class"]
    code, stdout, stderr = invoke("diff", tmp_path / "p.geojson", files["asap"], "--mpp", "0.5", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["totals"] == reference["totals"] and data["name"] == "c_asap"


def test_diff_pairs_folders_of_xml_and_dsa_corrections(tmp_path: Path) -> None:
    pred, corr = tmp_path / "pred", tmp_path / "corr"
    pred.mkdir(), corr.mkdir()
    for name in ("A01", "A02", "A03"):
        write_geojson(pred / f"{name}.geojson", PREDICTED)
    write_asap(corr / "A01.xml", CORRECTED)
    write_dsa(corr / "A02.json", CORRECTED)
    (corr / "A03.json").write_text(json.dumps({"format": "qpbridge-corrections-sidecar", "image_name": "A03.svs"}))
    write_imagescope(corr / "A04.xml", CORRECTED[1:])
    match = match_pairs(pred, corr)
    assert [(n, p.name, c.name) for n, p, c in match.pairs] == [("A01", "A01.geojson", "A01.xml"),
                                                                ("A02", "A02.geojson", "A02.json")]
    assert match.predicted_only == ["A03"] and match.corrected_only == ["A04"]
    write_geojson(corr / "A01.geojson", CORRECTED)
    again = match_pairs(pred, corr)
    assert [c.name for _, _, c in again.pairs] == ["A01.geojson", "A02.json"]
    assert again.warnings == [f"corrections folder {corr}: A01.geojson, A01.xml are all for 'A01'; using A01.geojson"]
    code, stdout, stderr = invoke("diff", pred, corr, "--mpp", "0.5", "--json")
    assert code == 0, stderr
    assert [s["name"] for s in json.loads(stdout)["slides"]] == ["A01", "A02"]


# --- evaluate -----------------------------------------------------------------------------------------
def test_evaluate_reads_xml_and_dsa_truth(tmp_path: Path) -> None:
    write_geojson(tmp_path / "pred.geojson", CORRECTED)
    files = _corrections_in_every_format(tmp_path)
    for name in ("asap", "dsa"):
        code, stdout, stderr = invoke("evaluate", tmp_path / "pred.geojson", files[name], "--json")
        assert code == 0, stderr
        by_name = {c["name"]: c for c in json.loads(stdout)["classes"]}
        assert by_name["Invasive carcinoma"]["iou"] == 1.0 and by_name["In situ carcinoma"]["iou"] == 1.0, name
    code, _, stderr = invoke("evaluate", tmp_path / "pred.geojson", tmp_path / "mask.png")
    assert code == 2 and stderr.startswith("error: compare like with like:")


# --- validate -----------------------------------------------------------------------------------------
def test_validate_names_other_formats_and_suggests_convert(tmp_path: Path) -> None:
    files = _corrections_in_every_format(tmp_path)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "mask.png")
    expected = {
        files["asap"]: "ASAP XML",
        files["imagescope"]: "Aperio ImageScope XML",
        files["dsa"]: "Digital Slide Archive / HistomicsTK annotation JSON",
        tmp_path / "mask.png": "label image",
    }
    for path, title in expected.items():
        code, stdout, stderr = invoke("validate", path)
        target = path.with_suffix(".geojson")
        assert (code, stdout) == (1, "")
        assert stderr == (f"error: {path}: {title}, not QuPath GeoJSON: validate checks QuPath GeoJSON only; "
                          f"convert it first: qpbridge convert {path} -o {target}\n")
    code, stdout, _ = invoke("validate", files["geojson"])
    assert code == 0 and "c.geojson" in stdout


# --- masks --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slide_and_lesions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Feature]]:
    """A 2048 x 1536 synthetic slide (0.25 um/px) and its lesion regions (Benign, In situ, Invasive carcinoma)."""
    from qpbridge.synth import write_synthetic_slide

    folder = tmp_path_factory.mktemp("bach")
    result = write_synthetic_slide(folder / "A01.svs", width_px=2048, height_px=1536, seed=3)
    lesions = [f for f in read_geojson(result.truth_path).features
               if f.class_name in ("Benign", "In situ carcinoma", "Invasive carcinoma")]
    assert sorted(f.class_name for f in lesions) == ["Benign", "In situ carcinoma", "Invasive carcinoma"]
    return result.slide_path, lesions


def _pixels(stdout: str) -> dict[str, int] | list[dict[str, int]]:
    data = json.loads(stdout)
    return [d["pixels_by_label"] for d in data] if isinstance(data, list) else data["pixels_by_label"]


def test_masks_reads_every_format(slide_and_lesions: tuple[Path, list[Feature]], tmp_path: Path) -> None:
    slide, lesions = slide_and_lesions
    write_geojson(tmp_path / "l.geojson", lesions)
    common = ("--dry-run", "--json", "--tile-mpp", "2", *MASKS_FAST)
    code, stdout, stderr = invoke("masks", slide, tmp_path / "l.geojson", *common)
    assert code == 0, stderr
    reference = _pixels(stdout)
    assert isinstance(reference, dict) and all(reference[k] > 0 for k in ("0", "1", "2", "3"))
    sources = {
        "asap": write_asap(tmp_path / "l.xml", lesions) and tmp_path / "l.xml",
        "imagescope": write_imagescope(tmp_path / "l_is.xml", lesions),
        "dsa": write_dsa(tmp_path / "l.json", lesions),
    }
    for name, path in sources.items():
        code, stdout, stderr = invoke("masks", slide, path, *common)
        assert code == 0, (name, stderr)
        assert _pixels(stdout) == reference, name
    # a class label image at the tile grid (2 um/px) gives the same labels
    code, _, stderr = invoke("convert", tmp_path / "l.geojson", "-o", tmp_path / "l.png", "--slide", slide,
                             "--label-mpp", "2", "--kind", "class")
    assert code == 0, stderr
    code, stdout, stderr = invoke("masks", slide, tmp_path / "l.png", *common)
    assert code == 0, stderr
    assert _pixels(stdout) == reference


def test_masks_folder_errors(slide_and_lesions: tuple[Path, list[Feature]], tmp_path: Path) -> None:
    slide, _ = slide_and_lesions
    folder = tmp_path / "WSI"
    folder.mkdir()
    shutil.copy(slide, folder / "A05.svs")
    code, _, stderr = invoke("masks", folder, "--dry-run")
    assert code == 2
    assert stderr == (
        f"error: none of the 1 slide(s) in {folder} has an annotation file beside them (looked for <slide>.geojson, "
        "<slide>.geojson.gz, <slide>.xml, <slide>.xml.gz, <slide>.json, <slide>.json.gz): give --annotations, e.g. "
        "'{stem}.xml'\n"
    )
    code, _, stderr = invoke("masks", folder, tmp_path / "x.xml", "--dry-run")
    assert (code, stderr) == (2, f"error: {folder} is a folder of slides: give its annotations with --annotations "
                                 "DIR or PATTERN (e.g. '{stem}.xml'), not a second argument\n")
    code, _, stderr = invoke("masks", slide, tmp_path / "x.xml", "--annotations", "{stem}.xml", "--dry-run")
    assert (code, stderr) == (2, "error: --annotations applies to a folder of slides: give SLIDE GEOJSON for one "
                                 "slide\n")
    code, _, stderr = invoke("masks", folder, "--annotations", tmp_path / "nowhere", "--dry-run")
    assert (code, stderr) == (2, f"error: --annotations {tmp_path / 'nowhere'}: give a folder of annotation files "
                                 "or a pattern with {stem}, e.g. --annotations '{stem}.xml'\n")


# --- BACH ---------------------------------------------------------------------------------------------
BACH_SPELLINGS = {"Benign": "Benign", "In situ carcinoma": "Carcinoma in situ",
                  "Invasive carcinoma": "Carcinoma invasive"}
ASAP_SPELLINGS = {"Benign": "Benign", "In situ carcinoma": "Insitu", "Invasive carcinoma": "Invasive"}


def _documented_masks_commands() -> list[list[str]]:
    text = (DOCS / "bach.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [shlex.split(line)[1:] for block in blocks for line in block.splitlines()
            if line.startswith("qpbridge masks ")]


def test_bach_recipe(slide_and_lesions: tuple[Path, list[Feature]], tmp_path: Path) -> None:
    slide, lesions = slide_and_lesions
    wsi = tmp_path / "WSI"
    wsi.mkdir()
    for name in ("A01", "A02", "A03"):
        shutil.copy(slide, wsi / f"{name}.svs")
    bach = [Feature(f.geometry, BACH_SPELLINGS[f.class_name or ""]) for f in lesions]
    write_imagescope(wsi / "A01.xml", bach)                     # BACH's layout: region Text labels
    write_asap(wsi / "A03.xml", [Feature(f.geometry, ASAP_SPELLINGS[f.class_name or ""]) for f in lesions])
    write_geojson(tmp_path / "lesions.geojson", lesions)         # the same regions with DeepBatch names

    commands = _documented_masks_commands()
    assert len(commands) == 2 and all(c[:3] == ["masks", "WSI/", "--annotations"] for c in commands)
    for command, role in zip(commands, ("cell", "roi"), strict=True):
        out = tmp_path / "tiles" / role
        args = [str(wsi) if a == "WSI/" else str(out) if a == f"tiles/{role}" else a for a in command]
        code, stdout, stderr = invoke(*args, "--json", *MASKS_FAST)
        assert code == 0, stderr
        assert "warning: A02.svs: no annotation file: skipped" in stderr.splitlines()
        got = _pixels(stdout)
        reference_args = [a for a in args if a not in ("--annotations", "{stem}.xml")]
        reference_args[1:2] = [str(slide), str(tmp_path / "lesions.geojson")]
        reference_args[reference_args.index("-o") + 1] = str(tmp_path / f"reference-{role}")
        reference_args = reference_args[:reference_args.index("--class-map")] + reference_args[
            reference_args.index("--class-map") + 2:]
        code, ref_stdout, stderr = invoke(*reference_args, "--json", *MASKS_FAST)
        assert code == 0, stderr
        reference = _pixels(ref_stdout)
        assert got == [reference, reference], role
        meta = json.loads((out / "dataset.json").read_text())
        assert [s["slide"] for s in meta["slides"]] == ["A01", "A03"]
        names = [c["name"] for c in meta["classes"]]
        if role == "cell":
            assert names == ["Normal", "Benign", "In situ carcinoma", "Invasive carcinoma"]
            assert all(reference[k] > 0 for k in ("0", "1", "2", "3"))
        else:
            assert names == ["Background", "ROI"]
            assert reference["1"] > 0 and reference["0"] > 0
