{{/*
Expand the name of the chart.
*/}}
{{- define "styletx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "styletx.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "styletx.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "styletx.labels" -}}
helm.sh/chart: {{ include "styletx.chart" . }}
{{ include "styletx.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "styletx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "styletx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "styletx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "styletx.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: digest wins over tag; the default tag is the appVersion, plus the CUDA suffix on GPUs.
*/}}
{{- define "styletx.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary .Values.gpu.imageTagSuffix "" .Values.gpu.enabled)) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: preStop sleep + the server's drain grace + a margin, so the kubelet never kills a
job that the server is still allowed to finish.
*/}}
{{- define "styletx.terminationGracePeriodSeconds" -}}
{{- add .Values.lifecycle.preStopSleepSeconds .Values.server.drainGraceSeconds .Values.lifecycle.terminationGraceMarginSeconds }}
{{- end }}

{{/*
Name of the headless Service that gives clients one DNS record per ready pod.
*/}}
{{- define "styletx.headlessName" -}}
{{- printf "%s-headless" (include "styletx.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the weights claim (an existing one, or the one this chart creates).
*/}}
{{- define "styletx.weightsClaimName" -}}
{{- .Values.weights.pvc.existingClaim | default (printf "%s-weights" (include "styletx.fullname" . | trunc 55 | trimSuffix "-")) }}
{{- end }}

{{/*
Whether the pod mounts a weights volume at all (the "image" source uses the copy inside the image).
*/}}
{{- define "styletx.weightsVolume" -}}
{{- if or (eq .Values.weights.source "pvc") (eq .Values.weights.source "initContainer") }}true{{- end }}
{{- end }}

{{/*
Paths of the mounted secrets, shared by the ConfigMap (server settings) and the probes.
*/}}
{{- define "styletx.tlsDir" -}}/etc/styletx/tls{{- end }}
{{- define "styletx.authDir" -}}/etc/styletx/auth{{- end }}

{{/*
One probe: native gRPC when the server speaks plaintext; with TLS an exec probe running the image's
styletx-healthcheck, because the kubelet's gRPC probe cannot do TLS. Call with (dict "root" $ "probe" $probe).
*/}}
{{- define "styletx.probe" -}}
{{- $root := .root }}
{{- if $root.Values.tls.enabled }}
{{- $dir := include "styletx.tlsDir" $root }}
exec:
  command:
    - styletx-healthcheck
    - --quiet
    - --addr
    - {{ printf "127.0.0.1:%d" (int $root.Values.server.port) | quote }}
    - --service
    - {{ $root.Values.probes.service | quote }}
    - --tls-ca
    - {{ printf "%s/ca.crt" $dir }}
    {{- if $root.Values.tls.clientAuth }}
    - --tls-cert
    - {{ printf "%s/tls.crt" $dir }}
    - --tls-key
    - {{ printf "%s/tls.key" $dir }}
    {{- end }}
    - --server-name
    - {{ $root.Values.tls.probeServerName | default (printf "%s.%s.svc" (include "styletx.fullname" $root) $root.Release.Namespace) | quote }}
{{- else }}
grpc:
  port: {{ $root.Values.server.port }}
  service: {{ $root.Values.probes.service | quote }}
{{- end }}
{{- with .probe }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Spread constraints with this release's selector filled in where the values leave it out.
*/}}
{{- define "styletx.topologySpreadConstraints" -}}
{{- $selector := include "styletx.selectorLabels" . | fromYaml }}
{{- range .Values.topologySpreadConstraints }}
{{- $c := deepCopy . }}
{{- if not $c.labelSelector }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end }}
