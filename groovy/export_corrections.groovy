/*
 * qpbridge: export a pathologist's corrections from QuPath
 * ========================================================
 *
 * What it does
 *   Writes the current image's annotations and every qpbridge prediction (untouched or edited, whatever its
 *   object type: class regions, heat-map tiles, nuclei), plus other detections if INCLUDE_DETECTIONS is true
 *   (QuPath's own cell detection, for example), as one GeoJSON FeatureCollection, in QuPath's own format, to
 *       <folder>/<image base name>.geojson
 *   and next to it a sidecar <image base name>.json that records the image name, the image file path(s),
 *   the image size, the pixel size and which objects the export holds, so that `qpbridge masks` can find the
 *   slide again and `qpbridge diff` / `masks` never read "not exported" as "deleted".
 *   (folder: `qpbridge/corrections` inside the project folder unless CORRECTIONS_FOLDER says otherwise;
 *   it is created when missing.)
 *   - Objects whose measurement "qpbridge prediction" is in [1, 2) are predictions nobody changed;
 *     predictions that were reclassified, reshaped or moved get the value 0 first
 *     (RELEASE_EDITED_PREDICTIONS): they are corrections now. Deleted predictions are simply absent.
 *   - Both files are written to a temporary file first and then renamed, so an interrupted export never
 *     leaves a half file behind.
 *   - Anything missing (no image, no project, a folder that cannot be created) is logged as an error
 *     naming what is missing and stops the script.
 *
 * "<image base name>" is QuPath's image name without its slide extension, with characters that cannot be
 * in a file name replaced by '_': "slide1.svs" -> "slide1" (the rule lives in qpbridge/qupath/project.py).
 *
 * QuPath versions: 0.4, 0.5, 0.6 and 0.7.
 *
 * How to run
 *   One image:      open the image, Automate > Script editor, open this file, Run.
 *   Whole project:  in the script editor, Run > Run for project.
 *   Headless:       QuPath script -p /path/to/project.qpproj -s export_corrections.groovy
 *                   (add -i "slide1.svs" for one image; -a /path/to/folder overrides CORRECTIONS_FOLDER)
 *   Then, outside QuPath:  qpbridge masks ...  (it reads <project>/qpbridge/corrections/)
 */

import groovy.transform.Field

import java.nio.charset.StandardCharsets
import java.nio.file.AtomicMoveNotSupportedException
import java.nio.file.Files
import java.nio.file.Paths
import java.nio.file.StandardCopyOption

import org.slf4j.Logger
import org.slf4j.LoggerFactory
import qupath.lib.io.GsonTools
import qupath.lib.measurements.MeasurementList
import qupath.lib.objects.PathObject
import qupath.lib.roi.interfaces.ROI
import qupath.lib.scripting.QP

// ================================ Settings ================================
// Folder for the corrections; '' means 'qpbridge/corrections' inside the project folder.
// A relative path is taken relative to the project folder.
String CORRECTIONS_FOLDER = ''
// Also export detections that are not qpbridge predictions (e.g. QuPath's own cell detection). Annotations and
// every qpbridge prediction, whatever its object type, are always exported.
boolean INCLUDE_DETECTIONS = false
// Unmark predictions that were reclassified, reshaped or moved, so that they count as corrections.
boolean RELEASE_EDITED_PREDICTIONS = true
// Indent the GeoJSON (easier to read, larger file).
boolean PRETTY_JSON = false
// ============================= End of settings ============================

String[] scriptArgs = binding.hasVariable('args') ? (binding.getVariable('args') as String[]) : new String[0]
if (scriptArgs.length > 0 && scriptArgs[0] != null && !scriptArgs[0].trim().isEmpty()) {
    CORRECTIONS_FOLDER = scriptArgs[0].trim()
}

if (QP.getCurrentImageData() == null) {
    qpbridgeFail('qpbridge: no image is open: open an image, or use Run > Run for project, '
            + 'before running export_corrections.groovy')
}
String imageName = QP.getCurrentImageName()
File folder = qpbridgeResolveFolder(CORRECTIONS_FOLDER, 'CORRECTIONS_FOLDER',
        [QPBRIDGE_PREDICTIONS_DIRNAME, QPBRIDGE_CORRECTIONS_DIRNAME])
folder.mkdirs()
if (!folder.isDirectory()) {
    qpbridgeFail('qpbridge: cannot create the corrections folder ' + folder
            + ': check that it can be written, or set CORRECTIONS_FOLDER')
}
String baseName = qpbridgeBaseName(imageName)
File geojsonFile = new File(folder, baseName + '.geojson')
File sidecarFile = new File(folder, baseName + '.json')

List<PathObject> objects = new ArrayList<>(QP.getAnnotationObjects())
int annotations = objects.size()
int predictionDetections = 0
int otherDetections = 0
for (PathObject detection : QP.getDetectionObjects()) {  // cells and tiles are detections too
    if (qpbridgeIsPrediction(detection)) {
        objects.add(detection)
        predictionDetections++
    } else if (INCLUDE_DETECTIONS) {
        objects.add(detection)
        otherDetections++
    }
}
if (objects.isEmpty()) {
    LOG.warn('qpbridge: image "' + imageName + '" has no annotations and no qpbridge predictions; writing an '
            + 'empty FeatureCollection')
}
int released = 0
if (RELEASE_EDITED_PREDICTIONS) {
    released = qpbridgeReleaseEdited(objects)
    if (released > 0) {
        QP.fireHierarchyUpdate()
    }
}
int untouched = 0
for (PathObject pathObject : objects) {
    if (qpbridgeIsMarked(pathObject)) {
        untouched++
    }
}

File temporaryGeojson = new File(folder, baseName + '.geojson.qpbridge-tmp')
if (PRETTY_JSON) {
    QP.exportObjectsToGeoJson(objects, temporaryGeojson.getAbsolutePath(), 'FEATURE_COLLECTION', 'PRETTY_JSON')
} else {
    QP.exportObjectsToGeoJson(objects, temporaryGeojson.getAbsolutePath(), 'FEATURE_COLLECTION')
}
if (!temporaryGeojson.isFile()) {
    qpbridgeFail('qpbridge: QuPath wrote no file ' + temporaryGeojson + ': check that the folder can be written')
}
qpbridgeMoveIntoPlace(temporaryGeojson, geojsonFile)

// The sidecar: image name, image file path(s) and URIs, size and pixel size.
List<String> imageUris = new ArrayList<>()
for (URI uri : QP.getCurrentServer().getURIs()) {
    imageUris.add(String.valueOf(uri))
}
List<String> imagePaths = qpbridgeLocalImagePaths()
if (imagePaths.isEmpty()) {
    LOG.warn('qpbridge: image "' + imageName + '" is not a local file (URIs: ' + imageUris.join(', ')
            + '); give `qpbridge masks` the slide path yourself')
}
Map<String, Object> sidecar = new LinkedHashMap<>()
sidecar.put('format', 'qpbridge-corrections-sidecar')
sidecar.put('format_version', 2)
sidecar.put('image_name', imageName)
sidecar.put('image_paths', imagePaths)
sidecar.put('image_uris', imageUris)
sidecar.put('width_px', QP.getCurrentServer().getWidth())
sidecar.put('height_px', QP.getCurrentServer().getHeight())
if (QP.getCurrentServer().getPixelCalibration().hasPixelSizeMicrons()) {
    sidecar.put('pixel_size_um', QP.getCurrentServer().getPixelCalibration().getAveragedPixelSizeMicrons())
}
sidecar.put('geojson', geojsonFile.getName())
sidecar.put('annotations', annotations)
sidecar.put('detections', predictionDetections + otherDetections)
sidecar.put('prediction_detections', predictionDetections)
sidecar.put('other_detections', otherDetections)
// What the export holds, so that an object type left out is never read as deleted.
Map<String, Object> exported = new LinkedHashMap<>()
exported.put('annotations', true)
exported.put('qpbridge_predictions', true)
exported.put('other_detections', INCLUDE_DETECTIONS)
sidecar.put('exported', exported)
sidecar.put('untouched_predictions', untouched)
File temporarySidecar = new File(folder, baseName + '.json.qpbridge-tmp')
Files.write(temporarySidecar.toPath(), GsonTools.getInstance(true).toJson(sidecar).getBytes(StandardCharsets.UTF_8))
qpbridgeMoveIntoPlace(temporarySidecar, sidecarFile)

LOG.info('qpbridge: image "' + imageName + '": wrote ' + objects.size() + ' objects (' + annotations
        + ' annotations; ' + predictionDetections + ' prediction detections; ' + otherDetections
        + ' other detections; ' + untouched + ' untouched predictions; ' + released
        + ' edited predictions released as corrections) to ' + geojsonFile + ' and ' + sidecarFile.getName())


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
