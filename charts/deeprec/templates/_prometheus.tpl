{{/* Nothing to scrape: every deeprec series arrives by remote write from the Collector. */}}
{{- define "deeprec.prometheusConfig" -}}
global:
  evaluation_interval: 15s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
{{- end -}}
