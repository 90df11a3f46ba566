{{- define "stream-app.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stream-app.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stream-app.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stream-app.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "stream-app.labels" -}}
{{ include "stream-app.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The worker config: .Values.config plus what the other values decide. */}}
{{- define "stream-app.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $kafka := deepCopy (default dict $cfg.kafka) -}}
{{- $_ := set $kafka "bootstrapServers" "${KAFKA_BOOTSTRAP_SERVERS}" -}}
{{- $security := dict "protocol" "PLAINTEXT" -}}
{{- if and .Values.kafka.sasl.enabled .Values.kafka.tls.enabled -}}
{{- $security = dict "protocol" "SASL_SSL" -}}
{{- else if .Values.kafka.sasl.enabled -}}
{{- $security = dict "protocol" "SASL_PLAINTEXT" -}}
{{- else if .Values.kafka.tls.enabled -}}
{{- $security = dict "protocol" "SSL" -}}
{{- end -}}
{{- if .Values.kafka.sasl.enabled -}}
{{- $_ := set $security "saslMechanism" .Values.kafka.sasl.mechanism -}}
{{- $_ := set $security "username" .Values.kafka.sasl.username -}}
{{- $_ := set $security "passwordEnv" "KAFKA_PASSWORD" -}}
{{- end -}}
{{- if .Values.kafka.tls.enabled -}}
{{- $_ := set $security "caFile" "/etc/stream-app/kafka-tls/ca.crt" -}}
{{- if .Values.kafka.tls.clientCertificate -}}
{{- $_ := set $security "certFile" "/etc/stream-app/kafka-tls/tls.crt" -}}
{{- $_ := set $security "keyFile" "/etc/stream-app/kafka-tls/tls.key" -}}
{{- end -}}
{{- end -}}
{{- $_ := set $kafka "security" $security -}}
{{- $_ := set $cfg "kafka" $kafka -}}
{{- $input := deepCopy (default dict $cfg.input) -}}
{{- if or (hasKey $input "schemaRegistry") (hasKey $input "avroSchemas") -}}
{{- fail "set the input schema with the chart's schemaRegistry / avroSchemas values, not under config.input" -}}
{{- end -}}
{{- with .Values.schemaRegistry -}}
{{- if .url -}}
{{- $registry := dict "url" .url "registerEventSchemas" .registerEventSchemas -}}
{{- if .basicAuth.existingSecret }}{{ $_ := set $registry "basicAuthEnv" "SCHEMA_REGISTRY_AUTH" }}{{ end -}}
{{- if .tls.existingSecret -}}
{{- $_ := set $registry "caFile" "/etc/stream-app/registry-tls/ca.crt" -}}
{{- if .tls.clientCertificate -}}
{{- $_ := set $registry "certFile" "/etc/stream-app/registry-tls/tls.crt" -}}
{{- $_ := set $registry "keyFile" "/etc/stream-app/registry-tls/tls.key" -}}
{{- end -}}
{{- end -}}
{{- $_ := set $input "schemaRegistry" $registry -}}
{{- end -}}
{{- end -}}
{{- if .Values.avroSchemas -}}
{{- $files := dict -}}
{{- range $id, $_ := .Values.avroSchemas }}{{ $_ := set $files $id (printf "/etc/stream-app/avro/%s.avsc" $id) }}{{ end -}}
{{- $_ := set $input "avroSchemas" $files -}}
{{- end -}}
{{- $_ := set $cfg "input" $input -}}
{{- $_ := set $cfg "webPort" .Values.webPort -}}
{{- $_ := set $cfg "dataDir" "/tmp/stream-app-data" -}}
{{- $_ := set $cfg "spoolDir" "/var/spool/stream-app" -}}
{{- if .Values.s3.enabled -}}
{{- $sink := dict "type" "s3" "bucket" .Values.s3.bucket "prefix" .Values.s3.prefix "sse" .Values.s3.sse "presignExpirySeconds" .Values.s3.presignExpirySeconds -}}
{{- with .Values.s3.region }}{{ $_ := set $sink "region" . }}{{ end -}}
{{- with .Values.s3.endpointUrl }}{{ $_ := set $sink "endpointUrl" . }}{{ end -}}
{{- with .Values.s3.kmsKeyId }}{{ $_ := set $sink "kmsKeyId" . }}{{ end -}}
{{- with .Values.s3.storageClass }}{{ $_ := set $sink "storageClass" . }}{{ end -}}
{{- $_ := set $cfg "sink" $sink -}}
{{- else -}}
{{- $_ := set $cfg "sink" (dict "type" "local" "localTargetDir" .Values.persistence.mountPath) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
