#!/usr/bin/env bash
# Fill the placeholders of infra/ for one GCP project (nothing here talks to GCP).
#
#   export PROJECT_ID=my-project REGION=us-central1 ZONE=us-central1-a BUCKET=my-project-phenaki
#   infra/render.sh --image        # prints the image name:tag (infra/image.txt, filled)
#   infra/render.sh OUT_DIR        # writes every infra YAML, filled, under OUT_DIR (same layout)
#
# Placeholders are these whole words, upper case, in the YAML files and image.txt: PROJECT_ID, REGION,
# ZONE, BUCKET. Each must be set (a missing one is an error, not an empty string).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for var in PROJECT_ID REGION ZONE BUCKET; do
  if [ -z "${!var:-}" ]; then
    echo "render.sh: set $var (see infra/README.md)" >&2
    exit 2
  fi
  if [[ ! "${!var}" =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "render.sh: $var='${!var}' has characters a project, region, zone or bucket name cannot have" >&2
    exit 2
  fi
done
export PROJECT_ID REGION ZONE BUCKET
fill() {  # perl, not sed: \b word boundaries work the same on Linux and macOS
  perl -pe 's/\bPROJECT_ID\b/$ENV{PROJECT_ID}/g; s/\bREGION\b/$ENV{REGION}/g;
            s/\bZONE\b/$ENV{ZONE}/g; s/\bBUCKET\b/$ENV{BUCKET}/g' "$1"
}
if [ "${1:-}" = "--image" ]; then
  fill "$here/image.txt"
  exit 0
fi
out="${1:?usage: infra/render.sh --image | OUT_DIR}"
mkdir -p "$out/kuberay" "$out/serve"
for f in "$here"/*.yaml "$here"/kuberay/*.yaml "$here"/serve/*.yaml; do
  rel="${f#"$here"/}"
  fill "$f" > "$out/$rel"
done
echo "rendered into $out:"
(cd "$out" && ls -1 ./*.yaml kuberay/*.yaml serve/*.yaml)
