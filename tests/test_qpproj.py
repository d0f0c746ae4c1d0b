"""A QuPath project as input: reading project.qpproj (QuPath 0.4-0.7 layouts), predicting every image into
<project>/qpbridge where import_predictions.groovy looks, --images, the images that fail alone, and masks over the
images with exported corrections.

The projects are written here as QuPath writes them (``DefaultProject``: ``images`` with ``serverBuilder``,
``entryID``, ``randomizedName``, ``imageName``, ``metadata``; 0.7 adds ``tags``; ``data/<id>/server.json``), with
absolute URIs as Java writes them (``file:/path``, percent-encoded) and a project that moved with its slides
(QuPath's relative rule).
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qpbridge.cli import app
from qpbridge.errors import InputError
from qpbridge.predict import is_finished
from qpbridge.predict.pipeline import plan_batch
from qpbridge.qupath import (
    ImageCorrections,
    ProjectImage,
    QuPathProject,
    builder_uris,
    find_project_file,
    image_basename,
    meta_path,
    prediction_path,
    read_project,
)
from qpbridge.qupath import qpproj as qp

runner = CliRunner()
OPENSLIDE = "qupath.lib.images.servers.openslide.OpenslideServerBuilder"
BIOFORMATS = "qupath.lib.images.servers.bioformats.BioFormatsServerBuilder"
OMERO = "qupath.ext.omero.core.imageserver.OmeroImageServerBuilder"
#: an image name with characters a file name cannot hold (the naming rule replaces them)
ODD_NAME = 'Case 2: HER2 "3+" <core>.svs'
FAST = ["--layout", "nchw", "--threads", "1"]


def java_uri(path: str | Path) -> str:
    """A file URI as Java's ``File.toURI()`` writes it: ``file:/tmp/a%20b.svs``."""
    return "file:" + urllib.parse.quote(Path(path).as_posix())


def uri_builder(uri: str, provider: str = OPENSLIDE, args: tuple[str, ...] = (), name: str = "x") -> dict[str, Any]:
    return {
        "builderType": "uri", "providerClassName": provider, "uri": uri, "args": list(args),
        "metadata": {"name": name, "width": 1024, "height": 768, "sizeZ": 1, "sizeT": 1, "channelType": "DEFAULT",
                     "isRGB": True, "pixelType": "UINT8",
                     "levels": [{"downsample": 1.0, "width": 1024, "height": 768}],
                     "channels": [{"name": "Red", "color": -65536}, {"name": "Green", "color": -16711936},
                                  {"name": "Blue", "color": -16776961}],
                     "pixelCalibration": {"pixelWidth": {"value": 0.25, "unit": "µm"},
                                          "pixelHeight": {"value": 0.25, "unit": "µm"},
                                          "zSpacing": {"value": 1.0, "unit": "z-slice"}, "timeUnit": "SECONDS",
                                          "timepoints": []},
                     "magnification": 40.0, "preferredTileWidth": 256, "preferredTileHeight": 256},
    }


def write_project(
    folder: Path, version: str, images: list[tuple[str, dict[str, Any] | None]], *, uri: str | None = None,
    tags: bool = False, server_json: bool = True,
) -> Path:
    """``project.qpproj`` and ``data/<id>/`` as QuPath writes them: entry ids from 1, ``server.json`` beside the
    (here empty) ``data.qpdata`` of each saved image; an image without a builder in the entry keeps only its
    ``server.json`` (``None`` builder: none at all)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for entry_id, (name, builder) in enumerate(images, start=1):
        entry: dict[str, Any] = {"serverBuilder": builder, "entryID": entry_id,
                                 "randomizedName": f"00000000-0000-4000-8000-{entry_id:012d}", "imageName": name,
                                 "metadata": {}}
        if tags:
            entry["tags"] = []
        data = folder / "data" / str(entry_id)
        data.mkdir(parents=True, exist_ok=True)
        (data / "data.qpdata").write_bytes(b"")
        if builder is not None and server_json:
            (data / "server.json").write_text(json.dumps(builder, indent=2))
        entries.append(entry)
    project = {"version": version, "createTimestamp": 1700000000000, "modifyTimestamp": 1700000000000,
               "uri": uri or java_uri(folder / "project.qpproj"), "lastID": len(images), "images": entries}
    (folder / "project.qpproj").write_text(json.dumps(project, indent=2))
    (folder / "classifiers").mkdir(exist_ok=True)
    return folder / "project.qpproj"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``study/slides/case0-2.svs`` (1024 x 768 synthetic slides, seeds 0-2)."""
    from qpbridge.synth import write_synthetic_slide

    root = tmp_path_factory.mktemp("study")
    (root / "slides").mkdir()
    for seed in range(3):
        write_synthetic_slide(root / "slides" / f"case{seed}.svs", width_px=1024, height_px=768, seed=seed)
    return root


def project_04(study: Path) -> Path:
    """A QuPath 0.4 project saved on Windows at D:/old/study/project, moved with its slides to <study>/project0.4:
    case0 by its old (relative) location, case1 by an absolute URI, an image named with odd characters (case2,
    Bio-Formats, series 0), a missing file and an OMERO image."""
    folder = study / "project0.4"
    return write_project(folder, "0.4.3", [
        ("case0.svs", uri_builder("file:/D:/old/study/slides/case0.svs", name="case0.svs")),
        ("case1.svs", uri_builder(java_uri(study / "slides" / "case1.svs"), name="case1.svs")),
        (ODD_NAME, uri_builder(java_uri(study / "slides" / "case2.svs"), BIOFORMATS, ("--series", "0"))),
        ("gone.svs", uri_builder("file:/D:/old/study/slides/gone.svs", name="gone.svs")),
        ("remote", uri_builder("https://omero.example.org/webclient/?show=image-12", OMERO, name="remote")),
    ], uri="file:/D:/old/study/project0.4/project.qpproj")


def project_06(study: Path) -> Path:
    """A QuPath 0.6-0.7 project (``tags``) in place: a pyramidized image, a rotated one, a series of a CZI (both a
    ``#`` fragment and ``--series 2``), an http image, an entry whose builder only server.json holds."""
    folder = study / "project0.6"
    path = write_project(folder, "0.6.0", [
        ("case0.svs", {"builderType": "pyramidize", "builder": uri_builder(java_uri(study / "slides" / "case0.svs")),
                       "metadata": {"name": "case0.svs"}}),
        ("case1 rotated.svs", {"builderType": "rotated", "rotation": "ROTATE_90",
                               "builder": uri_builder(java_uri(study / "slides" / "case1.svs"))}),
        ("tma.czi - Scene #3", uri_builder(java_uri(study / "slides" / "case2.svs") + "#2", BIOFORMATS)),
        ("tma.czi - Scene #4", uri_builder(java_uri(study / "slides" / "case2.svs"), BIOFORMATS, ("--series", "3"))),
        ("web.svs", uri_builder("http://images.example.org/web.svs")),
        ("case2.svs", uri_builder(java_uri(study / "slides" / "case2.svs"))),
    ], tags=True)
    data = json.loads(path.read_text())
    data["images"][5]["serverBuilder"] = None  # only data/6/server.json has it
    path.write_text(json.dumps(data, indent=2))
    return path


# ------------------------------------------------------------------------------------------- reading
def test_reads_a_04_project_that_moved_with_its_slides(study: Path) -> None:
    project = read_project(project_04(study))
    assert (project.version, project.previous_uri) == ("0.4.3", "file:/D:/old/study/project0.4/project.qpproj")
    assert project.folder == study / "project0.4" and project.file.name == "project.qpproj"
    assert project.names == ["case0.svs", "case1.svs", ODD_NAME, "gone.svs", "remote"]
    assert [i.entry_id for i in project.images] == ["1", "2", "3", "4", "5"]
    assert [i.path for i in project.images] == [study / "slides" / "case0.svs", study / "slides" / "case1.svs",
                                                study / "slides" / "case2.svs", None, None]
    assert [i.ok for i in project.images] == [True, True, True, False, False]
    assert project.images[0].uris == ("file:/D:/old/study/slides/case0.svs",)
    assert project.images[2].provider == BIOFORMATS
    gone = project.images[3]
    assert gone.problem == (
        f"file D:\\old\\study\\slides\\gone.svs not found (URI file:/D:/old/study/slides/gone.svs, nor at "
        f"{study / 'slides' / 'gone.svs'}, where it would be had it moved with the project): put it back, or point "
        "the project to it in QuPath (File > Project... > Check project URIs) and save the project")
    assert project.images[4].problem == (
        "not a local file: https://omero.example.org/webclient/?show=image-12 is an OMERO image; qpbridge reads "
        "slide files on this machine only: download the original file (or export the image as OME-TIFF), add it "
        "to the project and run again")
    with pytest.raises(InputError, match=r"^image 'remote': not a local file: https://omero"):
        project.images[4].require_path()
    # the folder finds the project too; a folder of slides is none
    assert read_project(study / "project0.4").names == project.names
    assert find_project_file(study / "slides") is None


def test_reads_a_06_project_wrappers_series_and_server_json(study: Path) -> None:
    project = read_project(project_06(study))
    assert project.version == "0.6.0"
    case0, rotated, scene3, scene4, web, case2 = project.images
    assert case0.path == study / "slides" / "case0.svs" and case0.problem is None  # pyramidize: the same pixels
    assert case2.path == study / "slides" / "case2.svs" and case2.uris == (java_uri(study / "slides/case2.svs"),)
    assert rotated.problem == (
        "QuPath shows this image rotated (ROTATE_90), while qpbridge predicts on the file as it is stored, so the "
        "objects would not line up: add the file to the project again without that transform and predict that image")
    slide2 = study / "slides" / "case2.svs"
    assert scene3.problem == (
        f"series 2 of the multi-image file {slide2} (URI {java_uri(slide2)}#2): qpbridge opens only the first "
        "image of a file; export this series as its own file (in QuPath: File > Export images... > OME TIFF), add "
        "that to the project and run again")
    assert scene4.problem is not None and scene4.problem.startswith(
        f"series 3 of the multi-image file {slide2} (URI {java_uri(slide2)}, args --series 3): ")
    assert web.problem is not None and web.problem.startswith(
        "not a local file: http://images.example.org/web.svs is a http URI; ")
    assert [i.ok for i in project.images] == [True, False, False, False, False, True]
    query = write_project(study / "project-query", "0.5.2", [("q", uri_builder(java_uri(slide2) + "?series=4"))])
    assert read_project(query).images[0].problem.startswith(f"series 4 of the multi-image file {slide2} (URI ")


def test_odd_entries_and_bad_project_files(tmp_path: Path) -> None:
    slide = tmp_path / "a b.svs"
    slide.write_bytes(b"")
    sparse = {"builderType": "sparse", "regions": [
        {"region": {"x": 0, "y": 0, "width": 10, "height": 10, "z": 0, "t": 0},
         "resolutions": [{"downsample": 1.0, "serverBuilder": uri_builder(java_uri(slide))}]},
        {"region": {"x": 10, "y": 0, "width": 10, "height": 10, "z": 0, "t": 0},
         "resolutions": [{"downsample": 1.0, "serverBuilder": uri_builder("file:/elsewhere/c.svs")}]}]}
    path = write_project(tmp_path / "p", "0.5.1", [
        ("plain", {"builderType": "uri", "uri": "../a b.svs"}),  # a hand-written, scheme-less relative path
        ("sparse", sparse), ("nothing", None), ("", uri_builder(java_uri(slide))),
        ("share", uri_builder("file:////server/share/a%20b.svs"))], server_json=False)
    images = read_project(path).images
    assert images[0].path == slide and images[0].ok
    assert images[1].problem == (f"the image is a sparse image made of 2 image(s) ({java_uri(slide)}, "
                                 "file:/elsewhere/c.svs), while qpbridge predicts on one slide file at a time: "
                                 "predict the files themselves")
    assert builder_uris(sparse) == [java_uri(slide), "file:/elsewhere/c.svs"]
    assert images[2].problem == ("the project records no image server for it (nor in data/3/server.json): open "
                                 "the project in QuPath 0.4 or later and save it")
    assert images[3].name == "Image 4" and images[3].ok  # QuPath's name for an entry without one
    assert images[4].problem is not None and images[4].problem.startswith(
        "file \\\\server\\share\\a b.svs not found (URI file:////server/share/a%20b.svs): put it back")
    with pytest.raises(InputError, match=r"QuPath project .*missing.qpproj not found"):
        read_project(tmp_path / "missing.qpproj")
    (tmp_path / "bad.qpproj").write_text("{not json")
    with pytest.raises(InputError, match=r"bad.qpproj is not valid JSON .*restore bad.qpproj.backup"):
        read_project(tmp_path / "bad.qpproj")
    with pytest.raises(InputError, match=r"is not a QuPath project: give its project.qpproj file"):
        read_project(tmp_path)


def test_select_exact_names_and_unknown_ones(study: Path) -> None:
    project = read_project(project_04(study))
    assert [i.name for i in project.select(["remote", "case0.svs"])] == ["case0.svs", "remote"]  # project order
    with pytest.raises(InputError) as info:
        project.select(["case0", "case1.svs"])
    assert str(info.value) == (
        f"no image named 'case0' in QuPath project {project.file} (did you mean 'case0.svs'?); its images: "
        f"'case0.svs', 'case1.svs', {ODD_NAME!r}, 'gone.svs', 'remote'. Give exact image names as QuPath shows them")


def test_targets_are_where_import_predictions_looks_and_clashing_names_fail(tmp_path: Path) -> None:
    for name in ("a/slide1.svs", "b/slide1.svs", "c/other.svs"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    path = write_project(tmp_path / "p", "0.6.0", [
        ("slide1.svs", uri_builder(java_uri(tmp_path / "a/slide1.svs"))),
        ("Slide1.ndpi", uri_builder(java_uri(tmp_path / "b/slide1.svs"))),  # the same file name on Windows, macOS
        (ODD_NAME, uri_builder(java_uri(tmp_path / "c/other.svs"))),
        (ODD_NAME, uri_builder(java_uri(tmp_path / "c/other.svs"))),  # the same image added twice
    ])
    project = read_project(path)
    targets = project.prediction_targets()
    assert [(t.image.entry_id, t.output) for t in targets] == [
        ("1", tmp_path / "p/qpbridge/slide1.geojson"), ("2", tmp_path / "p/qpbridge/Slide1.geojson"),
        ("3", tmp_path / "p/qpbridge/Case 2_ HER2 _3+_ _core_.geojson")]  # entry 4: predicted once, as entry 3
    assert targets[2].output == prediction_path(path, ODD_NAME) and targets[2].problem is None
    assert targets[0].problem == (
        f"its prediction file slide1.geojson would also be the one of image 'Slide1.ndpi' (entry 2, "
        f"{tmp_path / 'b/slide1.svs'}), a different file, so import_predictions.groovy would import one image's "
        "predictions into the other: rename the images in QuPath (right-click > Rename image) so that their names "
        "differ before the extension, and run again")
    assert targets[1].problem is not None and "image 'slide1.svs' (entry 1, " in targets[1].problem
    assert [t.image.entry_id for t in project.prediction_targets([ODD_NAME])] == ["3"]
    assert [t.output for t in project.prediction_targets(["slide1.svs"], folder=tmp_path, gzip=True)] == [
        tmp_path / "slide1.geojson.gz"]
    empty = write_project(tmp_path / "empty", "0.6.0", [])
    with pytest.raises(InputError, match=r"project .*empty/project.qpproj has no images: add images to it"):
        read_project(empty).prediction_targets()


# ------------------------------------------------------------------------------------------- predict
def _names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_predict_a_project_writes_where_import_predictions_reads_and_bad_images_fail_alone(study: Path,
                                                                                        tmp_path: Path) -> None:
    project_file = project_04(study)
    shutil.copytree(project_file.parent, tmp_path / "project")  # a copy this test may write into
    project_file = tmp_path / "project" / "project.qpproj"
    # the copy moved again (its slides did not): case0 is found by its absolute-on-D: path no more
    data = json.loads(project_file.read_text())
    data["images"][0]["serverBuilder"]["uri"] = java_uri(study / "slides" / "case0.svs")
    project_file.write_text(json.dumps(data))
    result = runner.invoke(app, ["predict", str(project_file), *FAST])
    assert result.exit_code == 1, result.output
    folder = tmp_path / "project" / "qpbridge"
    good = ["case0.svs", "case1.svs", ODD_NAME]
    for name in good:
        output = prediction_path(project_file, name)
        assert output == folder / f"{image_basename(name)}.geojson" and is_finished(output)
        meta = json.loads(meta_path(output).read_text())
        assert meta["slide"] == str(study / "slides" / ("case2.svs" if name == ODD_NAME else name))
    assert _names_in(folder) == sorted(["qpbridge-run.json", *(f"{image_basename(n)}.geojson" for n in good),
                                        *(f"{image_basename(n)}.geojson.meta.json" for n in good)])
    lines = result.stdout.strip().splitlines()
    assert [line.split(" -> ")[0] for line in lines] == good
    assert lines[2].startswith(f"{ODD_NAME} -> {folder / 'Case 2_ HER2 _3+_ _core_.geojson'}: ")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: gone.svs: file D:\\old\\study\\slides\\gone.svs not found (URI file:/D:/old/study/slides/gone.svs, "
        f"nor at {tmp_path / 'slides' / 'gone.svs'}, where it would be had it moved with the project): put it "
        "back, or point the project to it in QuPath (File > Project... > Check project URIs) and save the project",
        "error: remote: not a local file: https://omero.example.org/webclient/?show=image-12 is an OMERO image; "
        "qpbridge reads slide files on this machine only: download the original file (or export the image as "
        "OME-TIFF), add it to the project and run again"]
    assert result.stderr.strip().endswith("2 of 5 images failed")
    run = json.loads((folder / "qpbridge-run.json").read_text())
    assert run["counts"] == {"done": 3, "skipped": 0, "failed": 2}
    assert [(s["slide"], s["status"], s["attempts"]) for s in run["slides"]][3:] == [
        ("gone.svs", "failed", 0), ("remote", "failed", 0)]

    # Again: the finished images are skipped, the bad ones fail again (and nothing is rewritten).
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.geojson")}
    again = runner.invoke(app, ["predict", str(project_file.parent), *FAST])
    assert again.exit_code == 1 and again.stdout == ""
    assert " ".join(again.stderr.split()).count("is finished (use --overwrite to redo it)") == 3
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.geojson")} == before


def test_predict_images_selects_exact_names(study: Path, tmp_path: Path) -> None:
    project_file = project_06(study)
    out = tmp_path / "out"
    out.mkdir()
    args = ["predict", str(project_file), "-o", str(out), "--images", "case2.svs", "case0.svs", "--roi-only", *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _names_in(out) == ["case0.geojson", "case0.geojson.meta.json", "case2.geojson", "case2.geojson.meta.json",
                              "qpbridge-run.json"]
    assert [line.split(" -> ")[0] for line in result.stdout.splitlines()] == ["case0.svs", "case2.svs"]
    assert not (project_file.parent / "qpbridge").exists()  # -o replaced the project's folder
    # a bad image selected alone fails alone, with its one line
    rotated = runner.invoke(app, ["predict", str(project_file), "-o", str(out), "--images", "case1 rotated.svs"])
    assert rotated.exit_code == 1
    assert rotated.stderr.splitlines()[0] == "error: case1 rotated.svs: QuPath shows this image rotated (ROTATE_90), " \
        "while qpbridge predicts on the file as it is stored, so the objects would not line up: add the file to " \
        "the project again without that transform and predict that image"
    unknown = runner.invoke(app, ["predict", str(project_file), "--images", "Case0.svs"])
    assert unknown.exit_code == 2
    assert unknown.stderr == (
        f"error: no image named 'Case0.svs' in QuPath project {project_file} (did you mean 'case0.svs'?); its "
        "images: 'case0.svs', 'case1 rotated.svs', 'tma.czi - Scene #3', 'tma.czi - Scene #4', 'web.svs', "
        "'case2.svs'. Give exact image names as QuPath shows them\n")


def test_predict_project_argument_errors(study: Path, tmp_path: Path) -> None:
    project_file = project_06(study)
    slide = study / "slides" / "case0.svs"
    cases = [
        (["predict", str(project_file), str(slide)], 2, f"error: a QuPath project is predicted on its own: give "
         f"{project_file} alone (select some of its images with --images NAME)"),
        (["predict", str(slide), "--images", "case0.svs", "-o", str(tmp_path)], 2, "error: --images selects "
         "images of a QuPath project: give its project.qpproj (or its folder) as the only SLIDE"),
        (["predict", str(slide)], 2, "error: give the output with -o: a .geojson file for one slide, a folder for "
         "several"),
        (["predict", str(project_file), "-o", str(tmp_path / "x.geojson")], 1,
         f"error: -o {tmp_path / 'x.geojson'}: a QuPath project writes one file per image into a folder, and this "
         f"is none (leave -o out for {project_file.parent / 'qpbridge'}, where import_predictions.groovy looks)"),
        (["predict", str(project_file), "--overlay", str(tmp_path / "o.png")], 2, "error: --overlay takes one "
         "slide, and a QuPath project gives one per image: leave --overlay out"),
        (["predict", str(project_file), "--images", "nope"], 2, None),
    ]
    for args, code, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        if message is None:
            continue
        assert " ".join(result.stderr.split()) == message
    assert not (project_file.parent / "qpbridge").exists()


def test_plan_of_a_project(study: Path) -> None:
    project_file = project_04(study)
    plan = plan_batch([project_file.parent], None, images=["remote", "case1.svs"])
    assert plan.several and plan.folder == project_file.parent / "qpbridge"
    assert [(j.slide, j.output.name, j.image, j.error is None) for j in plan.jobs] == [
        (study / "slides" / "case1.svs", "case1.geojson", "case1.svs", True),
        (Path("remote"), "remote.geojson", "remote", False)]


# ------------------------------------------------------------------------------------------- masks
def _export_corrections(project_file: Path, name: str, slide: Path, objects: Path | None = None) -> None:
    """What export_corrections.groovy writes for an image: corrections/<base>.geojson (here the slide's truth,
    or ``objects``) and its sidecar."""
    folder = project_file.parent / "qpbridge" / "corrections"
    folder.mkdir(parents=True, exist_ok=True)
    base = image_basename(name)
    shutil.copyfile(objects or slide.with_suffix(".truth.geojson"), folder / f"{base}.geojson")
    sidecar = {"format": "qpbridge-corrections", "format_version": 2, "image_name": name,
               "image_paths": [str(slide)], "image_uris": [java_uri(slide)], "width_px": 1024, "height_px": 768,
               "pixel_size_um": 0.25}
    (folder / f"{base}.json").write_text(json.dumps(sidecar))


def test_masks_over_the_images_with_corrections(study: Path, tmp_path: Path) -> None:
    shutil.copytree(project_04(study).parent, tmp_path / "project")
    project_file = tmp_path / "project" / "project.qpproj"
    data = json.loads(project_file.read_text())
    data["images"][0]["serverBuilder"]["uri"] = java_uri(study / "slides" / "case0.svs")
    project_file.write_text(json.dumps(data))
    _export_corrections(project_file, ODD_NAME, study / "slides" / "case2.svs")
    _export_corrections(project_file, "case0.svs", study / "slides" / "case0.svs")
    result = runner.invoke(app, ["masks", str(project_file), "-o", str(tmp_path / "tiles"), "--json"])
    assert result.exit_code == 0, result.output
    summaries = json.loads(result.stdout)
    assert [s["slide_id"] for s in summaries] == ["case0", "case2"]
    assert [line for line in result.stderr.splitlines() if "no corrections" in line] == [
        f"warning: 3 of 5 images have no corrections in {tmp_path / 'project' / 'qpbridge' / 'corrections'}, "
        "skipped: 'case1.svs', 'gone.svs', 'remote'"]
    manifest = (tmp_path / "tiles" / "manifest.csv").read_text()
    assert "case0" in manifest and "case2" in manifest and "case1" not in manifest

    # An image with corrections whose slide is not here fails alone (the sidecar's path is tried too).
    _export_corrections(project_file, "gone.svs", tmp_path / "nowhere" / "gone.svs",
                        objects=study / "slides" / "case1.truth.geojson")
    again = runner.invoke(app, ["masks", str(project_file), "--dry-run"])
    assert again.exit_code == 1
    assert [line for line in again.stderr.splitlines() if line.startswith("error: ")] == [
        "error: image 'gone.svs': file D:\\old\\study\\slides\\gone.svs not found (URI "
        f"file:/D:/old/study/slides/gone.svs, nor at {tmp_path / 'slides' / 'gone.svs'}, where it would be had it "
        "moved with the project): put it back, or point the project to it in QuPath (File > Project... > Check "
        "project URIs) and save the project"]
    assert again.stderr.strip().endswith("1 of 3 images with corrections failed")
    assert again.stdout.count("dry run: ") == 2


def test_masks_project_without_corrections_and_with_a_geojson(study: Path) -> None:
    project_file = project_06(study)
    none = runner.invoke(app, ["masks", str(project_file), "--dry-run"])
    assert none.exit_code == 2
    assert " ".join(none.stderr.split()) == (
        f"error: no image of QuPath project {project_file} has exported corrections (looked for "
        f"{project_file.parent / 'qpbridge' / 'corrections'}/<image name>.geojson): run "
        "groovy/export_corrections.groovy in QuPath first (Run > Run for project exports every image)")
    extra = runner.invoke(app, ["masks", str(project_file), "x.geojson", "--dry-run"])
    assert extra.exit_code == 2 and "is a QuPath project, whose corrections are in" in extra.stderr


def test_corrections_fall_back_to_the_sidecars_slide(study: Path, tmp_path: Path) -> None:
    slide = study / "slides" / "case1.svs"
    image = ProjectImage("case1.svs", "2", ("file:/D:/x/case1.svs",), problem="file D:\\x\\case1.svs not found")
    _export_corrections(tmp_path / "project.qpproj", "case1.svs", slide)
    folder = tmp_path / "qpbridge" / "corrections"
    item = ImageCorrections(image, folder / "case1.geojson", folder / "case1.json")
    assert item.slide() == slide
    project = QuPathProject(tmp_path / "project.qpproj", "0.5.1", None, (image,))
    found, without = project.corrections()
    assert (found, without) == ([item], [])


# ------------------------------------------------------------------------------------------- Dask
@pytest.mark.slow
def test_project_on_two_dask_workers(study: Path, tmp_path: Path) -> None:
    """Three images on ``--workers 2``: the two with files land where import_predictions.groovy reads them, the
    missing one fails without being submitted."""
    pytest.importorskip("distributed")
    project_file = write_project(tmp_path / "project", "0.6.0", [
        ("case0.svs", uri_builder(java_uri(study / "slides" / "case0.svs"))),
        ("missing.svs", uri_builder(java_uri(tmp_path / "missing.svs"))),
        ("case1.svs", uri_builder(java_uri(study / "slides" / "case1.svs"))),
    ], tags=True)
    result = runner.invoke(app, ["predict", str(project_file), "--workers", "2", "--roi-only", *FAST])
    assert result.exit_code == 1, result.output
    for name in ("case0.svs", "case1.svs"):
        assert is_finished(prediction_path(project_file, name))
    assert not prediction_path(project_file, "missing.svs").exists()
    assert sorted(line.split(" -> ")[0] for line in result.stdout.splitlines()) == ["case0.svs", "case1.svs"]
    errors = " ".join(result.stderr.split())
    assert f"error: missing.svs: file {tmp_path / 'missing.svs'} not found (URI {java_uri(tmp_path / 'missing.svs')})" \
        ": put it back, or point the project to it in QuPath" in errors
    assert "attempt 1 failed" not in errors and errors.endswith("1 of 3 images failed")
    run = json.loads((project_file.parent / "qpbridge" / "qpbridge-run.json").read_text())
    assert (run["engine"], run["workers"], run["counts"]) == ("distributed", 2, {"done": 2, "skipped": 0, "failed": 1})
    assert [(s["slide"], s["attempts"], s["worker"]) for s in run["slides"] if s["status"] == "failed"] == [
        ("missing.svs", 0, None)]


def test_docstring_examples_run() -> None:
    import doctest

    assert doctest.testmod(qp, optionflags=doctest.ELLIPSIS).failed == 0
