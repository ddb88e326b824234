{{/* rules/deeprec.rules.yml with the release's SLO written into its recording rules. */}}
{{- define "deeprec.rules" -}}
{{- $s := .Values.scheduler -}}
{{- .Files.Get "rules/deeprec.rules.yml" | replace "expr: vector(50)" (printf "expr: vector(%v)" $s.slaMs) | replace "expr: vector(0.95)" (printf "expr: vector(%v)" (divf $s.percentile 100)) -}}
{{- end -}}

{{/* Nothing to scrape: every deeprec series arrives by remote write from the Collector. */}}
{{- define "deeprec.prometheusConfig" -}}
global:
  evaluation_interval: 15s
rule_files: [/etc/prometheus/rules/deeprec.rules.yml]
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
{{- end -}}
