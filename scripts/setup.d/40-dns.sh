# 40-dns.sh: the DNS proxy's real peers (sourced by scripts/setup.sh).
# unbound: the resolver of conformance/dns; dig (bind9-dnsutils): the client;
# dnsperf: bench/dns. The Debian unbound package starts no daemon here
# (policy-rc.d); tests run their own unbound on a free loopback port.
apt_install unbound bind9-dnsutils dnsperf
