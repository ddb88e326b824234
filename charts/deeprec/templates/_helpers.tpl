{{/*
Names, labels, images and addresses. Component helpers take a dict:
  root       the chart's top-level context
  component  frontend | worker-cpu | worker-gpu | shard | scheduler | collector | jaeger |
             prometheus | grafana
*/}}

{{/* Truncated to 40 so "<fullname>-shard-NN-R" still fits a DNS label. */}}
{{- define "deeprec.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "deeprec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "deeprec.componentName" -}}
{{- printf "%s-%s" (include "deeprec.fullname" .root) .component -}}
{{- end -}}

{{- define "deeprec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deeprec.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "deeprec.labels" -}}
{{ include "deeprec.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: deeprec
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Object metadata for a component: name (default the component's), labels. */}}
{{- define "deeprec.metadata" -}}
name: {{ .name | default (include "deeprec.componentName" .) }}
labels:
  {{- include "deeprec.labels" . | nindent 2 }}
  {{- with .extraLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* repository@digest when a digest is given (the exact image tested), else repository:tag. */}}
{{- define "deeprec.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* TLS: the name every deeprec certificate carries and every client checks. */}}
{{- define "deeprec.tlsServerName" -}}
{{- printf "%s.%s.svc" (include "deeprec.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "deeprec.tlsSecret" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "deeprec.fullname" .)) -}}
{{- end -}}

{{- define "deeprec.tlsDir" -}}/etc/deeprec/tls{{- end -}}

{{/* The frontend, worker and shard pods' ServiceAccount: empty for none. */}}
{{- define "deeprec.servingServiceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "deeprec.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* ---- where things are ---------------------------------------------------------- */}}

{{- define "deeprec.modelDir" -}}
{{- if eq .Values.model.source "volume" -}}
{{- printf "/models/%s" (.Values.model.volume.subPath | default .Values.model.name) -}}
{{- else if .Values.model.extraModels -}}
{{- printf "%s/%s/1" (include "deeprec.repositoryDir" .) .Values.model.name -}}
{{- else -}}
{{- printf "/models/%s" .Values.model.name -}}
{{- end -}}
{{- end -}}

{{/* Where the frontends' in-process workers find their model(s): the model repository
     when model.extraModels lists any, else the one artifact. */}}
{{- define "deeprec.frontendModelDir" -}}
{{- if and (eq .Values.model.source "build") .Values.model.extraModels -}}
{{- include "deeprec.repositoryDir" . -}}
{{- else -}}
{{- include "deeprec.modelDir" . -}}
{{- end -}}
{{- end -}}

{{- define "deeprec.repositoryDir" -}}/models/repository{{- end -}}

{{- define "deeprec.planFile" -}}/plans/plan.json{{- end -}}

{{- define "deeprec.sharded" -}}
{{- if gt (int .Values.shards.count) 0 }}true{{ end -}}
{{- end -}}

{{/* The frontend runs in-process CPU workers: localWorkers > 0 and the model unsharded. */}}
{{- define "deeprec.frontendLocal" -}}
{{- if and (gt (int .Values.frontend.localWorkers) 0) (not (include "deeprec.sharded" .)) }}true{{ end -}}
{{- end -}}

{{- define "deeprec.schedulerAddress" -}}
{{- if .Values.scheduler.enabled -}}
{{- printf "%s:%d" (include "deeprec.componentName" (dict "root" . "component" "scheduler")) (int .Values.scheduler.port) -}}
{{- end -}}
{{- end -}}

{{/* Worker pools sit behind headless Services: the name resolves to every ready pod. */}}
{{- define "deeprec.workerAddress" -}}
{{- printf "%s:%d" (include "deeprec.componentName" (dict "root" .root "component" (printf "worker-%s" .kind))) (int .root.Values.workers.port) -}}
{{- end -}}

{{/* "true" when the frontend follows remote worker pods through EndpointSlices. */}}
{{- define "deeprec.frontendDiscovers" -}}
{{- if and (eq .Values.frontend.discovery "endpointslices") (or .Values.workers.cpu.enabled .Values.workers.gpu.enabled) -}}
true
{{- end -}}
{{- end -}}

{{- define "deeprec.shardName" -}}
{{- printf "%s-shard-%d" (include "deeprec.fullname" .root) (int .index) -}}
{{- end -}}

{{/* `--shards` of a sharded worker: shards in plan order, each shard's replicas (the
     StatefulSet pods' stable DNS names) joined by "+". */}}
{{- define "deeprec.shardAddresses" -}}
{{- $root := . -}}
{{- $shards := list -}}
{{- range $k := until (int .Values.shards.count) -}}
{{- $name := include "deeprec.shardName" (dict "root" $root "index" $k) -}}
{{- $replicas := list -}}
{{- range $r := until (int $root.Values.shards.replicas) -}}
{{- $replicas = append $replicas (printf "%s-%d.%s:%d" $name $r $name (int $root.Values.shards.port)) -}}
{{- end -}}
{{- $shards = append $shards (join "+" $replicas) -}}
{{- end -}}
{{- join "," $shards -}}
{{- end -}}

{{- define "deeprec.collectorEndpoint" -}}
{{- printf "http://%s:4317" (include "deeprec.componentName" (dict "root" . "component" "collector")) -}}
{{- end -}}

{{- define "deeprec.tracesEndpoint" -}}
{{- if .Values.tracing.endpoint -}}
{{- .Values.tracing.endpoint -}}
{{- else -}}
{{- printf "%s:4317" (include "deeprec.componentName" (dict "root" . "component" "jaeger")) -}}
{{- end -}}
{{- end -}}

{{- define "deeprec.prometheusUrl" -}}
{{- if .Values.prometheus.enabled -}}
{{- printf "http://%s:9090" (include "deeprec.componentName" (dict "root" . "component" "prometheus")) -}}
{{- end -}}
{{- end -}}

{{- define "deeprec.remoteWriteUrl" -}}
{{- if .Values.prometheus.enabled -}}
{{- printf "%s/api/v1/write" (include "deeprec.prometheusUrl" .) -}}
{{- else -}}
{{- .Values.prometheus.remoteWriteUrl -}}
{{- end -}}
{{- end -}}

{{- define "deeprec.policyConfigMap" -}}
{{- .Values.scheduler.policyConfigMap | default (printf "%s-policies" (include "deeprec.fullname" .)) -}}
{{- end -}}

{{/* ---- checks the schema cannot express (values that contradict each other) -------- */}}
{{- define "deeprec.validate" -}}
{{- $v := .Values -}}
{{- if and $v.frontend.enabled (not $v.workers.cpu.enabled) (not (include "deeprec.frontendLocal" .)) -}}
{{- fail "frontend.enabled needs CPU workers: frontend.localWorkers > 0 (unsharded models) or workers.cpu.enabled (the GPU pool takes only queries of at least T items)" -}}
{{- end -}}
{{- if and (include "deeprec.sharded" .) (not (or $v.workers.cpu.enabled $v.workers.gpu.enabled)) -}}
{{- fail "shards.count > 0 needs workers: enable workers.cpu or workers.gpu (the sharded workers are the shards' only clients)" -}}
{{- end -}}
{{- if and (eq $v.model.source "volume") (not $v.model.volume.claimName) -}}
{{- fail "model.source=volume needs model.volume.claimName: the PersistentVolumeClaim that holds the model artifact" -}}
{{- end -}}
{{- with $v.model.extraModels -}}
{{- if ne $v.model.source "build" -}}
{{- fail "model.extraModels are built by init containers (model.source=build); with model.source=volume, point model.volume.subPath at a model repository directory (NAME/VERSION/model.json) instead" -}}
{{- end -}}
{{- if or (not (include "deeprec.frontendLocal" $)) $v.workers.cpu.enabled $v.workers.gpu.enabled -}}
{{- fail "model.extraModels are served by the frontends' in-process workers: set frontend.localWorkers > 0, workers.cpu.enabled=false, workers.gpu.enabled=false and shards.count=0" -}}
{{- end -}}
{{- $seen := dict (printf "%s/1" $v.model.name) true -}}
{{- range . -}}
{{- $key := printf "%s/%s" .name (toString (.version | default "1")) -}}
{{- if hasKey $seen $key -}}
{{- fail (printf "model.extraModels: %s is listed twice (model.name is served as version 1)" $key) -}}
{{- end -}}
{{- $_ := set $seen $key true -}}
{{- end -}}
{{- end -}}
{{- if and $v.tracing.enabled $v.collector.enabled (not (or $v.jaeger.enabled $v.tracing.endpoint)) -}}
{{- fail "tracing.enabled needs a place for traces: set jaeger.enabled=true or tracing.endpoint (an OTLP/gRPC host:port), or tracing.enabled=false" -}}
{{- end -}}
{{- if and $v.grafana.enabled (not (or $v.prometheus.enabled $v.prometheus.queryUrl)) -}}
{{- fail "grafana.enabled needs metrics to show: set prometheus.enabled=true or prometheus.queryUrl" -}}
{{- end -}}
{{- if and $v.collector.enabled (not (or $v.scheduler.enabled $v.prometheus.enabled $v.prometheus.remoteWriteUrl $v.tracing.enabled)) -}}
{{- fail "collector.enabled has nowhere to send: enable the scheduler, prometheus (or prometheus.remoteWriteUrl) or tracing" -}}
{{- end -}}
{{- if $v.tls.enabled -}}
{{- if not (or $v.tls.secretName $v.tls.certManager.enabled) -}}
{{- fail "tls.enabled needs certificates: set tls.secretName (a Secret with tls.crt, tls.key and ca.crt) or tls.certManager.enabled=true" -}}
{{- end -}}
{{- if and $v.tls.certManager.enabled (not $v.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and $v.scheduler.enabled (not $v.collector.enabled) -}}
{{- fail "tls.enabled needs collector.enabled: the scheduler's OTLP endpoint takes mutual TLS, which the Collector speaks for the services" -}}
{{- end -}}
{{- end -}}
{{- $scaled := list (dict "key" "frontend" "values" $v.frontend) -}}
{{- range $kind := list "cpu" "gpu" -}}
{{- $scaled = append $scaled (dict "key" (printf "workers.%s" $kind) "values" (index $v.workers $kind)) -}}
{{- end -}}
{{- range $s := $scaled -}}
{{- $w := $s.values -}}
{{- if and $w.enabled $w.autoscaling.enabled $w.autoscaling.keda.enabled (not (or $v.keda.prometheusUrl $v.prometheus.enabled $v.prometheus.queryUrl)) -}}
{{- fail (printf "%s.autoscaling.keda needs a Prometheus to query: set keda.prometheusUrl, prometheus.enabled=true or prometheus.queryUrl" $s.key) -}}
{{- end -}}
{{- if and $w.enabled $w.autoscaling.enabled (lt (int $w.autoscaling.maxReplicas) (int $w.autoscaling.minReplicas)) -}}
{{- fail (printf "%s.autoscaling.maxReplicas (%d) is below minReplicas (%d)" $s.key (int $w.autoscaling.maxReplicas) (int $w.autoscaling.minReplicas)) -}}
{{- end -}}
{{- if and $w.enabled $w.autoscaling.enabled (not (and $w.resources.requests $w.resources.requests.cpu)) -}}
{{- fail (printf "%s.autoscaling needs %s.resources.requests.cpu: CPU utilization is measured against the request" $s.key $s.key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
