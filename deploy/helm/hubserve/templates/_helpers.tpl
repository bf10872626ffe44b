{{/*
Names and labels. The templates use a small, common subset of Helm's template language
(include, if/else, with, range, default, quote, toYaml, nindent, printf, b64enc, toJson, trunc,
trimSuffix, contains): tests/model_runtime/k8s/test_helm.py renders the chart with a
re-implementation of exactly that subset, because helm itself cannot be installed there.
*/}}

{{- define "hubserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hubserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hubserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hubserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: service
{{- end -}}

{{- define "hubserve.labels" -}}
{{ include "hubserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "hubserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hubserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespace of the model runtimes. */}}
{{- define "hubserve.runtimeNamespace" -}}
{{- default .Release.Namespace .Values.kubernetes.namespace -}}
{{- end -}}
