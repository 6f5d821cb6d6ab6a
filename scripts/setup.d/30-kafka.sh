# Kafka conformance peers: kcat (Debian) and the Apache Kafka broker and
# tools jars (pinned in third_party/kafka/pom.xml) from Maven Central into
# third_party/kafka-libs/ (gitignored). OpenJDK 17 and Maven come from the
# base image (apt packages openjdk-17-jre-headless and maven otherwise).
apt_install kcat

KAFKA_LIBS="$ROOT/third_party/kafka-libs"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/third_party/kafka/pom.xml")"
if [[ ! -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" || ! -f "$KAFKA_LIBS/kafka-tools-$KAFKA_VERSION.jar" ]]; then
	command -v java >/dev/null || apt_install openjdk-17-jre-headless
	command -v mvn >/dev/null || apt_install maven
	log "mvn dependency:copy-dependencies (Kafka $KAFKA_VERSION) -> third_party/kafka-libs"
	rm -rf "$KAFKA_LIBS"
	(cd "$ROOT/third_party/kafka" && mvn -q -B dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS")
fi
