{{/* Names and labels shared by every object of the chart. */}}

{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-kubetune, or <release> when it already says kubetune; 63 characters at most (a DNS label). */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubetune.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "kubetune.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/* The namespaces the operator serves, or fail when the namespaced mode names none. */}}
{{- define "kubetune.watchedNamespaces" -}}
{{- if and (not .Values.watch.allNamespaces) (empty .Values.watch.namespaces) }}
{{- fail "watch.allNamespaces is false but watch.namespaces is empty: list the namespaces the operator should serve" }}
{{- end }}
{{- join "," .Values.watch.namespaces }}
{{- end }}

{{/*
Fail with a clear message when an optional monitoring object's CRD is not installed. Usage:
  include "kubetune.requireApi" (list . "monitoring.coreos.com/v1" "PodMonitor" "monitoring.podMonitor.enabled")
*/}}
{{- define "kubetune.requireApi" -}}
{{- $root := index . 0 }}
{{- $groupVersion := index . 1 }}
{{- $kind := index . 2 }}
{{- $toggle := index . 3 }}
{{- if not ($root.Capabilities.APIVersions.Has (printf "%s/%s" $groupVersion $kind)) }}
{{- fail (printf "%s=true needs the %s custom resource (%s), which this cluster does not serve: install the Prometheus Operator's CRDs first, or set %s=false. (With `helm template`, pass --api-versions %s/%s.)" $toggle $kind $groupVersion $toggle $groupVersion $kind) }}
{{- end }}
{{- end }}

{{/* --kueue from kueue.enabled: true -> on, false -> off, "auto" -> auto (Kueue's Workload API served at start). */}}
{{- define "kubetune.kueueMode" -}}
{{- $mode := toString .Values.kueue.enabled -}}
{{- if eq $mode "true" }}on{{ else if eq $mode "false" }}off{{ else }}auto{{ end -}}
{{- end }}

{{/* The platform policy ConfigMap's name (in the release namespace): the platform admission policy's parameter. */}}
{{- define "kubetune.platformPolicyName" -}}
{{- default (printf "%s-platform-policy" (include "kubetune.fullname" .)) .Values.admission.platformPolicy.name }}
{{- end }}
