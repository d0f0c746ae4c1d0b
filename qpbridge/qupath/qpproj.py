"""Reading QuPath projects: ``project.qpproj`` (and ``data/<id>/server.json``) -> the images and their files.

No QuPath and no torch: a project is JSON that QuPath 0.2-0.7 writes with Gson (``DefaultProject``). The parts
that matter here, as QuPath 0.4, 0.5, 0.6 and 0.7 write them::

    {"version": "0.6.0", "uri": "file:/D:/study/project/project.qpproj", "lastID": 2,
     "images": [{"serverBuilder": {"builderType": "uri",
                                   "providerClassName": "qupath.lib.images.servers.openslide.OpenslideServerBuilder",
                                   "uri": "file:/D:/study/slides/Case%201.svs", "args": [], "metadata": {...}},
                 "entryID": 1, "randomizedName": "6fc53dd8-...", "imageName": "Case 1.svs", "metadata": {}}]}

* ``images`` is a list in project order (the image list QuPath shows, unsorted); 0.7 adds ``"tags": []`` to each
  entry, ``description`` is there when one was typed. ``entryID`` names the entry's folder ``data/<entryID>/``,
  where QuPath keeps ``data.qpdata`` and, once the image was saved, ``server.json``: the same server builder
  again (read here when the entry itself lacks one).
* ``imageName`` is the name QuPath shows and that its scripts see (``getCurrentImageName()``); the prediction and
  corrections files are named after it (:func:`qpbridge.qupath.project.image_basename`). ``randomizedName`` is
  what QuPath shows instead while *Mask image names* is on.
* A server builder (``ImageServers`` / ``ImageServerBuilder`` in qupath-core) is ``{"builderType": "uri",
  "providerClassName", "uri", "args", "metadata"}`` for an image read from a URI, or a wrapper holding a nested
  ``builder``: ``"pyramidize"`` (a pyramid computed on the fly), ``"swapRedBlue"``, ``"color"``,
  ``"color_deconvolved"`` (same pixel grid as the image they wrap), ``"rotated"`` (``"rotation": "ROTATE_90"``),
  ``"affine"``, ``"cropped"`` (other coordinates than the file's), ``"channels"`` (its channel builders in
  ``channels``) and ``"sparse"`` (``regions[].resolutions[].serverBuilder``: several files).
* URIs are absolute, as Java writes them: ``file:/home/me/a.svs``, ``file:/D:/slides/a%20b.svs`` (Windows),
  percent-encoded. Bio-Formats images carry ``"args": ["--series", "N"]`` (``"0"`` for a single-image file too).
  A non-file URI is served from elsewhere: OMERO (``https://omero.../webclient/?show=image-12`` read by QuPath's
  OMERO extension, or an ``omero-ice://`` URI), http, s3...
* Relative locations: QuPath writes no relative URIs; the top-level ``uri`` records where the project file was
  when it was last saved. When a file is missing and the project has moved since, QuPath (``ProjectCheckUris``)
  suggests the same path relative to the project's new location: ``D:/study/project`` -> ``/mnt/study/project``
  turns ``D:/study/slides/a.svs`` into ``/mnt/study/slides/a.svs``. :func:`read_project` does the same, and also
  reads a scheme-less path (a hand-written project) relative to the project folder.

:func:`read_project` gives a :class:`QuPathProject` whose :class:`ProjectImage` s each hold either the local
file qpbridge can open (``path``) or one line saying why not (``problem``: a missing file, an OMERO or http image,
a series of a multi-image file, a rotated image...). :meth:`QuPathProject.prediction_targets` says where each
image's prediction goes (``<project>/qpbridge/<base>.geojson``, where ``groovy/import_predictions.groovy`` looks),
:meth:`QuPathProject.corrections` which images have exported corrections.

Example
-------
>>> import json, tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "Case 1.svs").write_bytes(b"")
>>> builder = {"builderType": "uri", "uri": (folder / "Case 1.svs").as_uri(), "args": []}
>>> entries = [{"serverBuilder": builder, "entryID": 1, "imageName": "Case 1.svs"},
...            {"serverBuilder": {"builderType": "uri", "uri": "https://omero.example.org/webclient/?show=image-7",
...                               "providerClassName": "qupath.ext.omero.core.imageserver.OmeroImageServerBuilder"},
...             "entryID": 2, "imageName": "remote"}]
>>> _ = (folder / "project.qpproj").write_text(json.dumps({"version": "0.6.0", "images": entries}))
>>> project = read_project(folder)
>>> [(image.name, image.path == folder / "Case 1.svs") for image in project.images]
[('Case 1.svs', True), ('remote', False)]
>>> project.images[1].problem
'not a local file: https://omero.example.org/webclient/?show=image-7 is an OMERO image; qpbridge reads slide \
files on this machine only: download the original file (or export the image as OME-TIFF), add it to the project \
and run again'
>>> project.prediction_targets(["Case 1.svs"])[0].output.relative_to(folder).as_posix()
'qpbridge/Case 1.geojson'
"""

from __future__ import annotations

import difflib
import json
import ntpath
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from qpbridge.errors import InputError
from qpbridge.qupath.project import (
    corrections_paths,
    load_corrections_sidecar,
    prediction_filename,
    predictions_dir,
)

__all__ = [
    "DATA_DIRNAME",
    "GEOMETRY_BUILDERS",
    "MULTI_FILE_BUILDERS",
    "PROJECT_FILENAME",
    "PROJECT_SUFFIX",
    "SAME_GRID_BUILDERS",
    "SERVER_JSON_NAME",
    "ImageCorrections",
    "PredictionTarget",
    "ProjectImage",
    "QuPathProject",
    "builder_uris",
    "find_project_file",
    "read_project",
]

#: The file QuPath names a new project (a folder given for a project must hold it).
PROJECT_FILENAME = "project.qpproj"
#: The suffix of a QuPath project file (QuPath names a second one in the same folder ``project-1.qpproj``).
PROJECT_SUFFIX = ".qpproj"
#: The folder of per-image data (``data/<entryID>/``) inside a project.
DATA_DIRNAME = "data"
#: The server builder QuPath writes into ``data/<entryID>/`` when it saves an image.
SERVER_JSON_NAME = "server.json"
#: Builder types that wrap one image (``builder``) and keep its pixel grid: the wrapped file is the image.
SAME_GRID_BUILDERS: tuple[str, ...] = ("pyramidize", "swapRedBlue", "color", "color_deconvolved")
#: Builder types that show the wrapped image in other coordinates than the file's (what they do, for messages).
GEOMETRY_BUILDERS: Mapping[str, str] = {"rotated": "rotated", "affine": "transformed (affine)", "cropped": "cropped"}
#: Builder types made of several images.
MULTI_FILE_BUILDERS: Mapping[str, str] = {"sparse": "a sparse image", "channels": "concatenated channels"}

_SERIES_ARG = "--series"
_WINDOWS_DRIVE = re.compile(r"^/?[A-Za-z]:[/\\]")
_FIX_URIS = "or point the project to it in QuPath (File > Project... > Check project URIs) and save the project"
_MAX_LISTED_NAMES = 30


@dataclass(frozen=True)
class ProjectImage:
    """One image (entry) of a QuPath project: exactly one of ``path`` (the local file qpbridge opens) and
    ``problem`` (one line: why there is none) is set.

    >>> ProjectImage("a.svs", "3", ("file:/x/a.svs",), Path("/x/a.svs")).ok
    True
    """

    name: str  #: QuPath's image name (``imageName``): prediction and corrections files are named after it
    entry_id: str  #: ``entryID``: the entry's data is in ``data/<entry_id>/``
    uris: tuple[str, ...]  #: every URI its server builder reads
    path: Path | None = None
    problem: str | None = None
    provider: str | None = None  #: the image reader QuPath uses (``providerClassName``), when recorded

    @property
    def ok(self) -> bool:
        """Whether qpbridge can open the image (it has a local ``path``)."""
        return self.path is not None and self.problem is None

    def require_path(self) -> Path:
        """The local file, or an :class:`InputError` that names the image and says why there is none.

        >>> ProjectImage("b.svs", "4", ()).require_path()
        Traceback (most recent call last):
        ...
        qpbridge.errors.InputError: image 'b.svs': no file
        """
        if self.path is not None and self.problem is None:
            return self.path
        raise InputError(f"image {self.name!r}: {self.problem or 'no file'}")


@dataclass(frozen=True)
class PredictionTarget:
    """Where one image's prediction goes; ``problem`` (the image's own, or a clash of file names) when it cannot
    be predicted."""

    image: ProjectImage
    output: Path
    problem: str | None = None


@dataclass(frozen=True)
class ImageCorrections:
    """An image's exported corrections (``<project>/qpbridge/corrections/<base>.geojson``) and its sidecar."""

    image: ProjectImage
    geojson: Path
    sidecar: Path

    def slide(self) -> Path:
        """The slide file: the project's, else the one ``export_corrections.groovy`` recorded in the sidecar (when
        it exists here); an :class:`InputError` naming the image when there is neither."""
        if self.image.ok:
            return self.image.require_path()
        if self.sidecar.is_file():
            for candidate in load_corrections_sidecar(self.sidecar).image_paths:
                if Path(candidate).is_file():
                    return Path(candidate)
        return self.image.require_path()


@dataclass(frozen=True)
class QuPathProject:
    """A QuPath project as :func:`read_project` read it."""

    file: Path  #: the ``.qpproj`` file
    version: str | None  #: the QuPath version that last saved it (``"0.6.0"``)
    previous_uri: str | None  #: where the project file was when it was last saved (its top-level ``uri``)
    images: tuple[ProjectImage, ...]

    @property
    def folder(self) -> Path:
        """The project folder (the one that holds the ``.qpproj`` file)."""
        return self.file.parent

    @property
    def names(self) -> list[str]:
        """The image names, in project order."""
        return [image.name for image in self.images]

    def select(self, names: Sequence[str] | None = None) -> list[ProjectImage]:
        """The images of these exact names (every entry of a name given twice in the project), in project order;
        all of them for ``None``. An unknown name is an :class:`InputError` that lists the project's names."""
        if names is None:
            return list(self.images)
        known = set(self.names)
        unknown = [name for name in dict.fromkeys(names) if name not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], self.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(repr(name) for name in self.names[:_MAX_LISTED_NAMES]) or "none"
            if len(self.names) > _MAX_LISTED_NAMES:
                shown += f", ... ({len(self.names)} in all)"
            which = " or ".join(repr(name) for name in unknown)
            raise InputError(f"no image named {which} in QuPath project {self.file}{hint}; its images: {shown}. "
                             "Give exact image names as QuPath shows them")
        wanted = set(names)
        return [image for image in self.images if image.name in wanted]

    def prediction_targets(
        self, names: Sequence[str] | None = None, *, folder: str | os.PathLike[str] | None = None,
        gzip: bool = False,
    ) -> list[PredictionTarget]:
        """Where each (selected) image's prediction goes: ``<folder>/<base>.geojson``, ``folder`` defaulting to
        ``<project>/qpbridge`` (where ``import_predictions.groovy`` looks), ``<base>`` by
        :func:`qpbridge.qupath.project.image_basename` of the image name.

        Two images whose names give one file name (``slide1.svs`` from two folders, ``a.svs`` and ``a.ndpi``; any
        letter case, as on Windows and macOS) would import each other's predictions: both get a ``problem``, unless
        they are the same file (an image added twice), which is predicted once, for the first of them.
        An empty selection (a project without images) is an :class:`InputError`.
        """
        base = Path(folder) if folder is not None else predictions_dir(self.folder)
        outputs: dict[int, Path] = {}
        problems: dict[int, str] = {}
        groups: dict[str, list[int]] = {}
        for i, image in enumerate(self.images):
            try:
                outputs[i] = base / prediction_filename(image.name, gzip=gzip)
            except InputError as exc:
                outputs[i], problems[i] = base / f"entry-{image.entry_id}", str(exc)
                continue
            if image.ok:
                groups.setdefault(outputs[i].name.lower(), []).append(i)
        for members in groups.values():
            if len({self.images[i].path for i in members}) < 2:
                continue  # one image, or one file added more than once
            for i in members:
                others = ", ".join(f"image {self.images[j].name!r} (entry {self.images[j].entry_id}, "
                                   f"{self.images[j].path})" for j in members if j != i)
                problems[i] = (
                    f"its prediction file {outputs[i].name} would also be the one of {others}, a different file, "
                    "so import_predictions.groovy would import one image's predictions into the other: rename the "
                    "images in QuPath (right-click > Rename image) so that their names differ before the "
                    "extension, and run again")
        wanted = None if names is None else {image.name for image in self.select(names)}
        targets: list[PredictionTarget] = []
        seen: set[tuple[str, Path | None]] = set()
        for i, image in enumerate(self.images):
            if wanted is not None and image.name not in wanted:
                continue
            problem = problems.get(i, image.problem)
            if problem is None:
                key = (outputs[i].name.lower(), image.path)
                if key in seen:
                    continue  # the same file again: predicted once, for the first of its entries
                seen.add(key)
            targets.append(PredictionTarget(image, outputs[i], problem))
        if not targets:
            raise InputError(f"QuPath project {self.file} has no images: add images to it in QuPath first")
        return targets

    def corrections(self, names: Sequence[str] | None = None) -> tuple[list[ImageCorrections], list[ProjectImage]]:
        """The (selected) images with exported corrections (``<project>/qpbridge/corrections/<base>.geojson``, as
        ``export_corrections.groovy`` writes them), and those without."""
        found: list[ImageCorrections] = []
        without: list[ProjectImage] = []
        for image in self.select(names):
            try:
                geojson, sidecar = corrections_paths(self.folder, image.name)
            except InputError:
                without.append(image)
                continue
            if geojson.is_file():
                found.append(ImageCorrections(image, geojson, sidecar))
            else:
                without.append(image)
        return found, without


def find_project_file(path: str | os.PathLike[str]) -> Path | None:
    """The ``.qpproj`` file of a QuPath project given as that file or as its folder (one that holds
    ``project.qpproj``); None for anything else (a slide, a folder of slides, a missing path).

    >>> find_project_file("/nonexistent/study/project.qpproj").as_posix(), find_project_file("slides/a.svs")
    ('/nonexistent/study/project.qpproj', None)
    """
    candidate = Path(path)
    if candidate.suffix.lower() == PROJECT_SUFFIX:
        return candidate
    if candidate.is_dir() and (candidate / PROJECT_FILENAME).is_file():
        return candidate / PROJECT_FILENAME
    return None


def read_project(path: str | os.PathLike[str]) -> QuPathProject:
    """Read a QuPath project (its ``.qpproj`` file or its folder) and resolve each image to a local file.

    Each image's server builder comes from its entry, else from ``data/<entryID>/server.json``. Its file is the
    one its ``uri`` names, tried where QuPath itself would suggest (see the module's docstring); an image that has
    no such file, or that qpbridge cannot open as QuPath shows it, gets a one-line ``problem`` instead.

    Raises
    ------
    InputError
        If the project file is missing, is not JSON, or holds no ``images`` list.
    """
    given = Path(path)
    file = find_project_file(given)
    if file is None:
        raise InputError(f"{given} is not a QuPath project: give its {PROJECT_FILENAME} file or the folder that "
                         "holds it")
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"QuPath project {file} not found: give the project's .qpproj file or its folder") from None
    except OSError as exc:
        raise InputError(f"cannot read QuPath project {file}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"QuPath project {file} is not valid JSON ({exc}): open it in QuPath and save it, or "
                         f"restore {file.name}.backup") from None
    if not isinstance(data, dict) or not isinstance(data.get("images", []), list):
        raise InputError(f"QuPath project {file} holds no list of images: is it a QuPath 0.2-0.7 project?")
    version = data.get("version") if isinstance(data.get("version"), str) else None
    previous = data.get("uri") if isinstance(data.get("uri"), str) else None
    previous_folder = _previous_folder(previous)
    images = tuple(_read_entry(entry, i, file.parent, previous_folder)
                   for i, entry in enumerate(data.get("images", [])))
    return QuPathProject(file=file, version=version, previous_uri=previous, images=images)


def builder_uris(builder: Any) -> list[str]:
    """Every ``uri`` a server builder holds, nested builders included, in order, each once (what QuPath's
    ``ServerBuilder.getURIs()`` gives; the image's ``metadata`` is not searched).

    >>> builder_uris({"builderType": "rotated", "rotation": "ROTATE_90",
    ...               "builder": {"builderType": "uri", "uri": "file:/x/a.svs", "metadata": {"name": "a"}}})
    ['file:/x/a.svs']
    """
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            uri = node.get("uri")
            if isinstance(uri, str) and uri not in found:
                found.append(uri)
            for key, value in node.items():
                if key != "metadata":
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(builder)
    return found


# ------------------------------------------------------------------------------------------- one entry
def _read_entry(entry: Any, index: int, folder: Path, previous_folder: PurePath | None) -> ProjectImage:
    if not isinstance(entry, dict):
        return ProjectImage(f"(entry {index + 1})", str(index + 1), (), problem="the project entry is not a JSON "
                            "object: open the project in QuPath and save it")
    entry_id = entry.get("entryID")
    entry_id = str(entry_id) if isinstance(entry_id, (int, str)) and not isinstance(entry_id, bool) else ""
    name = entry.get("imageName")
    if not isinstance(name, str) or not name:
        name = f"Image {entry_id}" if entry_id else f"(entry {index + 1})"  # what QuPath shows for a nameless entry
    builder = entry.get("serverBuilder")
    server_json = folder / DATA_DIRNAME / entry_id / SERVER_JSON_NAME if entry_id else None
    if not isinstance(builder, dict) and server_json is not None and server_json.is_file():
        try:
            builder = json.loads(server_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            builder = None
    if not isinstance(builder, dict):
        where = f" (nor in {server_json.relative_to(folder).as_posix()})" if server_json is not None else ""
        return ProjectImage(name, entry_id, (), problem=f"the project records no image server for it{where}: "
                            "open the project in QuPath 0.4 or later and save it")
    uris = tuple(builder_uris(builder))
    provider = _provider(builder)
    try:
        path = _image_file(builder, folder, previous_folder)
    except _Unavailable as why:
        return ProjectImage(name, entry_id, uris, problem=str(why), provider=provider)
    return ProjectImage(name, entry_id, uris, path=path, provider=provider)


class _Unavailable(Exception):
    """Why an image has no file qpbridge can open (its message is the image's ``problem``)."""


def _provider(builder: Mapping[str, Any]) -> str | None:
    node: Any = builder
    while isinstance(node, dict):
        if isinstance(node.get("providerClassName"), str):
            return str(node["providerClassName"])
        node = node.get("builder")
    return None


def _image_file(builder: Mapping[str, Any], folder: Path, previous_folder: PurePath | None) -> Path:
    """The local file a builder reads, or :class:`_Unavailable`."""
    kind = builder.get("builderType")
    if kind in SAME_GRID_BUILDERS and isinstance(builder.get("builder"), dict):
        return _image_file(builder["builder"], folder, previous_folder)
    if kind in GEOMETRY_BUILDERS:
        how = GEOMETRY_BUILDERS[str(kind)]
        if kind == "rotated" and isinstance(builder.get("rotation"), str):
            how += f" ({builder['rotation']})"
        raise _Unavailable(f"QuPath shows this image {how}, while qpbridge predicts on the file as it is stored, so "
                           "the objects would not line up: add the file to the project again without that "
                           "transform and predict that image")
    if kind in MULTI_FILE_BUILDERS:
        uris = builder_uris(builder)
        raise _Unavailable(f"the image is {MULTI_FILE_BUILDERS[str(kind)]} made of {len(uris)} image(s) "
                           f"({', '.join(uris[:3])}{', ...' if len(uris) > 3 else ''}), while qpbridge predicts "
                           "on one slide file at a time: predict the files themselves")
    uri = builder.get("uri")
    if kind not in (None, "uri") or not isinstance(uri, str):
        raise _Unavailable(f"its image server (builderType {kind!r}) is not one qpbridge can map to a slide file")
    raw_args = builder.get("args")
    args = [str(a) for a in raw_args] if isinstance(raw_args, list) else []
    return _uri_file(uri, args, _provider(builder), folder, previous_folder)


def _uri_file(uri: str, args: Sequence[str], provider: str | None, folder: Path,
              previous_folder: PurePath | None) -> Path:
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            pure: PurePath = PureWindowsPath(f"//{parts.netloc}{unquote(parts.path)}")
        else:
            pure = _pure_path(unquote(parts.path))
    elif scheme == "" or (len(scheme) == 1 and _WINDOWS_DRIVE.match(uri)):
        pure, parts = _pure_path(uri), urlsplit("")  # a plain path: no fragment or query to read
    else:
        what = ("an OMERO image" if scheme.startswith("omero") or "omero" in (provider or "").lower()
                else f"a {scheme} URI")
        raise _Unavailable(f"not a local file: {uri} is {what}; qpbridge reads slide files on this machine only: "
                           "download the original file (or export the image as OME-TIFF), add it to the project "
                           "and run again")
    series = _series(parts.fragment, parts.query, args)
    path = _existing(pure, folder, previous_folder)
    if series is not None:
        where = path if path is not None else pure
        raise _Unavailable(f"series {series} of the multi-image file {where} (URI {uri}"
                           + (f", args {' '.join(args)}" if args else "") + "): qpbridge opens only the first image "
                           "of a file; export this series as its own file (in QuPath: File > Export images... > "
                           "OME TIFF), add that to the project and run again")
    if path is None:
        moved = _moved_candidate(pure, folder, previous_folder)
        also = f", nor at {moved}, where it would be had it moved with the project" if moved is not None else ""
        raise _Unavailable(f"file {pure} not found (URI {uri}{also}): put it back, {_FIX_URIS}")
    return path


def _series(fragment: str, query: str, args: Sequence[str]) -> str | None:
    """The series an image is of a multi-image file, unless it is the first (``--series 0``: what a Bio-Formats
    image of a one-image file also says, and what qpbridge opens)."""
    if fragment or query:
        return fragment or parse_qs(query).get("series", [query])[0]  # x.czi#2, x.czi?series=2
    if _SERIES_ARG in args:
        at = list(args).index(_SERIES_ARG)
        value = args[at + 1] if at + 1 < len(args) else ""
        return None if value.strip() == "0" else (value or "?")
    return None


def _pure_path(text: str) -> PurePath:
    """A path as the writing machine meant it: ``/D:/x``, ``D:\\x`` and shares (``//server/share``) are Windows
    paths, others POSIX."""
    if _WINDOWS_DRIVE.match(text):
        return PureWindowsPath(text.lstrip("/"))
    if text.startswith("\\\\") or (text.startswith("//") and not text.startswith("///")):
        return PureWindowsPath(text)  # a Windows share (Java writes file:////server/share/x.svs)
    return PurePosixPath(text)


def _local(pure: PurePath, folder: Path) -> Path | None:
    """The path on this machine (relative ones from the project folder); None when it is of another system."""
    if not isinstance(pure, type(PurePath())):
        return None  # a Windows path here, or a POSIX one on Windows
    path = Path(pure)
    return path if path.is_absolute() else folder / path


def _existing(pure: PurePath, folder: Path, previous_folder: PurePath | None) -> Path | None:
    path = _local(pure, folder)
    if path is not None and path.exists():
        return Path(os.path.normpath(path))
    moved = _moved_candidate(pure, folder, previous_folder)
    return moved if moved is not None and moved.exists() else None


def _moved_candidate(pure: PurePath, folder: Path, previous_folder: PurePath | None) -> Path | None:
    """Where the file is if it moved with the project (QuPath's own suggestion in *Check project URIs*): its path
    relative to the project's previous folder, from the project's folder now."""
    if previous_folder is None or type(previous_folder) is not type(pure) or not pure.is_absolute():
        return None
    if isinstance(pure, PureWindowsPath):
        if pure.anchor.lower() != previous_folder.anchor.lower():
            return None
        relative = ntpath.relpath(str(pure), str(previous_folder)).split("\\")
    else:
        relative = posixpath.relpath(str(pure), str(previous_folder)).split("/")
    here = _local(previous_folder, folder)
    if here is not None and Path(os.path.normpath(here)) == Path(os.path.normpath(folder)):
        return None  # the project has not moved
    return Path(os.path.normpath(folder.joinpath(*relative)))


def _previous_folder(previous_uri: str | None) -> PurePath | None:
    if not previous_uri:
        return None
    parts = urlsplit(previous_uri)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        return None
    pure = _pure_path(unquote(parts.path))
    return pure.parent if pure.suffix.lower() == PROJECT_SUFFIX else pure

