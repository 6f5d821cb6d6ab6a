# eBPF datapath (bpf/redirect), its end-to-end tests and bench/bpf:
# clang + libbpf headers for `go generate` (bpf2go), bpftool for inspection,
# iproute2/iptables for the topology and the TPROXY baseline, iperf3 and
# the clients the scenarios run inside pod namespaces.
apt_install clang llvm libbpf-dev bpftool iproute2 iptables iperf3 curl bind9-dnsutils iputils-ping
if [[ ! -f /usr/include/x86_64-linux-gnu/asm/types.h && "$(uname -m)" == x86_64 ]]; then
	log "asm/types.h missing: installing linux-libc-dev"
	apt_install linux-libc-dev
fi
