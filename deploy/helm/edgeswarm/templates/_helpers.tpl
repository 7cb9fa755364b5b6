{{/* Labels of every object. */}}
{{- define "edgeswarm.labels" -}}
app.kubernetes.io/name: edgeswarm
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "edgeswarm.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "edgeswarm.swarmKeySecret" -}}
{{- if .Values.swarmKey.existingSecret -}}
{{ .Values.swarmKey.existingSecret }}
{{- else -}}
{{ .Release.Name }}-swarm-key
{{- end -}}
{{- end }}

{{/* Init container: containerd's hosts.toml for each mirrored registry. */}}
{{- define "edgeswarm.initContainers" -}}
- name: containerd-hosts
  image: {{ include "edgeswarm.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/bin/sh", "/etc/edgeswarm/scripts/write-hosts-toml.sh"]
  env:
    - name: MIRRORED_REGISTRIES
      value: {{ include "edgeswarm.mirrored" . | quote }}
    - name: MIRROR_ADDRESS
      value: {{ .Values.mirrorAddress | quote }}
  volumeMounts:
    - name: containerd-certs
      mountPath: /host/certs.d
    - name: config
      mountPath: /etc/edgeswarm/scripts
{{- end }}

{{- define "edgeswarm.mirrored" -}}
{{- range $i, $r := .Values.mirroredRegistries }}{{ if $i }},{{ end }}{{ $r }}{{ end -}}
{{- end }}

{{/* Environment shared by both roles. */}}
{{- define "edgeswarm.env" -}}
- name: EDGESWARM_DATA_DIR
  value: {{ .Values.dataDir | quote }}
# Read by the registry mirror (--mirror); binaries without it ignore it.
- name: EDGESWARM_MIRROR
  value: {{ .Values.mirrorAddress | quote }}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
# Releases can select nodes by name: --select node=NAME.
- name: EDGESWARM_LABEL
  value: node=$(NODE_NAME)
{{- end }}

{{- define "edgeswarm.probes" -}}
readinessProbe:
  httpGet:
    host: 127.0.0.1
    port: {{ .Values.apiPort }}
    path: /v1/ready
  periodSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet:
    host: 127.0.0.1
    port: {{ .Values.apiPort }}
    path: /v1/health
  initialDelaySeconds: 10
  periodSeconds: 10
  failureThreshold: 6
{{- end }}

{{- define "edgeswarm.swarmKeyOn" -}}
{{- if or .Values.swarmKey.existingSecret .Values.swarmKey.value }}true{{ end -}}
{{- end }}

{{- define "edgeswarm.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.dataDir }}
- name: config
  mountPath: /etc/edgeswarm/config
  readOnly: true
{{- if include "edgeswarm.swarmKeyOn" . }}
- name: swarm-key
  mountPath: /etc/edgeswarm/swarm
  readOnly: true
{{- end }}
{{- if .Values.trustedKeys }}
- name: trusted-keys
  mountPath: /etc/edgeswarm/trust
  readOnly: true
{{- end }}
{{- end }}

{{- define "edgeswarm.volumes" -}}
- name: data
  hostPath:
    path: {{ .Values.dataDir }}
    type: DirectoryOrCreate
- name: containerd-certs
  hostPath:
    path: {{ .Values.containerdCertsDir }}
    type: DirectoryOrCreate
- name: config
  configMap:
    name: {{ .Release.Name }}-config
{{- if include "edgeswarm.swarmKeyOn" . }}
- name: swarm-key
  secret:
    secretName: {{ include "edgeswarm.swarmKeySecret" . }}
    defaultMode: 0400
{{- end }}
{{- if .Values.trustedKeys }}
- name: trusted-keys
  configMap:
    name: {{ .Release.Name }}-trusted-keys
{{- end }}
{{- end }}
