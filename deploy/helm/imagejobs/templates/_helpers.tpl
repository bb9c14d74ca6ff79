{{/* Names: <release>-imagejobs unless the release name already holds the chart's. */}}
{{- define "imagejobs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imagejobs.fullname" -}}
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

{{/* A component's name: <fullname>-<component>, e.g. (dict "root" . "component" "ingress"). */}}
{{- define "imagejobs.component" -}}
{{- printf "%s-%s" (include "imagejobs.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imagejobs.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "imagejobs.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: imagejobs
{{- end }}

{{- define "imagejobs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagejobs.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "imagejobs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imagejobs.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "imagejobs.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the chart makes for values given inline (AMQP URL, JWT secret, KEDA host). */}}
{{- define "imagejobs.secretName" -}}
{{- include "imagejobs.fullname" . }}
{{- end }}

{{- define "imagejobs.rabbitmqName" -}}
{{- include "imagejobs.component" (dict "root" . "component" "rabbitmq") }}
{{- end }}

{{/*
AMQP_URL: from the cluster operator's default-user Secret (through dependent variables, so
the password never lands in the chart), or from a Secret holding the URL(s).
*/}}
{{- define "imagejobs.amqpEnv" -}}
{{- if .Values.rabbitmq.operator.enabled }}
- name: RABBITMQ_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "imagejobs.rabbitmqName" . }}-default-user
      key: username
- name: RABBITMQ_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "imagejobs.rabbitmqName" . }}-default-user
      key: password
- name: AMQP_URL
  value: {{ printf "amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@%s:5672/%%2f" (include "imagejobs.rabbitmqName" .) | quote }}
{{- else }}
{{- if not (or .Values.rabbitmq.url .Values.rabbitmq.existingSecret) }}
{{- fail "rabbitmq: set rabbitmq.url or rabbitmq.existingSecret (an existing broker), or rabbitmq.operator.enabled" }}
{{- end }}
- name: AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "imagejobs.secretName" .) .Values.rabbitmq.existingSecret }}
      key: {{ ternary .Values.rabbitmq.existingSecretKey "AMQP_URL" (ne .Values.rabbitmq.existingSecret "") }}
{{- end }}
- name: AMQP_PREFIX
  value: {{ .Values.amqp.prefix | quote }}
- name: JOB_LANES
  value: {{ .Values.amqp.jobLanes | quote }}
- name: RETRY_DELAYS
  value: {{ .Values.amqp.retryDelays | quote }}
- name: QUEUE_MAX_LENGTH
  value: {{ .Values.amqp.queueMaxLength | int64 | quote }}
- name: QUEUE_DELIVERY_LIMIT
  value: {{ .Values.amqp.queueDeliveryLimit | quote }}
- name: EVENTS_MAX_AGE
  value: {{ .Values.amqp.eventsMaxAge | quote }}
- name: EVENTS_MAX_BYTES
  value: {{ .Values.amqp.eventsMaxBytes | quote }}
{{- if .Values.amqp.caSecret }}
- name: AMQP_CA_FILE
  value: /etc/imagejobs/amqp-ca/ca.crt
{{- end }}
{{- end }}

{{/* The worker and blob services: the values, else this release's stubs. */}}
{{- define "imagejobs.workerUrl" -}}
{{- if .Values.services.workerUrl }}{{ .Values.services.workerUrl }}
{{- else if .Values.stubs.enabled }}{{ printf "http://%s:%v/api/v1" (include "imagejobs.component" (dict "root" . "component" "stubs")) .Values.stubs.workerPort }}
{{- else }}{{ fail "services.workerUrl: set it, or stubs.enabled for a demo" }}
{{- end }}
{{- end }}

{{- define "imagejobs.blobUrl" -}}
{{- if .Values.services.blobUrl }}{{ .Values.services.blobUrl }}
{{- else if .Values.stubs.enabled }}{{ printf "http://%s:%v/api/v1" (include "imagejobs.component" (dict "root" . "component" "stubs")) .Values.stubs.blobPort }}
{{- else }}{{ fail "services.blobUrl: set it, or stubs.enabled for a demo" }}
{{- end }}
{{- end }}

{{- define "imagejobs.servicesCaEnv" -}}
{{- if .Values.services.caSecret }}
- name: SERVICE_CA_FILE
  value: /etc/imagejobs/service-ca/ca.crt
{{- end }}
{{- end }}

{{/* Volumes every process may need: a writable /tmp and the CA bundles it trusts. */}}
{{- define "imagejobs.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.amqp.caSecret }}
- name: amqp-ca
  secret:
    secretName: {{ .Values.amqp.caSecret }}
{{- end }}
{{- if .Values.services.caSecret }}
- name: service-ca
  secret:
    secretName: {{ .Values.services.caSecret }}
{{- end }}
{{- end }}

{{- define "imagejobs.commonMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.amqp.caSecret }}
- name: amqp-ca
  mountPath: /etc/imagejobs/amqp-ca
  readOnly: true
{{- end }}
{{- if .Values.services.caSecret }}
- name: service-ca
  mountPath: /etc/imagejobs/service-ca
  readOnly: true
{{- end }}
{{- end }}

{{/* Spread a component's pods over nodes and zones, preferring but not requiring it. */}}
{{- define "imagejobs.topologySpread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "imagejobs.selectorLabels" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "imagejobs.selectorLabels" . | nindent 8 }}
{{- end }}

{{/* The scheme the ingress serves. */}}
{{- define "imagejobs.ingressScheme" -}}
{{- ternary "HTTPS" "HTTP" (ne .Values.ingress.tls.secretName "") }}
{{- end }}

{{/* NetworkPolicy egress rules (networkpolicy.yaml). */}}
{{- define "imagejobs.netpol.rabbitmq" -}}
{{- if .Values.rabbitmq.operator.enabled }}
- to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: {{ include "imagejobs.rabbitmqName" . }}
  ports:
    - {port: 5672, protocol: TCP}
    - {port: 5671, protocol: TCP}
{{- else if .Values.networkPolicy.rabbitmqTo }}
- to:
    {{- toYaml .Values.networkPolicy.rabbitmqTo | nindent 4 }}
  ports:
    {{- range .Values.networkPolicy.rabbitmqPorts }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- end }}
{{- define "imagejobs.netpol.services" -}}
{{- if .Values.stubs.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "imagejobs.selectorLabels" (dict "root" . "component" "stubs") | nindent 10 }}
  ports:
    - {port: {{ .Values.stubs.workerPort }}, protocol: TCP}
    - {port: {{ .Values.stubs.blobPort }}, protocol: TCP}
{{- end }}
{{- with .Values.networkPolicy.servicesTo }}
- to:
    {{- toYaml . | nindent 4 }}
  ports:
    {{- range $.Values.networkPolicy.servicesPorts }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- end }}
{{- define "imagejobs.netpol.dns" -}}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}
