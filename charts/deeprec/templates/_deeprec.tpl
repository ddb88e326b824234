{{/*
What deeprec's own containers share: their environment (the DEEPREC_* settings of
src/deeprec/common/settings.py plus the standard OTEL_* variables), the model volume and the
init containers that fill it. Each env helper prints a YAML mapping; callers merge them
with fromYaml. Services are configured only by these variables, never by flags, and each
sets only what its service reads (tests/test_deploy.py holds them to the settings table).
*/}}

{{/* Read by every service (src/deeprec/common/server.py). */}}
{{- define "deeprec.env.common" -}}
DEEPREC_LOG_LEVEL: {{ .Values.logLevel | quote }}
DEEPREC_MAX_MESSAGE_MB: {{ .Values.maxMessageMB | quote }}
DEEPREC_SHUTDOWN_GRACE_S: {{ .Values.shutdownGraceSeconds | quote }}
{{- end -}}

{{/* The request limits (src/deeprec/common/limits.py): frontend, workers and shards. */}}
{{- define "deeprec.env.limits" -}}
DEEPREC_MAX_ITEMS: {{ .Values.limits.maxItems | quote }}
DEEPREC_MAX_IDS_PER_ITEM: {{ .Values.limits.maxIdsPerItem | quote }}
{{- end -}}

{{/*
Telemetry (src/deeprec/common/telemetry.py): per-signal endpoints, so each signal can be off
on its own. Metrics go to the Collector, or straight to the scheduler's OTLP endpoint when
the chart runs no Collector; traces only through the Collector.
*/}}
{{- define "deeprec.env.telemetry" -}}
{{- $metrics := "" -}}
{{- if .Values.collector.enabled -}}
{{- $metrics = include "deeprec.collectorEndpoint" . -}}
{{- else if .Values.scheduler.enabled -}}
{{- $metrics = printf "http://%s" (include "deeprec.schedulerAddress" .) -}}
{{- end -}}
{{- $traces := and .Values.collector.enabled .Values.tracing.enabled -}}
OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: {{ $metrics | quote }}
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {{ ternary (include "deeprec.collectorEndpoint" .) "" $traces | quote }}
OTEL_METRICS_EXPORTER: {{ ternary "otlp" "none" (ne $metrics "") | quote }}
OTEL_TRACES_EXPORTER: {{ ternary "otlp" "none" $traces | quote }}
{{- if $traces }}
OTEL_TRACES_SAMPLER: "parentbased_traceidratio"
OTEL_TRACES_SAMPLER_ARG: {{ .Values.tracing.samplingRatio | toString | quote }}
{{- end }}
OTEL_METRIC_EXPORT_INTERVAL: {{ .Values.collector.exportIntervalMs | quote }}
{{- end -}}

{{- define "deeprec.env.frontend" -}}
{{- $cpu := "" -}}
{{- if .Values.workers.cpu.enabled -}}
{{- $cpu = include "deeprec.workerAddress" (dict "root" . "kind" "cpu") -}}
{{- end -}}
{{- $gpu := "" -}}
{{- if .Values.workers.gpu.enabled -}}
{{- $gpu = include "deeprec.workerAddress" (dict "root" . "kind" "gpu") -}}
{{- end -}}
{{ include "deeprec.env.common" . }}
{{ include "deeprec.env.limits" . }}
{{ include "deeprec.env.telemetry" . }}
DEEPREC_HOST: "0.0.0.0"
DEEPREC_PORT: {{ .Values.frontend.port | quote }}
DEEPREC_CONNECT_TIMEOUT: {{ .Values.frontend.connectTimeoutSeconds | quote }}
DEEPREC_WORKERS: {{ $cpu | quote }}
DEEPREC_GPU_WORKERS: {{ $gpu | quote }}
DEEPREC_SCHEDULER: {{ include "deeprec.schedulerAddress" . | quote }}
DEEPREC_BATCH_SIZE: {{ .Values.frontend.batchSize | quote }}
DEEPREC_OFFLOAD_THRESHOLD: {{ .Values.frontend.offloadThreshold | quote }}
{{- if include "deeprec.frontendDiscovers" . }}
DEEPREC_DISCOVERY: "endpointslices"
{{- end }}
{{- if include "deeprec.frontendLocal" . }}
DEEPREC_LOCAL_WORKERS: {{ .Values.frontend.localWorkers | quote }}
DEEPREC_MODEL_DIR: {{ include "deeprec.frontendModelDir" . | quote }}
DEEPREC_THREADS: {{ .Values.frontend.threads | quote }}
DEEPREC_MAX_QUEUE: {{ .Values.workers.maxQueue | quote }}
{{- end }}
{{- end -}}

{{/* dict: root, kind (cpu | gpu). Sharded (shards.count > 0): the worker serves the dense
     graph and looks embeddings up on the shards' replicas, in plan order. */}}
{{- define "deeprec.env.worker" -}}
{{- $v := .root.Values -}}
{{- $w := index $v.workers .kind -}}
{{ include "deeprec.env.common" .root }}
{{ include "deeprec.env.limits" .root }}
{{ include "deeprec.env.telemetry" .root }}
DEEPREC_HOST: "0.0.0.0"
DEEPREC_PORT: {{ $v.workers.port | quote }}
DEEPREC_MODEL_DIR: {{ include "deeprec.modelDir" .root | quote }}
DEEPREC_DEVICE: {{ .kind | quote }}
DEEPREC_THREADS: {{ $w.threads | quote }}
DEEPREC_ALLOW_CPU_FALLBACK: {{ ternary "true" "false" (and (eq .kind "gpu") $w.allowCpuFallback) | quote }}
DEEPREC_MAX_QUEUE: {{ $v.workers.maxQueue | quote }}
{{- if include "deeprec.sharded" .root }}
DEEPREC_PLAN: {{ include "deeprec.planFile" .root | quote }}
DEEPREC_SHARDS: {{ include "deeprec.shardAddresses" .root | quote }}
DEEPREC_SHARD_TIMEOUT: {{ $v.shards.lookupTimeoutSeconds | quote }}
DEEPREC_CACHE_BYTES: {{ $v.shards.cacheBytes | quote }}
DEEPREC_CACHE_MODE: "adaptive"
{{- end }}
{{- end -}}

{{/* dict: root, index (the shard's index in the plan) */}}
{{- define "deeprec.env.shard" -}}
{{- $v := .root.Values -}}
{{ include "deeprec.env.common" .root }}
{{ include "deeprec.env.limits" .root }}
{{ include "deeprec.env.telemetry" .root }}
DEEPREC_HOST: "0.0.0.0"
DEEPREC_PORT: {{ $v.shards.port | quote }}
DEEPREC_MODEL_DIR: {{ include "deeprec.modelDir" .root | quote }}
DEEPREC_PLAN: {{ include "deeprec.planFile" .root | quote }}
DEEPREC_SHARD_INDEX: {{ .index | quote }}
DEEPREC_ROW_DTYPE: {{ $v.shards.rowDtype | quote }}
DEEPREC_LOOKUP_THREADS: {{ $v.shards.lookupThreads | quote }}
{{- end -}}

{{/* The scheduler receives the services' metrics and exports only its own decisions. */}}
{{- define "deeprec.env.scheduler" -}}
{{- $s := .Values.scheduler -}}
{{ include "deeprec.env.common" . }}
DEEPREC_HOST: "0.0.0.0"
DEEPREC_PORT: {{ $s.port | quote }}
DEEPREC_SLA_MS: {{ $s.slaMs | quote }}
DEEPREC_PERCENTILE: {{ $s.percentile | quote }}
DEEPREC_NO_TUNE: {{ ternary "false" "true" $s.tune | quote }}
DEEPREC_POLICY_CONFIGMAP: {{ include "deeprec.policyConfigMap" . | quote }}
{{- /* Its own decisions (deeprec.scheduler.*) go to Prometheus through the Collector;
without one there is nowhere to send them (the frontends' metrics come to it). */}}
{{- $collector := .Values.collector.enabled }}
OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: {{ ternary (include "deeprec.collectorEndpoint" .) "" $collector | quote }}
OTEL_METRICS_EXPORTER: {{ ternary "otlp" "none" $collector | quote }}
OTEL_TRACES_EXPORTER: "none"
OTEL_METRIC_EXPORT_INTERVAL: {{ .Values.collector.exportIntervalMs | quote }}
{{- end -}}

{{/* ---- the model, the plan ---------------------------------------------------------- */}}

{{/* Pods that mount a plan given in values restart when it changes (a YAML mapping). */}}
{{- define "deeprec.planChecksum" -}}
{{- if and (include "deeprec.sharded" .) .Values.shards.plan -}}
checksum/plan: {{ sha256sum .Values.shards.plan }}
{{- end -}}
{{- end -}}

{{/* Volumes of a pod that serves the model (workers, shards). */}}
{{- define "deeprec.modelVolumes" -}}
{{- $v := .Values -}}
- name: models
{{- if eq $v.model.source "volume" }}
  persistentVolumeClaim:
    claimName: {{ $v.model.volume.claimName }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ $v.model.buildSizeLimit }}
{{- end }}
{{- if include "deeprec.sharded" . }}
- name: plans
{{- if $v.shards.plan }}
  configMap:
    name: {{ include "deeprec.fullname" . }}-plan
{{- else }}
  emptyDir:
    sizeLimit: 16Mi
{{- end }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "deeprec.modelMounts" -}}
- name: models
  mountPath: /models
  readOnly: true
{{- if include "deeprec.sharded" . }}
- name: plans
  mountPath: /plans
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
Init containers that make the artifact (model.source=build) and the sharding plan (when no
plan is given in values). Both are deterministic, so every pod computes the same artifact
and the same plan id, which the shards and workers check against each other. --force: an
init container that runs again (pod sandbox restarted) rebuilds over its own leftovers.
dict: root, image, pullPolicy
*/}}
{{- define "deeprec.initContainers" -}}
{{- $v := .root.Values -}}
{{- $dir := include "deeprec.modelDir" .root -}}
{{- $list := list -}}
{{- if eq $v.model.source "build" -}}
{{- $args := list "model" "build" $v.model.name "--size" $v.model.size "--seed" $v.model.seed "--out" $dir "--force" -}}
{{- $mounts := list (dict "name" "models" "mountPath" "/models") (dict "name" "tmp" "mountPath" "/tmp") -}}
{{- /* The built tables land in the models emptyDir: request that much ephemeral storage. */ -}}
{{- $resources := deepCopy ($v.model.initResources | default dict) -}}
{{- $_ := set $resources "requests" (merge (dict "ephemeral-storage" $v.model.buildSizeLimit) ($resources.requests | default dict)) -}}
{{- $list = append $list (dict "name" "model" "image" .image "pullPolicy" .pullPolicy "args" $args "volumeMounts" $mounts "resources" $resources) -}}
{{- range $k, $extra := $v.model.extraModels -}}
{{- $out := printf "%s/%s/%s" (include "deeprec.repositoryDir" $.root) $extra.name (toString ($extra.version | default "1")) -}}
{{- $args := list "model" "build" $extra.name "--size" ($extra.size | default "small") "--seed" ($extra.seed | default 0) "--out" $out "--force" -}}
{{- $list = append $list (dict "name" (printf "model-%d" (add $k 1)) "image" $.image "pullPolicy" $.pullPolicy "args" $args "volumeMounts" $mounts "resources" $resources) -}}
{{- end -}}
{{- end -}}
{{- if and (include "deeprec.sharded" .root) (not $v.shards.plan) -}}
{{- $args := list "plan" $dir "--shards" $v.shards.count "--strategy" $v.shards.strategy "--row-dtype" $v.shards.rowDtype "--out" (include "deeprec.planFile" .root) -}}
{{- if $v.shards.memoryPerShard -}}
{{- $args = concat $args (list "--memory-per-shard" $v.shards.memoryPerShard) -}}
{{- end -}}
{{- $mounts := list (dict "name" "models" "mountPath" "/models" "readOnly" true) (dict "name" "plans" "mountPath" "/plans") (dict "name" "tmp" "mountPath" "/tmp") -}}
{{- $list = append $list (dict "name" "plan" "image" .image "pullPolicy" .pullPolicy "args" $args "volumeMounts" $mounts "resources" $v.model.initResources) -}}
{{- end -}}
{{- toYaml $list -}}
{{- end -}}
