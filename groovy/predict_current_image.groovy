/*
 * qpbridge: predict the current image and import the result into QuPath
 * =====================================================================
 *
 * What it does
 *   Runs, outside QuPath,
 *       qpbridge predict <image file> -o <folder>/<image base name>.geojson [PREDICT_OPTIONS]
 *   (folder: `qpbridge` inside the project folder unless PREDICTIONS_FOLDER says otherwise), copies every
 *   line qpbridge prints into QuPath's log, stops with an error if qpbridge fails, and then imports the
 *   result exactly as import_predictions.groovy does (the import code below is a copy of that script's
 *   "import" block; tests/test_groovy.py checks that both copies stay identical):
 *   earlier qpbridge predictions are replaced, edited predictions and your own annotations are kept,
 *   class colours come from the file.
 *   - qpbridge writes to <image base name>.qpbridge-partial.geojson first; the earlier prediction file is
 *     replaced only when the new one is complete.
 *   - Anything missing (no image, an image that is not a local file, no project, qpbridge not found)
 *     is logged as an error naming what is missing and stops the script.
 *
 * "<image base name>" is QuPath's image name without its slide extension, with characters that cannot be
 * in a file name replaced by '_': "slide1.svs" -> "slide1" (the rule lives in qpbridge/qupath/project.py).
 *
 * QuPath versions: 0.4, 0.5, 0.6 and 0.7.
 *
 * How to run
 *   Set QPBRIDGE_EXECUTABLE to the full path of the qpbridge program if QuPath cannot find it on its PATH
 *   (on macOS and Windows QuPath rarely sees the PATH of your terminal): run `which qpbridge` (macOS,
 *   Linux) or `where qpbridge` (Windows) in the environment where qpbridge is installed.
 *   One image:      open the image, Automate > Script editor, open this file, Run.
 *   Whole project:  in the script editor, Run > Run for project (one qpbridge run per image, in turn).
 *   Headless:       QuPath script -p /path/to/project.qpproj -s predict_current_image.groovy
 *                   (-s saves each image; add -i "slide1.svs" for one image; -a /path/to/folder overrides
 *                   PREDICTIONS_FOLDER)
 *   Save the image afterwards (File > Save) when you run it on the open image.
 */

import groovy.transform.Field

import java.nio.charset.StandardCharsets
import java.nio.file.AtomicMoveNotSupportedException
import java.nio.file.Files
import java.nio.file.Paths
import java.nio.file.StandardCopyOption
import java.util.zip.GZIPInputStream

import com.google.gson.JsonArray
import com.google.gson.JsonElement
import com.google.gson.JsonObject
import com.google.gson.stream.JsonReader
import com.google.gson.stream.JsonToken
import org.slf4j.Logger
import org.slf4j.LoggerFactory
import qupath.lib.common.ColorTools
import qupath.lib.io.GsonTools
import qupath.lib.measurements.MeasurementList
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObject
import qupath.lib.objects.classes.PathClass
import qupath.lib.roi.interfaces.ROI
import qupath.lib.scripting.QP

// ================================ Settings ================================
// The qpbridge program: 'qpbridge' if QuPath finds it on its PATH, otherwise its full path,
// e.g. '/home/me/envs/qpbridge/bin/qpbridge' or 'C:\\Users\\me\\envs\\qpbridge\\Scripts\\qpbridge.exe'.
String QPBRIDGE_EXECUTABLE = 'qpbridge'
// Extra options for `qpbridge predict`, e.g. ['--model', 'deepbatch', '--mpp', '0.5'].
List<String> PREDICT_OPTIONS = []
// Folder for the prediction files; '' means the 'qpbridge' folder inside the project folder.
// A relative path is taken relative to the project folder.
String PREDICTIONS_FOLDER = ''
// Remove the qpbridge predictions imported earlier before adding the new ones.
boolean REPLACE_PREVIOUS_PREDICTIONS = true
// Keep earlier predictions that were reclassified, reshaped or moved (they become your corrections).
boolean KEEP_EDITED_PREDICTIONS = true
// Give each class the colour written in the file, even when the class already exists in QuPath.
boolean USE_FILE_CLASS_COLORS = true
// Lock imported annotations of these classes (e.g. the region of interest) so they are not moved by accident.
List<String> LOCK_ANNOTATION_CLASSES = ['ROI']
// Nest the imported objects inside the annotations that contain them (can take a while for many detections).
boolean RESOLVE_HIERARCHY = true
// ============================= End of settings ============================

String[] scriptArgs = binding.hasVariable('args') ? (binding.getVariable('args') as String[]) : new String[0]
if (scriptArgs.length > 0 && scriptArgs[0] != null && !scriptArgs[0].trim().isEmpty()) {
    PREDICTIONS_FOLDER = scriptArgs[0].trim()
}

if (QP.getCurrentImageData() == null) {
    qpbridgeFail('qpbridge: no image is open: open an image, or use Run > Run for project, '
            + 'before running predict_current_image.groovy')
}
String imageName = QP.getCurrentImageName()
List<String> imagePaths = qpbridgeLocalImagePaths()
if (imagePaths.isEmpty()) {
    qpbridgeFail('qpbridge: image "' + imageName + '" is not a local file (its URIs: '
            + QP.getCurrentServer().getURIs().join(', ') + '): `qpbridge predict` needs the slide file')
}
String slidePath = imagePaths.get(0)
File folder = qpbridgeResolveFolder(PREDICTIONS_FOLDER, 'PREDICTIONS_FOLDER', [QPBRIDGE_PREDICTIONS_DIRNAME])
folder.mkdirs()
if (!folder.isDirectory()) {
    qpbridgeFail('qpbridge: cannot create the predictions folder ' + folder
            + ': check that it can be written, or set PREDICTIONS_FOLDER')
}
String baseName = qpbridgeBaseName(imageName)
// `qpbridge predict` writes atomically and marks the output finished in its .meta.json sidecar (checked below).
File predictionFile = new File(folder, baseName + QPBRIDGE_PREDICTION_SUFFIXES.get(0))

List<String> command = new ArrayList<>()
command.add(QPBRIDGE_EXECUTABLE)
command.add('predict')
command.add(slidePath)
command.add('-o')
command.add(predictionFile.getAbsolutePath())
command.add('--overwrite')
for (Object option : PREDICT_OPTIONS) {
    command.add(String.valueOf(option))  // numbers written without quotes work too
}
LOG.info('qpbridge: running ' + command.join(' '))
ProcessBuilder builder = new ProcessBuilder(command)
builder.redirectErrorStream(true)
builder.environment().put('PYTHONUNBUFFERED', '1')
builder.environment().put('PYTHONIOENCODING', 'utf-8')
builder.environment().put('NO_COLOR', '1')
Process process = null
try {
    process = builder.start()
} catch (IOException e) {
    qpbridgeFail('qpbridge: cannot start "' + QPBRIDGE_EXECUTABLE + '" (' + e.getMessage() + '): set '
            + 'QPBRIDGE_EXECUTABLE at the top of the script to the full path of the qpbridge program')
}
BufferedReader output = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))
String line = output.readLine()
while (line != null) {
    LOG.info('qpbridge> ' + line)
    line = output.readLine()
}
output.close()
int exitCode = process.waitFor()
if (exitCode != 0) {
    qpbridgeFail('qpbridge: `qpbridge predict` failed with exit code ' + exitCode + ' for image "' + imageName
            + '" (' + slidePath + '): see the qpbridge> lines above')
}
if (!predictionFile.isFile()) {
    qpbridgeFail('qpbridge: `qpbridge predict` finished but wrote no file ' + predictionFile
            + ': see the qpbridge> lines above')
}

String summary = qpbridgeImport(predictionFile, true, REPLACE_PREVIOUS_PREDICTIONS, KEEP_EDITED_PREDICTIONS,
        USE_FILE_CLASS_COLORS, LOCK_ANNOTATION_CLASSES, RESOLVE_HIERARCHY)
LOG.info('qpbridge: image "' + imageName + '": ' + summary)


// >>> qpbridge shared block: util (the same in every qpbridge script; tests/test_groovy.py checks)
@Field final Logger LOG = LoggerFactory.getLogger('qpbridge')

/** Log an error that says what is missing and what to do, then stop the script. */
void qpbridgeFail(String message) {
    LOG.error(message)
    throw new IllegalStateException(message)
}

/** The folder named by a setting (relative to the project folder), or <project folder>/<parts> for ''. */
File qpbridgeResolveFolder(String setting, String settingName, List<String> defaultParts) {
    boolean haveProject = QP.getProject() != null
    if (setting != null && !setting.trim().isEmpty()) {
        File folder = new File(setting.trim())
        if (!folder.isAbsolute() && haveProject) {
            folder = new File(QP.buildFilePath(QP.PROJECT_BASE_DIR, setting.trim()))
        }
        return folder
    }
    if (!haveProject) {
        qpbridgeFail('qpbridge: no project is open, so there is no default folder: open the image from a '
                + 'QuPath project, or set ' + settingName + ' at the top of the script to a folder')
    }
    return new File(QP.buildFilePath(QP.PROJECT_BASE_DIR, defaultParts as String[]))
}

/** Local file paths of the current image, from its image server's URIs (URIs that are not files are skipped). */
List<String> qpbridgeLocalImagePaths() {
    List<String> paths = new ArrayList<>()
    for (URI uri : QP.getCurrentServer().getURIs()) {
        if (uri != null && 'file'.equalsIgnoreCase(uri.getScheme())) {
            try {
                paths.add(Paths.get(uri).toString())
            } catch (Exception e) {
                LOG.warn('qpbridge: cannot turn the image URI ' + uri + ' into a file path: ' + e.getMessage())
            }
        }
    }
    return paths
}

/** Replace target by a finished temporary file in one step, so no half-written file is ever seen. */
void qpbridgeMoveIntoPlace(File temporary, File target) {
    try {
        Files.move(temporary.toPath(), target.toPath(), StandardCopyOption.REPLACE_EXISTING,
                StandardCopyOption.ATOMIC_MOVE)
    } catch (AtomicMoveNotSupportedException e) {
        Files.move(temporary.toPath(), target.toPath(), StandardCopyOption.REPLACE_EXISTING)
    }
}
// <<< qpbridge shared block: util


// >>> qpbridge shared block: naming (the same in every qpbridge script; same rule as qpbridge/qupath/project.py)
@Field final String QPBRIDGE_PREDICTIONS_DIRNAME = 'qpbridge'
@Field final String QPBRIDGE_CORRECTIONS_DIRNAME = 'corrections'
@Field final List<String> QPBRIDGE_PREDICTION_SUFFIXES = ['.geojson', '.geojson.gz']
@Field final String QPBRIDGE_PREDICTION_MEASUREMENT = 'qpbridge prediction'
@Field final double QPBRIDGE_RELEASED_VALUE = 0.0d
@Field final String QPBRIDGE_META_SUFFIX = '.meta.json'
@Field final List<String> QPBRIDGE_SLIDE_EXTENSIONS = [
        '.ome.tiff', '.ome.tif', '.svs', '.tif', '.tiff', '.ndpi', '.mrxs', '.scn', '.vms', '.vmu', '.bif',
        '.svslide', '.dcm', '.png', '.jpg', '.jpeg', '.bmp', '.czi', '.vsi', '.qptiff', '.isyntax',
]

/**
 * Base name of an image's qpbridge files: the part after the last '/' or '\', without one known slide
 * extension (any case), with characters a file name cannot hold replaced by '_'.
 */
String qpbridgeBaseName(String imageNameOrPath) {
    String name = imageNameOrPath == null ? '' : imageNameOrPath
    int cut = Math.max(name.lastIndexOf('/'), name.lastIndexOf('\\'))
    if (cut >= 0) {
        name = name.substring(cut + 1)
    }
    for (String extension : QPBRIDGE_SLIDE_EXTENSIONS) {
        if (name.length() > extension.length()
                && name.substring(name.length() - extension.length()).toLowerCase(Locale.ROOT) == extension) {
            name = name.substring(0, name.length() - extension.length())
            break
        }
    }
    name = name.replaceAll('[\\\\/:*?"<>|\\x00-\\x1F\\x7F]', '_')
    if (name.isEmpty()) {
        throw new IllegalArgumentException('cannot make a file name from the image name "' + imageNameOrPath + '"')
    }
    return name
}
// <<< qpbridge shared block: naming


// >>> qpbridge shared block: marker (the same in every qpbridge script)
/** What a pathologist may change on an object (class, area, position), folded into a number in [1, 2). */
double qpbridgeFingerprint(PathObject pathObject) {
    ROI roi = pathObject.getROI()
    String key = String.valueOf(pathObject.getPathClass())
    if (roi != null) {
        key += '|' + String.format(Locale.ROOT, '%.2f|%.2f|%.2f', roi.getArea(), roi.getCentroidX(), roi.getCentroidY())
    }
    return 1.0d + (key.hashCode() & 0xFFFFF) / 1048576.0d
}

/**
 * True for an untouched qpbridge prediction: it carries the prediction measurement with its fingerprint, a
 * value in [1, 2) (qpbridge writes 1, the import sets the fingerprint).
 */
boolean qpbridgeIsMarked(PathObject pathObject) {
    MeasurementList measurements = pathObject.getMeasurementList()
    return (measurements.containsKey(QPBRIDGE_PREDICTION_MEASUREMENT)
            && measurements.get(QPBRIDGE_PREDICTION_MEASUREMENT) >= 1.0d)
}

/**
 * True for every qpbridge prediction, untouched or edited: an edited one keeps the measurement at
 * QPBRIDGE_RELEASED_VALUE (0), so the export still finds it whatever its object type.
 */
boolean qpbridgeIsPrediction(PathObject pathObject) {
    return pathObject.getMeasurementList().containsKey(QPBRIDGE_PREDICTION_MEASUREMENT)
}

/** Mark an object as an untouched qpbridge prediction. */
void qpbridgeMark(PathObject pathObject) {
    MeasurementList measurements = pathObject.getMeasurementList()
    measurements.put(QPBRIDGE_PREDICTION_MEASUREMENT, qpbridgeFingerprint(pathObject))
    measurements.close()  // compact storage again: matters for many detections
}

/**
 * Release predictions that were reclassified, reshaped or moved since import: their measurement becomes
 * QPBRIDGE_RELEASED_VALUE, so they count as corrections (and are never replaced by a re-import) but are still
 * known as qpbridge predictions. Returns how many were released.
 */
int qpbridgeReleaseEdited(Collection<PathObject> pathObjects) {
    int released = 0
    for (PathObject pathObject : pathObjects) {
        if (qpbridgeIsMarked(pathObject)) {
            double stored = pathObject.getMeasurementList().get(QPBRIDGE_PREDICTION_MEASUREMENT)
            if (Double.compare(stored, qpbridgeFingerprint(pathObject)) != 0) {
                MeasurementList measurements = pathObject.getMeasurementList()
                measurements.put(QPBRIDGE_PREDICTION_MEASUREMENT, QPBRIDGE_RELEASED_VALUE)
                measurements.close()
                released++
            }
        }
    }
    return released
}
// <<< qpbridge shared block: marker


// >>> qpbridge shared block: import (the same in import_predictions.groovy and predict_current_image.groovy)
/**
 * Stop unless file is a finished qpbridge prediction: its sidecar <file>.meta.json says "finished" and records
 * the file's size (the rule of qpbridge.predict.is_finished). A GeoJSON without it is from a run that was
 * killed or is still running.
 */
void qpbridgeCheckFinished(File file) {
    File meta = new File(file.getParentFile(), file.getName() + QPBRIDGE_META_SUFFIX)
    String problem = null
    if (!meta.isFile()) {
        problem = 'its sidecar ' + meta.getName() + ' is missing'
    } else {
        JsonObject record = null
        try {
            JsonReader reader = new JsonReader(new InputStreamReader(new FileInputStream(meta), StandardCharsets.UTF_8))
            try {
                record = (JsonObject) GsonTools.getInstance().fromJson(reader, JsonObject.class)
            } finally {
                reader.close()
            }
        } catch (Exception e) {
            problem = 'its sidecar ' + meta.getName() + ' cannot be read (' + e.getMessage() + ')'
        }
        if (problem == null && (record == null || !record.has('finished') || !record.get('finished').getAsBoolean())) {
            problem = 'its sidecar ' + meta.getName() + ' does not say the run finished'
        } else if (problem == null && record.has('geojson_bytes')
                && record.get('geojson_bytes').getAsLong() != file.length()) {
            problem = ('its sidecar ' + meta.getName() + ' belongs to another run (it records '
                    + record.get('geojson_bytes').getAsLong() + ' bytes, the file has ' + file.length() + ')')
        }
    }
    if (problem != null) {
        qpbridgeFail('qpbridge: ' + file + ' is not a finished prediction: ' + problem + '. The run was '
                + 'interrupted or is still running: run `qpbridge predict` again (or set '
                + 'REQUIRE_FINISHED_PREDICTIONS = false to import a file from another tool)')
    }
}

/** Import one qpbridge prediction file into the current image; returns a one-line summary. */
String qpbridgeImport(File file, boolean requireFinished, boolean replacePrevious, boolean keepEdited,
        boolean useFileClassColors, List<String> lockAnnotationClasses, boolean resolveHierarchy) {
    if (requireFinished) {
        qpbridgeCheckFinished(file)
    }
    List<PathObject> objects = null
    try {
        objects = PathIO.readObjects(file)
    } catch (Exception e) {
        qpbridgeFail('qpbridge: QuPath cannot read ' + file + ' (' + e + '): check it with `qpbridge validate '
                + file + '`')
    }
    if (objects.isEmpty()) {
        LOG.warn('qpbridge: ' + file + ' holds no objects')
    }

    List<PathObject> existing = new ArrayList<>(QP.getAnnotationObjects())
    existing.addAll(QP.getDetectionObjects())
    int released = keepEdited ? qpbridgeReleaseEdited(existing) : 0
    List<PathObject> previous = new ArrayList<>()
    if (replacePrevious) {
        for (PathObject pathObject : existing) {
            if (qpbridgeIsMarked(pathObject)) {
                previous.add(pathObject)
            }
        }
        if (!previous.isEmpty()) {
            QP.removeObjects(previous, true)
        }
    }

    int annotations = 0
    int detections = 0
    for (PathObject pathObject : objects) {
        if (pathObject.isAnnotation()) {
            annotations++
            PathClass pathClass = pathObject.getPathClass()
            if (pathClass != null && lockAnnotationClasses.contains(pathClass.toString())) {
                pathObject.setLocked(true)
            }
        } else if (pathObject.isDetection()) {
            detections++
        }
        qpbridgeMark(pathObject)
    }

    int recoloured = 0
    if (useFileClassColors) {
        Map<String, Integer> fileColors = qpbridgeReadClassColors(file)
        Set<PathClass> seen = new HashSet<>()
        for (PathObject pathObject : objects) {
            PathClass pathClass = pathObject.getPathClass()
            if (pathClass != null && seen.add(pathClass)) {
                Integer rgb = fileColors.get(pathClass.toString())
                Integer current = pathClass.getColor()
                if (rgb != null && (current == null || (current & 0xFFFFFF) != (rgb & 0xFFFFFF))) {
                    pathClass.setColor(rgb)
                    recoloured++
                }
            }
        }
    }

    QP.addObjects(objects)
    if (resolveHierarchy) {
        QP.resolveHierarchy()
    }
    QP.fireHierarchyUpdate()
    return ('imported ' + annotations + ' annotations and ' + detections + ' detections from ' + file
            + '; removed ' + previous.size() + ' earlier predictions; kept ' + released
            + ' edited predictions as corrections; set the colour of ' + recoloured + ' classes from the file')
}

/** Class name -> packed RGB colour from the file's "classification" objects (streamed; geometries skipped). */
Map<String, Integer> qpbridgeReadClassColors(File file) {
    Map<String, Integer> colors = new LinkedHashMap<>()
    InputStream input = new BufferedInputStream(new FileInputStream(file))
    try {
        if (file.getName().toLowerCase(Locale.ROOT).endsWith('.gz')) {
            input = new GZIPInputStream(input)
        }
        JsonReader reader = new JsonReader(new InputStreamReader(input, StandardCharsets.UTF_8))
        reader.setLenient(true)
        JsonToken token = reader.peek()
        while (token != JsonToken.END_DOCUMENT) {
            if (token == JsonToken.BEGIN_OBJECT) {
                reader.beginObject()
            } else if (token == JsonToken.END_OBJECT) {
                reader.endObject()
            } else if (token == JsonToken.BEGIN_ARRAY) {
                reader.beginArray()
            } else if (token == JsonToken.END_ARRAY) {
                reader.endArray()
            } else if (token == JsonToken.NAME) {
                String name = reader.nextName()
                if (name == 'classification' && reader.peek() == JsonToken.BEGIN_OBJECT) {
                    Object parsed = GsonTools.getInstance().fromJson(reader, JsonObject.class)
                    qpbridgeAddClassColor((JsonObject) parsed, colors)
                } else if (name == 'geometry' || name == 'nucleusGeometry' || name == 'measurements') {
                    reader.skipValue()
                }
            } else {
                reader.skipValue()
            }
            token = reader.peek()
        }
    } finally {
        input.close()
    }
    return colors
}

/** Add the colour of one GeoJSON classification ({"name" or "names", "color" or "colorRGB"}) to colors. */
void qpbridgeAddClassColor(JsonObject classification, Map<String, Integer> colors) {
    String name = null
    if (classification.has('names') && classification.get('names').isJsonArray()) {
        List<String> parts = new ArrayList<>()
        for (JsonElement part : classification.getAsJsonArray('names')) {
            parts.add(part.getAsString())
        }
        name = String.join(': ', parts)
    } else if (classification.has('name') && classification.get('name').isJsonPrimitive()) {
        name = classification.get('name').getAsString()
    }
    Integer rgb = null
    if (classification.has('color') && classification.get('color').isJsonArray()) {
        JsonArray color = classification.getAsJsonArray('color')
        if (color.size() >= 3) {
            rgb = ColorTools.packRGB(color.get(0).getAsInt(), color.get(1).getAsInt(), color.get(2).getAsInt())
        }
    } else if (classification.has('colorRGB') && classification.get('colorRGB').isJsonPrimitive()) {
        rgb = classification.get('colorRGB').getAsInt()
    }
    if (name != null && rgb != null && !colors.containsKey(name)) {
        colors.put(name, rgb)
    }
}
// <<< qpbridge shared block: import
