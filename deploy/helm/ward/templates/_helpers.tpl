{{/* ward.labels are the labels of every object of the release. */}}
{{- define "ward.labels" -}}
app.kubernetes.io/name: ward
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* ward.selector selects one component's pods: pass (list $ "wardd"). */}}
{{- define "ward.selector" -}}
app.kubernetes.io/name: ward
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* ward.image is ward's image reference. */}}
{{- define "ward.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* ward.envoyImage is the official Envoy image reference. */}}
{{- define "ward.envoyImage" -}}
{{ .Values.envoy.image.repository }}:{{ .Values.envoy.image.tag }}
{{- end }}

{{/* ward.secretsNamespace is the one namespace whose Secrets ward reads. */}}
{{- define "ward.secretsNamespace" -}}
{{ .Values.kubernetes.secretsNamespace.name | default .Release.Namespace }}
{{- end }}

{{/* ward.nodeConfig is the node configuration (agent.Config) as YAML. */}}
{{- define "ward.nodeConfig" -}}
{{- $dp := deepCopy .Values.config.datapath | merge (dict "enabled" true) }}
{{- if not $dp.devices }}{{ $_ := unset $dp "devices" }}{{ end }}
{{- $c := dict "mode" .Values.config.mode "datapath" $dp }}
{{- if .Values.config.policyAuditMode }}{{ $_ := set $c "policyAuditMode" true }}{{ end }}
{{- with .Values.config.dns }}{{ $_ := set $c "dns" . }}{{ end }}
{{- with .Values.config.monitor }}{{ $_ := set $c "monitor" . }}{{ end }}
{{- with .Values.config.metrics }}{{ $_ := set $c "metrics" . }}{{ end }}
{{- with .Values.config.toGroups }}{{ $_ := set $c "toGroups" . }}{{ end }}
{{- $_ := set $c "clusterName" .Values.kubernetes.clusterName }}
{{- $_ := set $c "kubernetes" (dict "secretsNamespace" (include "ward.secretsNamespace" .)) }}
{{- $c = mergeOverwrite $c (deepCopy .Values.config.extra) }}
{{- toYaml $c }}
{{- end }}

{{/* ward.scheduling places a node DaemonSet's pods: the same nodes for wardd, Envoy and the cleanup. */}}
{{- define "ward.scheduling" -}}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
