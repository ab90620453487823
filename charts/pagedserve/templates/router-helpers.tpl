{{/* Names and labels of the router (the gateway, docs/router.md); renders no object. */}}
{{- define "pagedserve.routerName" -}}
{{- printf "%s-router" (include "pagedserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pagedserve.routerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "pagedserve.name" . }}-router
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pagedserve.routerLabels" -}}
{{ include "pagedserve.labels" . }}
app.kubernetes.io/name: {{ include "pagedserve.name" . }}-router
app.kubernetes.io/component: router
{{- end }}

{{- define "pagedserve.routerServiceAccountName" -}}
{{- if .Values.router.serviceAccount.create }}
{{- default (include "pagedserve.routerName" .) .Values.router.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.router.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pagedserve.routerNamespace" -}}
{{- default .Release.Namespace .Values.router.namespace }}
{{- end }}
