{{/* The objects' common name: fullnameOverride, else the release name when it already says "kvfs-evictor"
(release kvfs-evictor gives kvfs-evictor, not kvfs-evictor-evictor), else <release>-evictor (release kvfs gives
kvfs-evictor, the job the shipped alert rules select). */}}
{{- define "kvfs-evictor.name" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "kvfs-evictor" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-evictor" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- define "kvfs-evictor.selector" -}}
app.kubernetes.io/name: kvfs-evictor
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvfs-evictor.labels" -}}
{{ include "kvfs-evictor.selector" . }}
app.kubernetes.io/component: evictor
app.kubernetes.io/part-of: kvfs
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "kvfs-evictor.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end }}

{{- define "kvfs-evictor.postgres" -}}
{{- if eq .Values.catalog.type "postgresql" -}}true{{- else if eq .Values.catalog.type "sqlite" -}}{{- else -}}{{ required "catalog.type must be sqlite or postgresql" "" }}{{- end -}}
{{- end }}

{{/* How many evictor pods run: SQLite always one. */}}
{{- define "kvfs-evictor.replicas" -}}
{{- if include "kvfs-evictor.postgres" . -}}{{ .Values.replicas }}{{- else -}}1{{- end -}}
{{- end }}

{{/* The evictor's config file: the chart's own keys (root, catalog, metrics_port) cannot be given twice. */}}
{{- define "kvfs-evictor.settings" -}}
{{- range $key := list "root" "catalog" "metrics_port" "config" }}
{{- if hasKey $.Values.settings $key }}
{{- fail (printf "settings.%s is set by the chart: use %s instead" $key (get (dict "root" "mountPath" "catalog" "catalog.type" "metrics_port" "metricsPort" "config" "settings") $key)) }}
{{- end }}
{{- end }}
{{- $own := dict "root" .Values.mountPath "metrics_port" (int .Values.metricsPort) }}
{{- if not (include "kvfs-evictor.postgres" .) }}
{{- $_ := set $own "catalog" "sqlite:////var/lib/kvfs/catalog.db" }}
{{- end }}
{{- toYaml (merge $own (deepCopy .Values.settings)) }}
{{- end }}

{{/* The job label Prometheus gives the evictor's series: the Service name under the Prometheus operator. */}}
{{- define "kvfs-evictor.job" -}}
{{- .Values.prometheusRule.evictorJob | default (include "kvfs-evictor.name" .) -}}
{{- end }}
