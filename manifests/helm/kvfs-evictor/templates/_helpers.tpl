{{/* The objects' common name and labels. */}}
{{- define "kvfs-evictor.name" -}}
{{ .Release.Name }}-evictor
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
