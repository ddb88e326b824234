{{/*
The Collector's pipelines. docker-compose runs the same pipelines from
deploy/otel-collector.yaml (tests/test_deploy.py holds the two to the same shape).

metrics/scheduler  as received: DELTA, base-2 exponential histograms — what the
                   scheduler's tail-latency windows ingest. A short batch timeout: the
                   control loop reads ~1 s windows.
metrics/prometheus DELTA to cumulative (remote write takes cumulative series only), then
                   remote write: exponential histograms arrive as native histograms, named
                   by the Prometheus translator (deeprec.query.latency, unit ms ->
                   deeprec_query_latency_milliseconds).
traces             to Jaeger or tracing.endpoint.
*/}}
{{- define "deeprec.collectorConfig" -}}
{{- $v := .Values -}}
{{- $toScheduler := $v.scheduler.enabled -}}
{{- $toPrometheus := include "deeprec.remoteWriteUrl" . -}}
{{- $traces := $v.tracing.enabled -}}
extensions:
  health_check:
    endpoint: 0.0.0.0:13133
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
      http:
        endpoint: 0.0.0.0:4318
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
    spike_limit_percentage: 20
  batch:
    timeout: 1s
  batch/scheduler:
    timeout: 200ms
  deltatocumulative:
    max_stale: 5m
exporters:
{{- if $toScheduler }}
  otlp/scheduler:
    endpoint: {{ include "deeprec.schedulerAddress" . }}
    compression: none
    tls:
    {{- if $v.tls.enabled }}
      ca_file: {{ include "deeprec.tlsDir" . }}/ca.crt
      cert_file: {{ include "deeprec.tlsDir" . }}/tls.crt
      key_file: {{ include "deeprec.tlsDir" . }}/tls.key
      server_name_override: {{ include "deeprec.tlsServerName" . }}
    {{- else }}
      insecure: true
    {{- end }}
{{- end }}
{{- if $toPrometheus }}
  prometheusremotewrite:
    endpoint: {{ $toPrometheus }}
    tls:
      insecure: true
{{- end }}
{{- if $traces }}
  otlp/traces:
    endpoint: {{ include "deeprec.tracesEndpoint" . }}
    tls:
      insecure: {{ $v.tracing.insecure }}
{{- end }}
service:
  extensions: [health_check]
  pipelines:
{{- if $toScheduler }}
    metrics/scheduler:
      receivers: [otlp]
      processors: [memory_limiter, batch/scheduler]
      exporters: [otlp/scheduler]
{{- end }}
{{- if $toPrometheus }}
    metrics/prometheus:
      receivers: [otlp]
      processors: [memory_limiter, deltatocumulative, batch]
      exporters: [prometheusremotewrite]
{{- end }}
{{- if $traces }}
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp/traces]
{{- end }}
{{- end -}}
