# moto in server mode: a real, widely used EC2-compatible API server the
# toGroups tests populate with VPCs, security groups, network interfaces and
# instances (nothing talks to real AWS). Installed from PyPI, every package
# pinned (tools/moto/requirements.txt), into its own venv .cache/moto;
# reinstalled only when the requirements change.
moto_venv="$ROOT/.cache/moto"
moto_stamp="$(sha256sum "$ROOT/tools/moto/requirements.txt")"
moto_stamp="${moto_stamp%% *}"
if [[ ! -x $moto_venv/bin/moto_server || ! -f $moto_venv/.stamp || $(<"$moto_venv/.stamp") != "$moto_stamp" ]]; then
	log "installing moto[server] into .cache/moto"
	rm -rf "$moto_venv"
	python3 -m venv "$moto_venv"
	"$moto_venv/bin/pip" install -q --no-deps -r "$ROOT/tools/moto/requirements.txt"
	printf '%s\n' "$moto_stamp" >"$moto_venv/.stamp"
fi
