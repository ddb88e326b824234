#!/bin/sh
# Runs `deeprec ARGS...` after giving the process its own OpenTelemetry identity.
#
# Replicas share their environment (a Deployment's pods, compose's scaled containers), so
# without a service.instance.id their metric streams would merge: the Collector's
# delta-to-cumulative step and Prometheus would see two writers of one series. HOSTNAME is
# the pod name in Kubernetes and the container id in Docker.
set -eu
case ",${OTEL_RESOURCE_ATTRIBUTES:-}," in
    *,service.instance.id=*) ;;
    *)
        OTEL_RESOURCE_ATTRIBUTES="service.instance.id=${HOSTNAME:-unknown}${OTEL_RESOURCE_ATTRIBUTES:+,$OTEL_RESOURCE_ATTRIBUTES}"
        export OTEL_RESOURCE_ATTRIBUTES
        ;;
esac
exec deeprec "$@"
