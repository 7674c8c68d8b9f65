#!/usr/bin/env bash
# Makes a compact copy of the shared data for the GPU machine, where only the checkout travels
# (64 MiB in all, carried git-ignored folders included) and ../shared is absent:
#
#   build-gpu-data/industrial-mini/     the data set, same MVTec layout, same stems, same image sizes
#                                       (the GPU run uses a 512/256/128 pyramid: nothing is
#                                       downscaled), images re-encoded as grayscale JPEG at the
#                                       highest quality that fits the budget; masks stay PNG
#   build-gpu-data/resnet18-imagenet/   only the 30 .npy tensors ResNet-18 needs up to layer3
#                                       (hgad::load_resnet_weights reads resnet_weight_shapes(arch,
#                                       layer3): the stem and layer1..layer3; no metadata file is
#                                       read), plus README.md, SOURCES.md and their SHA256SUMS lines
#   build-gpu-data/README.txt           what was re-encoded, at which quality, and the sizes
#
#   scripts/make_gpu_data.sh [OUT_DIR]       default OUT_DIR: build-gpu-data (ignored by /build-*/)
#   then, on the GPU machine (carry build-gpu-data):
#     hgad train --data build-gpu-data/industrial-mini --backbone build-gpu-data/resnet18-imagenet ...
#
# Budgets (apparent sizes, the bytes that travel): the data set at most HGAD_GPU_DATA_TARGET_MIB
# (default 40) and at most what the total cap leaves beside the weights; the whole folder at most
# HGAD_GPU_DATA_CAP_MIB (default 48), else the script fails. One JPEG quality q for every image:
# the first of 95, 90, ..., 30 that fits, then the highest of q+4..q+1 that fits too. Each image
# becomes the smaller of its original file (lossless PNG, or the source's JPEG q95) and its JPEG
# re-encoding at q, so nothing is re-encoded to a larger file. Masks: the smaller of the original
# PNG and a maximum-compression re-save (both lossless). The reader (include/hgad/io/mvtec.hpp)
# walks the folders, accepts .png/.jpg/.jpeg/.bmp and finds a mask by the image's stem
# (ground_truth/<defect>/<stem>_mask.png), so a changed extension is fine; it does not read
# manifest.csv, which is rewritten anyway (with provenance.csv) to name the new files.
#
# Deterministic (same bytes on a rerun with the same Pillow) and idempotent (the folder is built
# beside the target, then replaces it). Sources: HGAD_GPU_DATA_DATASET and HGAD_GPU_DATA_WEIGHTS,
# default ../shared/datasets/industrial-mini and ../shared/weights/resnet18-imagenet. Needs python3
# with Pillow; installs Debian's python3-pil when no python3 on PATH or /usr/bin has it.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-build-gpu-data}
dataset=${HGAD_GPU_DATA_DATASET:-../shared/datasets/industrial-mini}
weights=${HGAD_GPU_DATA_WEIGHTS:-../shared/weights/resnet18-imagenet}
target_mib=${HGAD_GPU_DATA_TARGET_MIB:-40}
cap_mib=${HGAD_GPU_DATA_CAP_MIB:-48}
marker="hgad make_gpu_data.sh output"

die() { echo "make_gpu_data: $*" >&2; exit 1; }
[ -f "$dataset/manifest.csv" ] || die "no data set at '$dataset' (expected manifest.csv there)"
[ -f "$weights/conv1.weight.npy" ] || die "no ResNet-18 weights at '$weights'"
case "$out" in ''|/|.|..|./|../) die "refusing output folder '$out'" ;; esac

# ---- a python3 with Pillow -----------------------------------------------------------------------
python=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import PIL' 2>/dev/null; then python=$p; break; fi
done
if [ -z "$python" ]; then
  echo "== no python3 with Pillow: installing Debian's python3-pil"
  apt-cache policy python3-pil | grep -q 'Candidate: [0-9]' || die "apt has no python3-pil candidate (run apt-get update?)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends python3-pil >/dev/null
  /usr/bin/python3 -c 'import PIL' 2>/dev/null || die "python3-pil installed but /usr/bin/python3 cannot import PIL"
  python=/usr/bin/python3
fi
echo "== $("$python" -c 'import sys, PIL; print("python", sys.version.split()[0], "Pillow", PIL.__version__)') ($python)"

# ---- build beside the target, then replace it ----------------------------------------------------
if [ -e "$out" ]; then
  [ -d "$out" ] && { [ -z "$(ls -A "$out")" ] || grep -qs "$marker" "$out/README.txt"; } ||
    die "'$out' exists and is not an earlier output of this script (no '$marker' in README.txt): not replacing it"
fi
tmp="$out.tmp"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"

# The weight files of ResNet-18 up to layer3, as hgad::resnet_weight_shapes lists them.
weight_keys=(conv1)
for l in 1 2 3; do
  for b in 0 1; do
    weight_keys+=("layer$l.$b.conv1" "layer$l.$b.conv2")
    if [ "$l" -gt 1 ] && [ "$b" -eq 0 ]; then weight_keys+=("layer$l.$b.downsample.0"); fi
  done
done
mkdir -p "$tmp/resnet18-imagenet"
files=()
for k in "${weight_keys[@]}"; do
  for t in weight bias; do
    f="$k.$t.npy"
    [ -f "$weights/$f" ] || die "missing weight file '$weights/$f'"
    cp "$weights/$f" "$tmp/resnet18-imagenet/$f"
    files+=("$f")
  done
done
for f in README.md SOURCES.md; do
  if [ -f "$weights/$f" ]; then cp "$weights/$f" "$tmp/resnet18-imagenet/$f"; files+=("$f"); fi
done
if [ -f "$weights/SHA256SUMS" ]; then
  # The checksum lines of the copied files only (golden/ stays behind: only the unit tests read it).
  printf '%s\n' "${files[@]}" | awk 'NR==FNR {keep[$0]=1; next} {f=$2; sub(/^\*/, "", f)} keep[f]' - \
    "$weights/SHA256SUMS" > "$tmp/resnet18-imagenet/SHA256SUMS"
  (cd "$tmp/resnet18-imagenet" && sha256sum --quiet -c SHA256SUMS) || die "weight checksums do not match"
fi
weights_bytes=$(du -sb "$tmp/resnet18-imagenet" | cut -f1)
echo "== weights: ${#weight_keys[@]} convolutions, $((${#weight_keys[@]} * 2)) .npy files, $weights_bytes bytes"

# ---- the data set --------------------------------------------------------------------------------
# Data budget: the target, and what the cap leaves beside the weights, README.txt and folder entries.
budget=$("$python" -c "print(min($target_mib * 2**20, $cap_mib * 2**20 - $weights_bytes - 512 * 1024))")
"$python" - "$dataset" "$tmp/industrial-mini" "$budget" "$tmp/quality.txt" <<'PY'
import csv, io, os, sys
from collections import Counter
from multiprocessing import Pool
from PIL import Image

src, dst, budget, report = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp"}

images, masks, others = [], [], []
for dirpath, dirnames, filenames in os.walk(src):
    dirnames.sort()
    for name in sorted(filenames):
        rel = os.path.relpath(os.path.join(dirpath, name), src)
        parts = rel.split(os.sep)
        if len(parts) == 1:
            others.append(rel)                      # manifest.csv, README.md, ...
        elif name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXT:
            sys.exit(f"make_gpu_data: unexpected file '{rel}' in the data set")
        elif parts[1] == "ground_truth":
            masks.append(rel)
        else:
            images.append(rel)

def load_gray(rel):
    im = Image.open(os.path.join(src, rel))
    im.load()
    if im.mode != "L":
        raise RuntimeError(f"make_gpu_data: {rel!r} is {im.mode}, expected 8-bit grayscale (L)")
    return im

def jpeg_bytes(im, q):
    b = io.BytesIO()
    im.save(b, "JPEG", quality=q, optimize=True)   # baseline, optimized Huffman tables, no EXIF
    return b.getvalue()

def image_choice(args):
    """(bytes, extension) of image `rel` at quality q: the smaller of original and JPEG q."""
    rel, q = args
    with open(os.path.join(src, rel), "rb") as f:
        original = f.read()
    jpg = jpeg_bytes(load_gray(rel), q)
    if len(jpg) < len(original):
        return jpg, ".jpg", True
    return original, os.path.splitext(rel)[1], False

def image_size(args):
    return len(image_choice(args)[0])

def mask_choice(rel):
    with open(os.path.join(src, rel), "rb") as f:
        original = f.read()
    im = Image.open(io.BytesIO(original))
    im.load()
    b = io.BytesIO()
    im.save(b, "PNG", optimize=True, compress_level=9)
    return b.getvalue() if len(b.getvalue()) < len(original) else original

with Pool(os.cpu_count() or 2) as pool:
    mask_data = pool.map(mask_choice, masks, chunksize=16)
    fixed = sum(len(m) for m in mask_data) + sum(os.path.getsize(os.path.join(src, r)) for r in others)
    sizes = {}
    def total(q):
        if q not in sizes:
            sizes[q] = fixed + sum(pool.map(image_size, [(r, q) for r in images], chunksize=16))
            print(f"   q{q}: {sizes[q] / 2**20:.2f} MiB (budget {budget / 2**20:.2f})", flush=True)
        return sizes[q]
    chosen = None
    for q in range(95, 29, -5):
        if total(q) <= budget:
            chosen = q
            break
    if chosen is None:
        sys.exit(f"make_gpu_data: even JPEG quality 30 gives {sizes[30] / 2**20:.2f} MiB, over the budget")
    for q in range(min(chosen + 4, 100), chosen, -1):
        if total(q) <= budget:
            chosen = q
            break
    results = pool.map(image_choice, [(r, chosen) for r in images], chunksize=16)

renamed = {}
n_images = Counter(); n_encoded = Counter(); n_masks = Counter(); bytes_by_class = Counter()
for rel, (data, ext, reencoded) in zip(images, results):
    new = os.path.splitext(rel)[0] + ext
    renamed[rel] = new
    cls = rel.split(os.sep)[0]
    n_images[cls] += 1
    n_encoded[cls] += reencoded
    bytes_by_class[cls] += len(data)
    os.makedirs(os.path.join(dst, os.path.dirname(new)), exist_ok=True)
    with open(os.path.join(dst, new), "wb") as f:
        f.write(data)
for rel, data in zip(masks, mask_data):
    n_masks[rel.split(os.sep)[0]] += 1
    bytes_by_class[rel.split(os.sep)[0]] += len(data)
    os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
    with open(os.path.join(dst, rel), "wb") as f:
        f.write(data)

def rewrite_csv(name, columns):
    with open(os.path.join(src, name), newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    idx = [header.index(c) for c in columns]
    for row in rows[1:]:
        for i in idx:
            if row[i]:
                key = row[i].replace("/", os.sep)
                if key in renamed:
                    row[i] = renamed[key].replace(os.sep, "/")
                elif not os.path.exists(os.path.join(dst, key)):
                    sys.exit(f"make_gpu_data: {name} names '{row[i]}', which the copy lacks")
    with open(os.path.join(dst, name), "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return rows

for rel in others:
    if rel == "manifest.csv":
        rows = rewrite_csv(rel, ["image", "mask"])
    elif rel == "provenance.csv":
        rewrite_csv(rel, ["image"])
    else:
        with open(os.path.join(src, rel), "rb") as f, open(os.path.join(dst, rel), "wb") as g:
            g.write(f.read())

# Checks: the manifest names exactly the copy's images and masks; every image keeps its size.
listed = {r[3] for r in rows[1:]} | {r[4] for r in rows[1:] if r[4]}
copied = {renamed[r].replace(os.sep, "/") for r in images} | {m.replace(os.sep, "/") for m in masks}
if listed != copied:
    sys.exit(f"make_gpu_data: manifest and copy differ ({len(listed ^ copied)} paths)")
for rel in images:
    a = Image.open(os.path.join(src, rel)); b = Image.open(os.path.join(dst, renamed[rel]))
    if a.size != b.size or b.mode != "L":
        sys.exit(f"make_gpu_data: '{renamed[rel]}' is {b.size} {b.mode}, the original {a.size} {a.mode}")

with open(report, "w") as f:
    f.write(f"quality {chosen}\n")
    f.write(f"searched {' '.join(f'q{q}={sizes[q] / 2**20:.2f}MiB' for q in sorted(sizes, reverse=True))}\n")
    for cls in sorted(bytes_by_class):
        f.write(f"class {cls} {n_images[cls]} {n_encoded[cls]} {n_masks[cls]} {bytes_by_class[cls]}\n")
print(f"== industrial-mini: JPEG quality {chosen}, {len(images)} images, {len(masks)} masks")
PY

# ---- README.txt and the sizes --------------------------------------------------------------------
quality=$(awk '$1 == "quality" {print $2}' "$tmp/quality.txt")
data_bytes=$(du -sb "$tmp/industrial-mini" | cut -f1)
mib() { awk -v b="$1" 'BEGIN {printf "%.2f MiB", b / 1048576}'; }
{
  echo "$marker (scripts/make_gpu_data.sh; rerun it to rebuild this folder)"
  echo
  echo "A compact copy of the shared data for the GPU machine, where only the checkout travels."
  echo "Sources: $(cd "$dataset" && pwd) and $(cd "$weights" && pwd)."
  echo
  echo "industrial-mini/ : the MVTec layout, file stems and image sizes of the original (nothing"
  echo "  downscaled). Every image is the smaller of its original file and a grayscale baseline JPEG"
  echo "  (Pillow, optimized Huffman tables) at quality $quality, the highest quality that fit the budget"
  echo "  of $(mib "$budget") (min of ${target_mib} MiB and ${cap_mib} MiB minus the weights)."
  echo "  Search: $(sed -n 's/^searched //p' "$tmp/quality.txt")."
  echo "  Re-encoded images are named <stem>.jpg: the photographs (magnetic_tile, kolektor) were JPEG"
  echo "  q95 and are JPEG q$quality now; a PCB scan (PNG original) became .jpg where its JPEG was smaller"
  echo "  and otherwise stays the lossless original .png (see the table). Masks are the original PNGs"
  echo "  (values {0,255}), re-saved at maximum PNG compression where that was smaller: lossless."
  echo "  manifest.csv and provenance.csv name the new files. industrial-mini/README.md is the"
  echo "  original's and still describes the original encoding (JPEG q95 / PNG)."
  echo
  echo "  class            images  re-encoded  masks  bytes"
  awk '$1 == "class" {printf "  %-16s %6d  %10d  %5d  %d\n", $2, $3, $4, $5, $6}' "$tmp/quality.txt"
  echo
  echo "resnet18-imagenet/ : the ${#weight_keys[@]} convolutions (weight + bias .npy, BatchNorm folded) of"
  echo "  ResNet-18 up to layer3, byte-identical (SHA256SUMS holds their lines of the original's),"
  echo "  with README.md and SOURCES.md; golden/ (read only by the unit tests) is left out."
  echo
  echo "Sizes (apparent): industrial-mini $(mib "$data_bytes") ($data_bytes bytes),"
  echo "  resnet18-imagenet $(mib "$weights_bytes") ($weights_bytes bytes)."
} > "$tmp/README.txt"
rm "$tmp/quality.txt"
total_bytes=$(du -sb "$tmp" | cut -f1)
echo "  total $(mib "$total_bytes") (cap ${cap_mib} MiB)" >> "$tmp/README.txt"
total_bytes=$(du -sb "$tmp" | cut -f1)

rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "== $out"
echo "-- du -sh --apparent-size (the bytes that travel) | du -sh (disk blocks):"
for d in "$out/industrial-mini" "$out/resnet18-imagenet" "$out"; do
  echo "   $(du -sh --apparent-size "$d" | cut -f1) | $(du -sh "$d" | cut -f1)	$d"
done
if [ "$total_bytes" -gt $((cap_mib * 1048576)) ]; then
  die "FAILED: $out is $(mib "$total_bytes"), over the cap of $cap_mib MiB"
fi
echo "== ok: $out is $(mib "$total_bytes") ($total_bytes bytes) <= $cap_mib MiB; JPEG quality $quality"
