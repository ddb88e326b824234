{{/* Data sources with fixed uids: the dashboard JSON refers to them by uid. */}}
{{- define "deeprec.grafanaProvisioning" -}}
{{- $prometheus := include "deeprec.prometheusUrl" . | default .Values.prometheus.queryUrl -}}
{{- $jaeger := and .Values.jaeger.enabled .Values.tracing.enabled -}}
datasources.yaml: |
  apiVersion: 1
  datasources:
    - name: Prometheus
      uid: prometheus
      type: prometheus
      access: proxy
      url: {{ $prometheus }}
      isDefault: true
      jsonData:
        timeInterval: 5s
    {{- if $jaeger }}
    - name: Jaeger
      uid: jaeger
      type: jaeger
      access: proxy
      url: http://{{ include "deeprec.componentName" (dict "root" . "component" "jaeger") }}:16686
    {{- end }}
dashboards.yaml: |
  apiVersion: 1
  providers:
    - name: deeprec
      folder: deeprec
      type: file
      disableDeletion: true
      allowUiUpdates: false
      options:
        path: /etc/grafana/dashboards
{{- end -}}
