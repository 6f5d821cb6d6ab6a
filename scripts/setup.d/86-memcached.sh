# Generic L7 (l7proto: memcache): Debian's memcached server and
# libmemcached's real clients (memccp, memccat; text and --binary) for
# conformance/datapath TestWarddMemcached. The package's own service is not
# used: the tests run memcached inside their pods.
apt_install memcached libmemcached-tools
