#!/usr/bin/env bash
# render.sh renders the Helm chart into the plain manifests committed in
# deploy/manifests (for `kubectl apply` without Helm), with the real helm
# that make setup builds (build/bin/helm). scripts/generate.sh runs it, so
# `make generate-check` (CI) fails when they are stale. Neither the CRDs
# (apply helm/ward/crds/ itself: no copy to keep in step) nor the namespace
# `ward` are in them (docs/kubernetes.md).
set -euo pipefail
cd "$(dirname "$0")"
helm=../build/bin/helm
[[ -x $helm ]] || { echo "render: $helm missing: run make setup" >&2; exit 1; }
render() { # render OUT [helm args...]
	local out=$1
	shift
	"$helm" template ward helm/ward --namespace ward --kube-version 1.36.0 "$@" >"manifests/$out.tmp"
	mv "manifests/$out.tmp" "manifests/$out"
}
render ward.yaml
render ward-custom.yaml -f helm/ward/ci/custom-values.yaml
render ward-cleanup.yaml --set cleanup.enabled=true
