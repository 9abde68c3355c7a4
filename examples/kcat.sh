#!/bin/sh
# Talk to StreamRec with kcat: upsert a catalogue item, send a user's view, and print the
# list StreamRec publishes for that view.
#
#   KAFKA_BOOTSTRAP=localhost:9092 sh examples/kcat.sh carol
#
# -X partitioner=murmur2_random: librdkafka's default partitioner is not Kafka's murmur2,
# the one StreamRec requires (records it would misplace are re-routed and counted in
# streamrec_misrouted_total). kcat cannot talk to the embedded Tansu broker.
set -eu
KAFKA=${KAFKA_BOOTSTRAP:-localhost:9092}
ITEMS=${STREAMREC_TOPIC_ITEMS:-items}
EVENTS=${STREAMREC_TOPIC_EVENTS:-events}
RECOMMENDATIONS=${STREAMREC_TOPIC_RECOMMENDATIONS:-recommendations}
USER_ID=${1:-carol}
NOW=$(($(date +%s) * 1000))
EVENT_ID="view-$NOW-$$"

for item in "alien|Alien (1979)" "aliens|Aliens (1986)" "heat|Heat (1995)"; do
  id=${item%%|*}
  echo "$id|{\"v\":1,\"op\":\"upsert\",\"event_id\":\"upsert-$id\",\"item_id\":\"$id\",\"ts\":$NOW,\"title\":\"${item#*|}\",\"category\":\"film\"}"
done | kcat -P -b "$KAFKA" -t "$ITEMS" -K '|' -X partitioner=murmur2_random

echo "$USER_ID|{\"v\":1,\"type\":\"view\",\"event_id\":\"$EVENT_ID\",\"user_id\":\"$USER_ID\",\"ts\":$NOW,\"item_id\":\"alien\"}" |
  kcat -P -b "$KAFKA" -t "$EVENTS" -K '|' -X partitioner=murmur2_random

# the lists published since the view's time (-o s@<ms>), until the one made after our view
for _ in $(seq 30); do
  found=$(kcat -C -b "$KAFKA" -t "$RECOMMENDATIONS" -o "s@$NOW" -e -q -f '%s\n' |
          grep -F "\"source_event_id\":\"$EVENT_ID\"" || true)
  if [ -n "$found" ]; then
    echo "$found"
    exit 0
  fi
  sleep 1
done
echo "no recommendations for $EVENT_ID within 30 s" >&2
exit 1
