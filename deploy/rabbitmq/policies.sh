#!/usr/bin/env bash
# Applies Relay's RabbitMQ policies to a running cluster with rabbitmqctl (no management
# plugin needed); the same policies as definitions.json, for clusters that were not booted
# from it. Idempotent.
#
# Usage: deploy/rabbitmq/policies.sh [PREFIX] [VHOST]     (defaults: relay. and /)
#   e.g. kubectl exec -n rabbitmq rabbitmq-server-0 -- bash -s < deploy/rabbitmq/policies.sh
# Environment: RABBITMQCTL, the rabbitmqctl command line to use (default `rabbitmqctl`;
# deploy/local/cluster.sh sets it to reach its own nodes).
#
# The policies cap what an outage can pile up in the queues consumers read at their own pace
# (parked dead/invalid messages, archive and attempt records), with overflow reject-publish:
# a full queue refuses new messages (the publisher sees a nack and retries later); nothing
# is ever dropped. Relay sets every other queue argument itself when it declares a queue.
set -euo pipefail

prefix=${1:-relay.}
vhost=${2:-/}
quoted=${prefix//./\\.}
read -r -a rabbitmqctl <<<"${RABBITMQCTL:-rabbitmqctl}"

"${rabbitmqctl[@]}" set_policy -p "$vhost" --apply-to queues --priority 10 \
  relay-parked "^${quoted}(dead|invalid)\$" \
  '{"max-length-bytes": 10737418240, "overflow": "reject-publish"}'

"${rabbitmqctl[@]}" set_policy -p "$vhost" --apply-to queues --priority 10 \
  relay-records "^${quoted}(archive|attempts)\$" \
  '{"max-length-bytes": 21474836480, "overflow": "reject-publish"}'

"${rabbitmqctl[@]}" list_policies -p "$vhost"
