{{/* Labels on every object of the release. */}}
{{- define "fleetforge.labels" -}}
app.kubernetes.io/name: fleetforge
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* What selects the controller's pods. */}}
{{- define "fleetforge.selector" -}}
app.kubernetes.io/name: fleetforge
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* What selects the fleet view's pods (never the controller's). */}}
{{- define "fleetforge.uiSelector" -}}
app.kubernetes.io/name: fleetforge-ui
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image reference: the digest when given, else the tag (default: appVersion). */}}
{{- define "fleetforge.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Whether to make a ServiceMonitor. */}}
{{- define "fleetforge.serviceMonitor" -}}
{{- $wanted := .Values.metrics.serviceMonitor.enabled -}}
{{- if eq (toString $wanted) "auto" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor" }}true{{ end -}}
{{- else if eq (toString $wanted) "true" -}}
true
{{- end -}}
{{- end -}}
