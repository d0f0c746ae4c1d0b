#!/usr/bin/env bash
# Train the nuclei model monuseg-nuclei on the 30 MoNuSeg 2018 training tiles (1000 x 1000 px H&E at 0.25 um/px).
# Needs the shared data (DATA, default ../shared/data): monuseg-train/images/*.tif and
# monuseg-train/instances/<stem>_instances.png. Tiles go to WORK (default: a fresh temporary folder), the model to
# OUT (default models/monuseg-nuclei). Run from the repository root:
#   bash models/make_monuseg_nuclei.sh                         # STEPS=3000 DEVICE=cpu by default
#   STEPS=5 OUT=/tmp/m bash models/make_monuseg_nuclei.sh      # a quick end-to-end check
# Tiles: 256 px at 0.25 um/px with a 248 px stride, so 4 x 4 tiles cover each 1000 px image exactly.
# The 17 masks composed from per-nucleus binary masks sit ~0.5 px inside the outlines: they are grown by 1 px
# (--grow-instances-px 1); the 13 rasterized from the XML outlines are not. 6 XML-derived tiles validate.
set -euo pipefail
DATA=${DATA:-../shared/data}
STEPS=${STEPS:-3000}
DEVICE=${DEVICE:-cpu}
OUT=${OUT:-models/monuseg-nuclei}
WORK=${WORK:-$(mktemp -d -t monuseg-nuclei.XXXXXX)}
QPBRIDGE=${QPBRIDGE:-qpbridge}
# The 13 tiles whose instances come from MoNuSeg's XML outlines (see shared/data/README.md).
XML_STEMS="21-5784 21-5786 50-5931 A7-A13E AR-A1AK AR-A1AS B0-5698 B0-5710 B0-5711 CH-5767 E2-A1B5 G9-6362 NH-A8F7"
VAL=TCGA-21-5784-01Z-00-DX1,TCGA-A7-A13E-01Z-00-DX1,TCGA-E2-A1B5-01Z-00-DX1,TCGA-B0-5710-01Z-00-DX1
VAL=$VAL,TCGA-G9-6362-01Z-00-DX1,TCGA-NH-A8F7-01A-01-TS1
n=0
for image in "$DATA"/monuseg-train/images/*.tif; do
  stem=$(basename "$image" .tif)
  grow=1
  for xml in $XML_STEMS; do
    if [[ "$stem" == TCGA-$xml-* ]]; then grow=0; fi
  done
  $QPBRIDGE masks "$image" "$DATA/monuseg-train/instances/${stem}_instances.png" -o "$WORK/tiles" --role nuclei \
    --mpp 0.25 --tile-mpp 0.25 --tile-px 256 --stride-px 248 --grow-instances-px $grow --min-tissue-frac 0
  n=$((n + 1))
  if [[ -n "${LIMIT:-}" && $n -ge $LIMIT ]]; then break; fi
done
$QPBRIDGE train "$WORK/tiles" -o "$OUT" --role nuclei --name monuseg-nuclei --steps "$STEPS" --lr 1e-3 \
  --lr-schedule cosine --batch-size 8 --val-slides "$VAL" --val-every 250 --threads 2 --seed 0 --device "$DEVICE" \
  --license "CC BY-NC-SA 4.0 (trained on MoNuSeg 2018): non-commercial research use only" \
  --intended-use "research only, not for diagnosis" --domain real
echo "tiles in $WORK/tiles, model in $OUT"
