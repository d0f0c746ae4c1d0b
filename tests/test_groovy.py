"""Checks of the QuPath scripts in ``groovy/``.

Always run (pure Python):

* the scripts avoid syntax that QuPath 0.4-0.7 scripts should not use (``var``, Java lambdas, method
  references, try-with-resources, records, switch expressions), checked on the code with comments and
  strings blanked out;
* the blocks shared between scripts are identical, and the names, folders, marker measurement and
  sidecar keys are the literals of :mod:`qpbridge.qupath.project`.

Run when the Groovy 4 jar of ``npm-groovy-lint`` is installed (``bash .ci/install_groovy_lint.sh``) and
``java`` is on the PATH, otherwise skipped with the reason:

* every script **parses** as Groovy 4 (``CompilationUnit`` up to the CONVERSION phase: syntax only, so
  QuPath's classes need not exist), and a script with a syntax error fails that check;
* the Groovy AST holds no Java lambda or method reference;
* every script **type-checks** (``@TypeChecked``) against stubs of exactly the QuPath, Gson and SLF4J
  API it uses, each taken from QuPath 0.4's source (and present up to 0.7), so a misspelt method or a
  wrong argument type fails; a script with a misspelt QuPath method fails that check;
* the Groovy copy of the naming rule gives the same base names as :func:`qpbridge.qupath.project.image_basename`
  on a table of names and on 300 random ones.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qpbridge.classes import ROI_CLASS
from qpbridge.errors import InputError
from qpbridge.qupath import project

REPO = Path(__file__).resolve().parents[1]
GROOVY_DIR = REPO / "groovy"
SCRIPT_NAMES = ("import_predictions.groovy", "export_corrections.groovy", "predict_current_image.groovy")
LINT_PREFIX = REPO / ".ci" / "node"
GROOVY_JAR_GLOB = "node_modules/npm-groovy-lint/lib/java/groovy/lib/groovy-4.*.jar"

#: Which shared blocks each script carries.
SHARED_BLOCKS = {
    "util": SCRIPT_NAMES,
    "naming": SCRIPT_NAMES,
    "marker": SCRIPT_NAMES,
    "import": ("import_predictions.groovy", "predict_current_image.groovy"),
}


def _source(name: str) -> str:
    return (GROOVY_DIR / name).read_text(encoding="utf-8")


def _block(source: str, name: str) -> str:
    match = re.search(
        rf"^// >>> qpbridge shared block: {name}\b.*?^// <<< qpbridge shared block: {name}$",
        source,
        re.S | re.M,
    )
    assert match is not None, f"shared block {name!r} not found"
    return match.group(0)


# ---------------------------------------------------------------------------------------------------
# Lexical checks (no Java needed)
# ---------------------------------------------------------------------------------------------------


def code_only(source: str) -> str:
    """Blank out comments and string literals (keeping quotes and line breaks) of Groovy source.

    Handles ``//`` and ``/* */`` comments, ``'...'``, ``"..."``, ``'''...'''`` and ``\"\"\"...\"\"\"``
    with backslash escapes. Slashy strings are not recognised (the scripts use none).
    """
    out: list[str] = []
    i, n = 0, len(source)

    def blank(text: str) -> str:
        return re.sub(r"[^\n]", " ", text)

    while i < n:
        if source.startswith("//", i):
            end = source.find("\n", i)
            end = n if end < 0 else end
            out.append(blank(source[i:end]))
            i = end
        elif source.startswith("/*", i):
            end = source.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(blank(source[i:end]))
            i = end
        elif source.startswith("'''", i) or source.startswith('"""', i):
            quote = source[i : i + 3]
            j = i + 3
            while j < n and not source.startswith(quote, j):
                j += 2 if source[j] == "\\" else 1
            end = min(n, j + 3)
            out.append(quote + blank(source[i + 3 : j]) + source[j:end])
            i = end
        elif source[i] in "'\"":
            quote = source[i]
            j = i + 1
            while j < n and source[j] != quote and source[j] != "\n":
                j += 2 if source[j] == "\\" else 1
            end = min(n, j + 1)
            out.append(quote + blank(source[i + 1 : j]) + source[j:end])
            i = end
        else:
            out.append(source[i])
            i += 1
    return "".join(out)


_FORBIDDEN = {
    "'var' declaration": re.compile(r"\bvar\s+[A-Za-z_$]"),
    "method reference '::'": re.compile(r"::"),
    "try-with-resources": re.compile(r"\btry\s*\("),
    "record": re.compile(r"\brecord\s+[A-Za-z_$][\w$]*\s*[(<]"),
    "switch arrow (switch expression)": re.compile(r"\b(?:case\b[^:\n]*?|default\s*)->"),
    "yield (switch expression)": re.compile(r"\byield\b"),
}
_CLOSURE_PARAMETERS = re.compile(r"[\s\w$,.<>\[\]?]*")


def forbidden_syntax(source: str) -> list[str]:
    """Return ``"<what> at line <n>"`` for each construct the scripts must not use."""
    code = code_only(source)
    found: list[str] = []
    for what, pattern in _FORBIDDEN.items():
        for match in pattern.finditer(code):
            found.append(f"{what} at line {code.count(chr(10), 0, match.start()) + 1}")
    # An arrow is a Groovy closure's only if it ends a plain parameter list right after '{'.
    for match in re.finditer(r"->", code):
        brace = code.rfind("{", 0, match.start())
        if brace < 0 or not _CLOSURE_PARAMETERS.fullmatch(code[brace + 1 : match.start()]):
            found.append(f"Java lambda at line {code.count(chr(10), 0, match.start()) + 1}")
    return found


def continuation_lines_outside_brackets(source: str) -> list[int]:
    """Line numbers of lines that start with a binary operator while no bracket is open.

    Groovy ends a statement at the end of a line when the expression is complete, so
    ``return a\n    + b`` returns ``a`` and then fails on ``+b``; inside ``(...)`` the same layout is safe.
    """
    code = code_only(source)
    depth = 0
    flagged = []
    for number, line in enumerate(code.split("\n"), start=1):
        if depth == 0 and re.match(r"\s*(?:\+(?!\+)|-(?![-=>])|\*|&&|\|\||\?(?![.:])|:(?!:))", line):
            flagged.append(number)
        depth += sum(line.count(c) for c in "([") - sum(line.count(c) for c in ")]")
    return flagged


def test_continuation_check_finds_a_dangling_operator() -> None:
    source = "String f() {\n    return 'a' + b\n            + 'c'\n}\nprintln('x'\n        + 'y')\n"
    assert continuation_lines_outside_brackets(source) == [3]


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_scripts_continue_lines_only_inside_brackets(name: str) -> None:
    assert continuation_lines_outside_brackets(_source(name)) == []


def test_code_only_blanks_comments_and_strings() -> None:
    source = "def a = 'x -> y' // var z = 1\n/* try ( */ def b = \"q::r\"\nString c = '''\nvar\n'''"
    code = code_only(source)
    assert code.count("\n") == source.count("\n")
    assert "var" not in code and "::" not in code and "->" not in code and "try" not in code
    assert code.startswith("def a = '")
    assert 'def b = "' in code


@pytest.mark.parametrize(
    ("snippet", "what"),
    [
        ("var x = 1", "'var' declaration"),
        ("for (var p : list) { }", "'var' declaration"),
        ("list.each(System.out::println)", "method reference '::'"),
        ("try (def r = open()) { r.read() }", "try-with-resources"),
        ("record Point(int x, int y) {}", "record"),
        ("def s = switch (x) { case 1 -> 'a'; default -> 'b' }", "switch arrow (switch expression)"),
        ("def v = switch (x) { case 1: yield 'a' }", "yield (switch expression)"),
        ("def f = list.collect(x -> x * 2)", "Java lambda"),
        ("def g = list.collect((a, b) -> a)", "Java lambda"),
        ("list.each { a -> list.collect(b -> b) }", "Java lambda"),
    ],
)
def test_forbidden_syntax_is_found(snippet: str, what: str) -> None:
    found = forbidden_syntax(snippet)
    assert any(item.startswith(what) for item in found), found


@pytest.mark.parametrize(
    "snippet",
    [
        "list.each { x -> println x }",
        "list.collect { String name, int i -> name * i }",
        "def c = { -> 1 }",
        "// var x = 1 and a -> b and try (\nprintln 'x :: y -> z'",
        "String variable = 'v'; int various = 2",
        "switch (x) { case 1: println 'one'; break; default: break }",
    ],
)
def test_allowed_syntax_is_not_flagged(snippet: str) -> None:
    assert forbidden_syntax(snippet) == []


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_scripts_use_no_forbidden_syntax(name: str) -> None:
    assert forbidden_syntax(_source(name)) == []


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_header_settings_and_loud_failure(name: str) -> None:
    source = _source(name)
    header = source[: source.index("*/")]
    assert "QuPath versions: 0.4, 0.5, 0.6 and 0.7." in header
    assert "Run > Run for project" in header
    assert "QuPath script -p /path/to/project.qpproj -s " + name in header
    settings = source.index("// ================================ Settings")
    assert source.index("// ============================= End of settings") > settings
    assert settings < source.index("if (QP.getCurrentImageData() == null)")
    util = _block(source, "util")
    assert re.search(r"LOG\.error\(message\)\s*\n\s*throw new IllegalStateException\(message\)", util)


@pytest.mark.parametrize(("block", "names"), sorted(SHARED_BLOCKS.items()))
def test_shared_blocks_are_identical(block: str, names: tuple[str, ...]) -> None:
    first = _block(_source(names[0]), block)
    for name in names[1:]:
        assert _block(_source(name), block) == first, f"block {block!r} of {name} differs from {names[0]}"


def _groovy_string(source: str, field: str) -> str:
    match = re.search(rf"@Field final String {field} = '([^']*)'", source)
    assert match is not None, field
    return match.group(1)


def _groovy_list(source: str, field: str) -> list[str]:
    match = re.search(rf"@Field final List<String> {field} = \[(.*?)\]", source, re.S)
    assert match is not None, field
    return re.findall(r"'([^']*)'", match.group(1))


def test_groovy_names_match_python() -> None:
    source = _source("import_predictions.groovy")
    assert _groovy_string(source, "QPBRIDGE_PREDICTIONS_DIRNAME") == project.PREDICTIONS_DIRNAME == "qpbridge"
    assert _groovy_string(source, "QPBRIDGE_CORRECTIONS_DIRNAME") == project.CORRECTIONS_DIRNAME
    assert _groovy_string(source, "QPBRIDGE_PREDICTION_MEASUREMENT") == project.PREDICTION_MEASUREMENT
    assert _groovy_list(source, "QPBRIDGE_PREDICTION_SUFFIXES") == list(project.PREDICTION_SUFFIXES)
    assert _groovy_list(source, "QPBRIDGE_SLIDE_EXTENSIONS") == list(project.SLIDE_EXTENSIONS)
    assert len(project.SLIDE_EXTENSIONS) == 21
    # The forbidden characters: the same class in both languages.
    groovy_class = re.search(r"name\.replaceAll\('(\[[^']*\])', '_'\)", source)
    assert groovy_class is not None
    assert groovy_class.group(1).replace("\\\\", "\\") == project.FORBIDDEN_FILENAME_CHARS.pattern


def test_locked_annotation_class_is_the_roi_class() -> None:
    for name in ("import_predictions.groovy", "predict_current_image.groovy"):
        match = re.search(r"^List<String> LOCK_ANNOTATION_CLASSES = \['([^']*)'\]$", _source(name), re.M)
        assert match is not None and match.group(1) == ROI_CLASS.name, name


def test_export_writes_the_files_and_sidecar_keys_python_reads() -> None:
    source = _source("export_corrections.groovy")
    assert "[QPBRIDGE_PREDICTIONS_DIRNAME, QPBRIDGE_CORRECTIONS_DIRNAME]" in source
    assert f"new File(folder, baseName + '{project.CORRECTIONS_SUFFIX}')" in source
    assert f"new File(folder, baseName + '{project.SIDECAR_SUFFIX}')" in source
    assert f"sidecar.put('{project.SIDECAR_FORMAT_KEY}', '{project.SIDECAR_FORMAT}')" in source
    for key in (
        project.SIDECAR_VERSION_KEY,
        project.SIDECAR_IMAGE_NAME_KEY,
        project.SIDECAR_IMAGE_PATHS_KEY,
        project.SIDECAR_IMAGE_URIS_KEY,
        project.SIDECAR_WIDTH_KEY,
        project.SIDECAR_HEIGHT_KEY,
        project.SIDECAR_PIXEL_SIZE_KEY,
        project.SIDECAR_GEOJSON_KEY,
    ):
        assert f"sidecar.put('{key}', " in source, key
    assert "GsonTools.getInstance(true).toJson(sidecar)" in source
    assert "QP.exportObjectsToGeoJson(objects, temporaryGeojson.getAbsolutePath(), 'FEATURE_COLLECTION'" in source


def test_import_and_predict_use_the_prediction_folder_and_one_add_objects_call() -> None:
    for name in ("import_predictions.groovy", "predict_current_image.groovy"):
        source = _source(name)
        assert "[QPBRIDGE_PREDICTIONS_DIRNAME]" in source
        assert code_only(source).count("QP.addObjects(") == 1
        assert "QP.removeObjects(previous, true)" in source  # keep children: never drop nested annotations
    predict = _source("predict_current_image.groovy")
    assert "command.add('predict')" in predict and "command.add('-o')" in predict
    assert "new ProcessBuilder(command)" in predict and "process.waitFor()" in predict


# ---------------------------------------------------------------------------------------------------
# Checks with Groovy 4 (skipped when the jar or java is absent)
# ---------------------------------------------------------------------------------------------------

#: Runs jobs listed in a file: "parse <file>", "typecheck <stub dir> <file>...", "naming <script> <in> <out>".
CHECKER = r"""
import groovy.transform.TypeChecked
import org.codehaus.groovy.ast.ClassCodeVisitorSupport
import org.codehaus.groovy.ast.ClassNode
import org.codehaus.groovy.ast.expr.LambdaExpression
import org.codehaus.groovy.ast.expr.MethodReferenceExpression
import org.codehaus.groovy.control.CompilationFailedException
import org.codehaus.groovy.control.CompilationUnit
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.Phases
import org.codehaus.groovy.control.SourceUnit
import org.codehaus.groovy.control.customizers.ASTTransformationCustomizer

class JavaOnlySyntax extends ClassCodeVisitorSupport {
    SourceUnit unit
    List<String> found = []
    protected SourceUnit getSourceUnit() { return unit }
    void visitLambdaExpression(LambdaExpression e) {
        found.add('Java lambda at line ' + e.getLineNumber())
        super.visitLambdaExpression(e)
    }
    void visitMethodReferenceExpression(MethodReferenceExpression e) {
        found.add('method reference at line ' + e.getLineNumber())
        super.visitMethodReferenceExpression(e)
    }
}

String oneLine(String text) { return text.readLines().join(' | ') }

List<String> results = []
for (String job : new File(args[0]).readLines('UTF-8')) {
    List<String> parts = job.split('\t') as List<String>
    String id = parts[0]
    String kind = parts[1]
    try {
        if (kind == 'parse') {
            CompilationUnit unit = new CompilationUnit(new CompilerConfiguration())
            SourceUnit source = unit.addSource(new File(parts[2]))
            unit.compile(Phases.CONVERSION)
            JavaOnlySyntax finder = new JavaOnlySyntax(unit: source)
            for (ClassNode node : source.getAST().getClasses()) {
                finder.visitClass(node)
            }
            results.add(id + '\t' + (finder.found ? 'FORBIDDEN\t' + finder.found.join('; ') : 'OK\t'))
        } else if (kind == 'typecheck') {
            CompilerConfiguration config = new CompilerConfiguration()
            config.addCompilationCustomizers(new ASTTransformationCustomizer(TypeChecked))
            CompilationUnit unit = new CompilationUnit(config)
            new File(parts[2]).eachFileRecurse { File f -> if (f.name.endsWith('.groovy')) unit.addSource(f) }
            for (String path : parts.subList(3, parts.size())) {
                unit.addSource(new File(path))
            }
            unit.compile(Phases.CLASS_GENERATION)
            results.add(id + '\tOK\t')
        } else if (kind == 'naming') {
            Binding binding = new Binding()
            binding.setVariable('inPath', parts[3])
            binding.setVariable('outPath', parts[4])
            new GroovyShell(binding).evaluate(new File(parts[2]))
            results.add(id + '\tOK\t')
        }
    } catch (CompilationFailedException e) {
        results.add(id + '\tFAIL\t' + oneLine(e.getMessage()))
    }
}
new File(args[1]).setText(results.join('\n') + '\n', 'UTF-8')
"""

#: Stubs of exactly the API the scripts call, with QuPath 0.4's signatures (qupath-core and
#: qupath-core-processing at v0.4.x; all still present in 0.5, 0.6 and 0.7), Gson's and SLF4J's.
STUBS: dict[str, str] = {
    "qupath/lib/scripting/QP.groovy": """
package qupath.lib.scripting
import java.awt.image.BufferedImage
import qupath.lib.images.ImageData
import qupath.lib.images.servers.ImageServer
import qupath.lib.objects.PathObject
import qupath.lib.projects.Project
class QP {
    static final String PROJECT_BASE_DIR = '{%PROJECT}'
    static ImageData<BufferedImage> getCurrentImageData() { throw new UnsupportedOperationException() }
    static String getCurrentImageName() { throw new UnsupportedOperationException() }  // since 0.4.0
    static Project<BufferedImage> getProject() { throw new UnsupportedOperationException() }
    static String buildFilePath(String first, String... more) { throw new UnsupportedOperationException() }
    static boolean mkdirs(String path) { throw new UnsupportedOperationException() }
    static ImageServer<?> getCurrentServer() { throw new UnsupportedOperationException() }
    static Collection<PathObject> getAnnotationObjects() { throw new UnsupportedOperationException() }
    static Collection<PathObject> getDetectionObjects() { throw new UnsupportedOperationException() }
    static void addObjects(Collection<PathObject> pathObjects) { }
    static void removeObjects(Collection<? extends PathObject> pathObjects, boolean keepChildren) { }
    static void resolveHierarchy() { }
    static void fireHierarchyUpdate() { }
    static void exportObjectsToGeoJson(Collection<? extends PathObject> pathObjects, String path,
            String option, String... additionalOptions) throws IOException { }
}
""",
    "qupath/lib/images/ImageData.groovy": "package qupath.lib.images\nclass ImageData<T> { }\n",
    "qupath/lib/projects/Project.groovy": "package qupath.lib.projects\ninterface Project<T> { }\n",
    "qupath/lib/images/servers/ImageServer.groovy": """
package qupath.lib.images.servers
interface ImageServer<T> {
    Collection<URI> getURIs()
    int getWidth()
    int getHeight()
    PixelCalibration getPixelCalibration()
}
""",
    "qupath/lib/images/servers/PixelCalibration.groovy": """
package qupath.lib.images.servers
class PixelCalibration {
    boolean hasPixelSizeMicrons() { throw new UnsupportedOperationException() }
    double getAveragedPixelSizeMicrons() { throw new UnsupportedOperationException() }
}
""",
    "qupath/lib/objects/PathObject.groovy": """
package qupath.lib.objects
import qupath.lib.measurements.MeasurementList
import qupath.lib.objects.classes.PathClass
import qupath.lib.roi.interfaces.ROI
abstract class PathObject {
    MeasurementList getMeasurementList() { throw new UnsupportedOperationException() }
    abstract PathClass getPathClass()
    abstract ROI getROI()
    boolean isAnnotation() { throw new UnsupportedOperationException() }
    boolean isDetection() { throw new UnsupportedOperationException() }
    void setLocked(boolean locked) { }
}
""",
    "qupath/lib/measurements/MeasurementList.groovy": """
package qupath.lib.measurements
interface MeasurementList {
    boolean containsKey(String name)       // since 0.4.0
    void put(String name, double value)    // since 0.4.0
    double get(String name)                // since 0.4.0
    double remove(String name)             // since 0.4.0
    void close()
}
""",
    "qupath/lib/objects/classes/PathClass.groovy": """
package qupath.lib.objects.classes
class PathClass {
    Integer getColor() { throw new UnsupportedOperationException() }
    void setColor(Integer colorRGB) { }
}
""",
    "qupath/lib/roi/interfaces/ROI.groovy": """
package qupath.lib.roi.interfaces
interface ROI {
    double getArea()
    double getCentroidX()
    double getCentroidY()
}
""",
    "qupath/lib/io/PathIO.groovy": """
package qupath.lib.io
import qupath.lib.objects.PathObject
class PathIO {
    static List<PathObject> readObjects(File file) throws IOException { throw new UnsupportedOperationException() }
}
""",
    "qupath/lib/io/GsonTools.groovy": """
package qupath.lib.io
import com.google.gson.Gson
class GsonTools {
    static Gson getInstance() { throw new UnsupportedOperationException() }
    static Gson getInstance(boolean pretty) { throw new UnsupportedOperationException() }
}
""",
    "qupath/lib/common/ColorTools.groovy": """
package qupath.lib.common
class ColorTools {
    static int packRGB(int r, int g, int b) { throw new UnsupportedOperationException() }
}
""",
    "com/google/gson/Gson.groovy": """
package com.google.gson
import com.google.gson.stream.JsonReader
import java.lang.reflect.Type
class Gson {
    public <T> T fromJson(JsonReader reader, Type typeOfT) { throw new UnsupportedOperationException() }
    String toJson(Object src) { throw new UnsupportedOperationException() }
}
""",
    "com/google/gson/JsonElement.groovy": """
package com.google.gson
abstract class JsonElement {
    boolean isJsonArray() { throw new UnsupportedOperationException() }
    boolean isJsonPrimitive() { throw new UnsupportedOperationException() }
    String getAsString() { throw new UnsupportedOperationException() }
    int getAsInt() { throw new UnsupportedOperationException() }
    long getAsLong() { throw new UnsupportedOperationException() }
    boolean getAsBoolean() { throw new UnsupportedOperationException() }
}
""",
    "com/google/gson/JsonObject.groovy": """
package com.google.gson
class JsonObject extends JsonElement {
    boolean has(String memberName) { throw new UnsupportedOperationException() }
    JsonElement get(String memberName) { throw new UnsupportedOperationException() }
    JsonArray getAsJsonArray(String memberName) { throw new UnsupportedOperationException() }
}
""",
    "com/google/gson/JsonArray.groovy": """
package com.google.gson
abstract class JsonArray extends JsonElement implements Iterable<JsonElement> {
    int size() { throw new UnsupportedOperationException() }
    JsonElement get(int i) { throw new UnsupportedOperationException() }
}
""",
    "com/google/gson/stream/JsonToken.groovy": """
package com.google.gson.stream
enum JsonToken { BEGIN_ARRAY, END_ARRAY, BEGIN_OBJECT, END_OBJECT, NAME, STRING, NUMBER, BOOLEAN, NULL, END_DOCUMENT }
""",
    "com/google/gson/stream/JsonReader.groovy": """
package com.google.gson.stream
class JsonReader {
    JsonReader(Reader reader) { }
    void setLenient(boolean lenient) { }
    JsonToken peek() throws IOException { throw new UnsupportedOperationException() }
    void beginObject() throws IOException { }
    void endObject() throws IOException { }
    void beginArray() throws IOException { }
    void endArray() throws IOException { }
    String nextName() throws IOException { throw new UnsupportedOperationException() }
    void skipValue() throws IOException { }
    void close() throws IOException { }
}
""",
    "org/slf4j/Logger.groovy": """
package org.slf4j
interface Logger {
    void info(String message)
    void warn(String message)
    void error(String message)
}
""",
    "org/slf4j/LoggerFactory.groovy": """
package org.slf4j
class LoggerFactory {
    static Logger getLogger(String name) { throw new UnsupportedOperationException() }
}
""",
}

BROKEN_SCRIPT = "import qupath.lib.scripting.QP\nif (QP.getCurrentImageData() == null {\n    println 'x'\n}\n"
UNKNOWN_CLASSES_SCRIPT = (
    "import qupath.lib.scripting.QP\nimport qupath.ext.something.Missing\n"
    "def data = QP.getCurrentImageData()\nMissing.run(data)\n"
)
JAVA_SYNTAX_SCRIPT = "def doubled = [1, 2].collect(x -> x * 2)\nRunnable r = System::gc\n"
TYPO_SCRIPT = "import qupath.lib.scripting.QP\nString name = QP.getCurrentImageNam()\n"

#: Names whose base name both implementations must agree on.
NAME_TABLE = [
    "slide1.svs",
    "SLIDE1.SVS",
    "/data/slides/Case 12.ndpi",
    "C:\\slides\\biopsy.mrxs",
    "mixed/and\\separators.tif",
    "scan.ome.tiff",
    "scan.OME.TIF",
    "scan.tiff",
    "x.svslide",
    "x.tif.svs",
    "a.b.c.jpeg",
    "plain",
    ".svs",
    ".ome.tif",
    "svs",
    "tma.czi - Scene #1",
    "slide.vsi - 20x_01",
    'what:is*this?"<name>|.scn',
    "tab\tand\x01control\x7f.bif",
    "café – coupe 3.qptiff",
    "emoji 🙂.svs",
    "🙂.dcm",
    "Kelvin \u212a.svs",
    "trailing space .svs ",
    "100% done & [ok].png",
]


def _find_groovy_jar() -> Path | None:
    override = os.environ.get("QPBRIDGE_GROOVY_JAR")
    if override:
        return Path(override) if Path(override).is_file() else None
    jars = sorted(LINT_PREFIX.glob(GROOVY_JAR_GLOB))
    return jars[-1] if jars else None


def _random_names(count: int, seed: int = 20240611) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcXYZ09 ._-/\\:*?\"<>|#%&()[]{}'éßÆ中🙂\t\x01\x1f\x7f\u212a\u0130"
    extensions = [*project.SLIDE_EXTENSIONS, ".SVS", ".Tif", ".gz", ".geojson", ""]
    names: list[str] = []
    while len(names) < count:
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        name = body + rng.choice(extensions)
        if name:
            names.append(name)
    return names


def _python_basename(name: str) -> str:
    try:
        return project.image_basename(name)
    except InputError:
        return "ERROR"


@pytest.fixture(scope="module")
def groovy_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Run every Groovy job in one JVM; map job id -> (status, message)."""
    jar = _find_groovy_jar()
    if jar is None:
        pytest.skip(
            f"Groovy 4 jar absent (looked for {GROOVY_JAR_GLOB} under {LINT_PREFIX}): "
            "run `bash .ci/install_groovy_lint.sh`"
        )
    java = shutil.which("java")
    if java is None:
        pytest.skip("java absent: install a JDK 17+ to parse the Groovy scripts")
    work = tmp_path_factory.mktemp("groovy")
    stubs = work / "stubs"
    for relative, text in STUBS.items():
        target = stubs / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    samples = {
        "broken": BROKEN_SCRIPT,
        "unknown_classes": UNKNOWN_CLASSES_SCRIPT,
        "java_syntax": JAVA_SYNTAX_SCRIPT,
        "typo": TYPO_SCRIPT,
    }
    for sample, text in samples.items():
        (work / f"{sample}.groovy").write_text(text, encoding="utf-8")

    names = NAME_TABLE + _random_names(300)
    (work / "names.txt").write_text("\n".join(n.encode("utf-8").hex() for n in names) + "\n", encoding="utf-8")
    harness = (
        "import groovy.transform.Field\n"
        + _block(_source("import_predictions.groovy"), "naming")
        + "\nStringBuilder out = new StringBuilder()\n"
        + "for (String line : new File(inPath).readLines('UTF-8')) {\n"
        + "    String name = new String(line.decodeHex(), 'UTF-8')\n"
        + "    String base\n"
        + "    try { base = qpbridgeBaseName(name).getBytes('UTF-8').encodeHex().toString() }\n"
        + "    catch (IllegalArgumentException e) { base = 'ERROR' }\n"
        + "    out.append(base).append('\\n')\n"
        + "}\n"
        + "new File(outPath).setText(out.toString(), 'UTF-8')\n"
    )
    (work / "naming_harness.groovy").write_text(harness, encoding="utf-8")

    scripts = [str(GROOVY_DIR / name) for name in SCRIPT_NAMES]
    jobs = [f"parse:{name}\tparse\t{GROOVY_DIR / name}" for name in SCRIPT_NAMES]
    jobs += [f"parse:{sample}\tparse\t{work / f'{sample}.groovy'}" for sample in samples]
    jobs.append("typecheck:scripts\ttypecheck\t" + "\t".join([str(stubs), *scripts]))
    jobs.append(f"typecheck:typo\ttypecheck\t{stubs}\t{work / 'typo.groovy'}")
    jobs.append(f"naming\tnaming\t{work / 'naming_harness.groovy'}\t{work / 'names.txt'}\t{work / 'bases.txt'}")
    (work / "jobs.txt").write_text("\n".join(jobs) + "\n", encoding="utf-8")
    (work / "checker.groovy").write_text(CHECKER, encoding="utf-8")

    completed = subprocess.run(
        [
            java,
            "-XX:TieredStopAtLevel=1",  # a short run: the quick JIT alone halves the time
            "-XX:+UseSerialGC",
            "-cp",
            str(jar),
            "groovy.ui.GroovyMain",
            str(work / "checker.groovy"),
            str(work / "jobs.txt"),
            str(work / "results.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results: dict[str, tuple[str, str]] = {}
    for line in (work / "results.txt").read_text(encoding="utf-8").splitlines():
        job, status, message = line.split("\t", 2)
        results[job] = (status, message)
    bases = (work / "bases.txt").read_text(encoding="utf-8").splitlines()
    for name, encoded in zip(names, bases, strict=True):
        results[f"name:{name}"] = ("ERROR" if encoded == "ERROR" else bytes.fromhex(encoded).decode("utf-8"), "")
    results["names"] = ("\n".join(names), "")
    return results


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_parses_as_groovy_4(groovy_results: dict[str, tuple[str, str]], name: str) -> None:
    assert groovy_results[f"parse:{name}"] == ("OK", "")


def test_parse_check_fails_on_a_syntax_error(groovy_results: dict[str, tuple[str, str]]) -> None:
    status, message = groovy_results["parse:broken"]
    assert status == "FAIL"
    assert "broken.groovy: " in message and "Unexpected input" in message


def test_parse_check_does_not_need_qupath_classes(groovy_results: dict[str, tuple[str, str]]) -> None:
    assert groovy_results["parse:unknown_classes"] == ("OK", "")


def test_parse_check_finds_java_lambdas_and_method_references(
    groovy_results: dict[str, tuple[str, str]],
) -> None:
    assert groovy_results["parse:java_syntax"] == ("FORBIDDEN", "Java lambda at line 1; method reference at line 2")


def test_scripts_type_check_against_the_qupath_0_4_api(groovy_results: dict[str, tuple[str, str]]) -> None:
    assert groovy_results["typecheck:scripts"] == ("OK", "")


def test_type_check_fails_on_a_misspelt_qupath_method(groovy_results: dict[str, tuple[str, str]]) -> None:
    status, message = groovy_results["typecheck:typo"]
    assert status == "FAIL"
    assert "getCurrentImageNam" in message


def test_groovy_and_python_base_names_agree(groovy_results: dict[str, tuple[str, str]]) -> None:
    names = groovy_results["names"][0].split("\n")
    assert len(names) == len(NAME_TABLE) + 300
    disagree = [
        (name, groovy_results[f"name:{name}"][0], _python_basename(name))
        for name in names
        if groovy_results[f"name:{name}"][0] != _python_basename(name)
    ]
    assert disagree == []
    # A few exact values, so that agreeing on a wrong rule fails too.
    expected = {
        "slide1.svs": "slide1",
        "SLIDE1.SVS": "SLIDE1",
        "C:\\slides\\biopsy.mrxs": "biopsy",
        "scan.ome.tiff": "scan",
        "x.tif.svs": "x.tif",
        ".svs": ".svs",
        "tma.czi - Scene #1": "tma.czi - Scene #1",
        'what:is*this?"<name>|.scn': "what_is_this___name__",
        "emoji 🙂.svs": "emoji 🙂",
        "trailing space .svs ": "trailing space .svs ",
    }
    for name, base in expected.items():
        assert groovy_results[f"name:{name}"][0] == base, name
