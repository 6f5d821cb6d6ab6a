# TLS interception and serverNames policy (xds/tls.go, secrets/,
# conformance/envoytls): openssl makes the test CAs and certificates as the
# seed's steps do and is the s_client of the SNI scenarios; curl is the HTTPS
# client; h2load (nghttp2-client) drives bench/tls.
apt_install openssl curl nghttp2-client
