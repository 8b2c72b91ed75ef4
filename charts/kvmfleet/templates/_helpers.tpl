{{/* Names, labels and the RBAC plan shared by every template. */}}

{{- define "kvmfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-kvmfleet, or <release> when it already says kvmfleet; at most 63 characters. */}}
{{- define "kvmfleet.fullname" -}}
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

{{- define "kvmfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvmfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvmfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvmfleet.labels" -}}
helm.sh/chart: {{ include "kvmfleet.chart" . }}
{{ include "kvmfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvmfleet
{{- end }}

{{- define "kvmfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvmfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* <repository>@<digest> when image.digest is set, else <repository>:<tag or appVersion>. */}}
{{- define "kvmfleet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The metrics Service's name: Prometheus' `job` label when scraped through the ServiceMonitor. */}}
{{- define "kvmfleet.metricsServiceName" -}}
{{- printf "%s-metrics" (include "kvmfleet.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
The namespace where Kopf posts the Events of cluster-scoped objects (KvmHosts). Kopf uses
its login's default namespace, and the official-client login it uses (in a pod too) has
none, so these Events go to "default".
*/}}
{{- define "kvmfleet.clusterEventsNamespace" -}}
default
{{- end }}

{{/*
The namespaces that get a Role when watchNamespaces is set, as YAML:
  <namespace>: {watched: bool, events: bool, sshKeys: bool}
watched: VirtualNodes/VmMasters live here (full namespaced rules, events and Secrets included).
events:  Events of cluster-scoped KvmHosts land here (kvmfleet.clusterEventsNamespace).
sshKeys: KvmHosts' SSH key Secrets may live here (get only): the release namespace and
         sshKeySecretNamespaces.
*/}}
{{- define "kvmfleet.namespacedRbacPlan" -}}
{{- $plan := dict }}
{{- range .Values.watchNamespaces }}
{{- $_ := set $plan . (dict "watched" true "events" true "sshKeys" true) }}
{{- end }}
{{- $eventsNs := include "kvmfleet.clusterEventsNamespace" . }}
{{- $entry := get $plan $eventsNs | default (dict "watched" false "sshKeys" false) }}
{{- $_ := set $plan $eventsNs (merge (dict "events" true) $entry) }}
{{- $keyNamespaces := concat (list .Release.Namespace) .Values.sshKeySecretNamespaces }}
{{- range $keyNamespaces }}
{{- $entry := get $plan . | default (dict "watched" false "events" false) }}
{{- $_ := set $plan . (merge (dict "sshKeys" true) $entry) }}
{{- end }}
{{- toYaml $plan }}
{{- end }}
