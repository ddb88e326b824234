{{/*
The one place a workload is spelt out. Every component's template builds a dict and calls
"deeprec.workload"; pod and container boilerplate (labels, security contexts, probes,
scheduling) lives here only.
*/}}

{{/*
deeprec.workload: a Deployment or a StatefulSet.
  root, component, extraLabels (also in the selector), name
  kind         Deployment | StatefulSet
  replicas     omitted when nil (an HPA owns it)
  serviceName  StatefulSet only
  strategy     Deployment strategy type (default RollingUpdate)
  annotations  pod template annotations (config checksums; over .Values.podAnnotations)
  pod          dict for deeprec.podSpec
Pods also get .Values.podLabels under the chart's own labels.
*/}}
{{- define "deeprec.workload" -}}
apiVersion: apps/v1
kind: {{ .kind }}
metadata:
  {{- include "deeprec.metadata" . | nindent 2 }}
spec:
  {{- if not (kindIs "invalid" .replicas) }}
  replicas: {{ .replicas }}
  {{- end }}
  {{- if eq .kind "StatefulSet" }}
  serviceName: {{ .serviceName }}
  podManagementPolicy: Parallel
  {{- else if .strategy }}
  strategy:
    type: {{ .strategy }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "deeprec.selectorLabels" . | nindent 6 }}
      {{- with .extraLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
  template:
    metadata:
      {{- $labels := merge (fromYaml (include "deeprec.labels" .)) (.extraLabels | default dict) }}
      labels:
        {{- toYaml (merge $labels (deepCopy (.root.Values.podLabels | default dict))) | nindent 8 }}
      {{- with merge (deepCopy (.annotations | default dict)) (deepCopy (.root.Values.podAnnotations | default dict)) }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "deeprec.podSpec" (merge (dict "root" .root "component" .component "extraLabels" .extraLabels) .pod) | trim | nindent 6 }}
{{- end -}}

{{/*
deeprec.podSpec
  serviceAccountName  (default: none, and no API token mounted)
  serving             true: a frontend, worker or shard pod (.Values.serviceAccount)
  deeprec             true: a deeprec service (its main container gets .Values.extraEnv)
  podSecurityContext  (default .Values.podSecurityContext)
  initContainers      list of deeprec.container dicts
  container           the main container (deeprec.container dict)
  volumes             list
  scheduling          dict: runtimeClassName, nodeSelector, tolerations, affinity
  spread              true: spread replicas over nodes (best effort)
*/}}
{{- define "deeprec.podSpec" -}}
{{- $root := .root -}}
{{- $serving := ternary (include "deeprec.servingServiceAccount" $root) "" (eq .serving true) -}}
{{- if .serviceAccountName }}
serviceAccountName: {{ .serviceAccountName }}
automountServiceAccountToken: true
{{- else if $serving }}
serviceAccountName: {{ $serving }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
{{- else }}
automountServiceAccountToken: false
{{- end }}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with (.scheduling | default dict).runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml (.podSecurityContext | default $root.Values.podSecurityContext) | nindent 2 }}
{{- /* The preStop pause, then the servers' own drain, then a margin. */}}
terminationGracePeriodSeconds: {{ add (int $root.Values.shutdownGraceSeconds) (include "deeprec.preStopSeconds" .) 5 }}
{{- with .initContainers }}
initContainers:
  {{- range . }}
  - {{ include "deeprec.container" (merge (dict "root" $root) .) | indent 4 | trim }}
  {{- end }}
{{- end }}
{{- $extraEnv := ternary $root.Values.extraEnv list (eq .deeprec true) }}
{{- $main := merge (dict "root" $root "extraEnv" $extraEnv) .container }}
{{- $volumes := .volumes | default list }}
{{- if and (eq .deeprec true) $root.Values.tls.enabled }}
{{- /* Mutual TLS: the Secret mounted, the services told where, and probes that dial
       with the certificate (the kubelet's grpc probes cannot). */}}
{{- $tlsEnv := dict "DEEPREC_TLS_DIR" (include "deeprec.tlsDir" $root) "DEEPREC_TLS_SERVER_NAME" (include "deeprec.tlsServerName" $root) }}
{{- $_ := set $main "env" (merge $tlsEnv ($main.env | default dict)) }}
{{- $_ := set $main "volumeMounts" (append ($main.volumeMounts | default list) (dict "name" "tls" "mountPath" (include "deeprec.tlsDir" $root) "readOnly" true)) }}
{{- with $main.probe }}
{{- $_ := set $main "probe" (dict "exec" (list "python" "/opt/deeprec/healthcheck.py" (toString .grpc))) }}
{{- end }}
{{- $volumes = append $volumes (dict "name" "tls" "secret" (dict "secretName" (include "deeprec.tlsSecret" $root))) }}
{{- end }}
containers:
  - {{ include "deeprec.container" $main | indent 4 | trim }}
{{- with $volumes }}
volumes:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .scheduling }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- if .spread }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "deeprec.selectorLabels" . | nindent 8 }}
        {{- with .extraLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}
{{- end -}}

{{/*
deeprec.container
  name, image, pullPolicy, args (list), env (dict: rendered sorted by name),
  secretEnv (list of dict name, secret, key), extraEnv (list of EnvVars, after the
  rest; a name already set fails the render), ports (list of dict name, port),
  probe (dict: grpc PORT | http dict path, port), startup (true: a startup probe allows
  slow starts: model builds, artifact loads), preStop (true: pause before SIGTERM, for
  servers behind Services that scale), resources, volumeMounts,
  securityContext (default .Values.containerSecurityContext)
*/}}
{{- define "deeprec.container" -}}
name: {{ .name }}
image: {{ .image }}
imagePullPolicy: {{ .pullPolicy | default "IfNotPresent" }}
{{- with .args }}
args:
  {{- range . }}
  - {{ . | toString | quote }}
  {{- end }}
{{- end }}
{{- if or .env .secretEnv .extraEnv }}
env:
  {{- $env := .env | default dict }}
  {{- range $name := keys $env | sortAlpha }}
  - name: {{ $name }}
    value: {{ index $env $name | toString | quote }}
  {{- end }}
  {{- range .secretEnv }}
  - name: {{ .name }}
    valueFrom:
      secretKeyRef:
        name: {{ .secret }}
        key: {{ .key }}
  {{- end }}
  {{- $taken := keys $env }}
  {{- range .secretEnv }}{{ $taken = append $taken .name }}{{ end }}
  {{- range .extraEnv }}
  {{- if has .name $taken }}
  {{- fail (printf "extraEnv: %s is set by the chart (use the value that sets it)" .name) }}
  {{- end }}
  - {{ toYaml . | nindent 4 | trim }}
  {{- end }}
{{- end }}
{{- with .ports }}
ports:
  {{- range . }}
  - name: {{ .name }}
    containerPort: {{ .port }}
    protocol: TCP
  {{- end }}
{{- end }}
{{- with .probe }}
{{- $check := include "deeprec.probeCheck" . }}
{{- if $.startup }}
startupProbe:
  {{- $check | nindent 2 }}
  periodSeconds: 5
  failureThreshold: 120
{{- end }}
readinessProbe:
  {{- $check | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
livenessProbe:
  {{- $check | nindent 2 }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}
{{- if .preStop }}
{{- /* Endpoints and the clients that resolve them learn of a terminating pod a moment
       later than the kubelet signals it: keep serving that long, then SIGTERM drains. */}}
lifecycle:
  preStop:
    sleep:
      seconds: {{ include "deeprec.preStopSeconds" . }}
{{- end }}
{{- with .resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml (.securityContext | default .root.Values.containerSecurityContext) | nindent 2 }}
{{- with .volumeMounts }}
volumeMounts:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "deeprec.preStopSeconds" -}}5{{- end -}}

{{/* Every deeprec server serves grpc.health.v1: the kubelet asks it directly. */}}
{{- define "deeprec.probeCheck" -}}
{{- if .exec -}}
exec:
  command:
    {{- toYaml .exec | nindent 4 }}
{{- else if .grpc -}}
grpc:
  port: {{ .grpc }}
{{- else -}}
httpGet:
  path: {{ .http.path }}
  port: {{ .http.port }}
{{- end -}}
{{- end -}}

{{/* A ClusterIP (or headless) Service in front of a component. ports: list of dict name, port. */}}
{{- define "deeprec.service" -}}
apiVersion: v1
kind: Service
metadata:
  {{- include "deeprec.metadata" . | nindent 2 }}
  {{- with .serviceAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- if .headless }}
  clusterIP: None
  {{- else }}
  type: {{ .type | default "ClusterIP" }}
  {{- end }}
  selector:
    {{- include "deeprec.selectorLabels" . | nindent 4 }}
    {{- with .extraLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- range .ports }}
    - name: {{ .name }}
      port: {{ .port }}
      targetPort: {{ .name }}
      protocol: TCP
      {{- if .appProtocol }}
      appProtocol: {{ .appProtocol }}
      {{- end }}
    {{- end }}
{{- end -}}
