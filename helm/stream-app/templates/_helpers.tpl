{{- define "stream-app.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stream-app.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "stream-app.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stream-app.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Kubernetes' recommended labels. */}}
{{- define "stream-app.labels" -}}
{{ include "stream-app.selectorLabels" . }}
app.kubernetes.io/version: {{ include "stream-app.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: {{ .Values.partOf }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "stream-app.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "stream-app.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "stream-app.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A local sink writes to a volume per replica (a StatefulSet); with S3 the pods keep nothing. */}}
{{- define "stream-app.stateful" -}}
{{- if and .Values.persistence.enabled (not .Values.s3.enabled) }}true{{ end -}}
{{- end -}}

{{- define "stream-app.oauth" -}}
{{- if and .Values.kafka.sasl.enabled (eq .Values.kafka.sasl.mechanism "OAUTHBEARER") }}true{{ end -}}
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
{{- if include "stream-app.oauth" . -}}
{{- $_ := set $security "saslMechanism" "OAUTHBEARER" -}}
{{- $o := .Values.kafka.sasl.oauth -}}
{{- $oauth := dict "method" $o.method -}}
{{- if eq $o.method "oidc" -}}
{{- $_ := set $oauth "tokenEndpointUrl" $o.tokenEndpointUrl -}}
{{- $_ := set $oauth "clientId" $o.clientId -}}
{{- $_ := set $oauth "clientSecretEnv" "KAFKA_OAUTH_CLIENT_SECRET" -}}
{{- with $o.scope }}{{ $_ := set $oauth "scope" . }}{{ end -}}
{{- else -}}
{{- with $o.region }}{{ $_ := set $oauth "region" . }}{{ end -}}
{{- end -}}
{{- $_ := set $security "oauth" $oauth -}}
{{- else if .Values.kafka.sasl.enabled -}}
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
{{- if .Values.delivery.sftp -}}
{{- if and (not .Values.s3.enabled) (gt (int .Values.replicaCount) 1) -}}
{{- fail "delivery.sftp with more than one replica needs s3.enabled: a replica delivers the files of the partitions it owns, and with a local sink another replica's volume may hold them" -}}
{{- end -}}
{{- $destinations := list -}}
{{- range .Values.delivery.sftp -}}
{{- if not .existingSecret }}{{ fail (printf "delivery.sftp[%s]: existingSecret (the private key and known_hosts) is required" .name) }}{{ end -}}
{{- $dir := printf "/etc/stream-app/sftp/%s" .name -}}
{{- $d := omit . "existingSecret" "privateKeyKey" "knownHostsKey" -}}
{{- $_ := set $d "privateKeyFile" (printf "%s/%s" $dir (.privateKeyKey | default "id_ed25519")) -}}
{{- $_ := set $d "knownHostsFile" (printf "%s/%s" $dir (.knownHostsKey | default "known_hosts")) -}}
{{- $destinations = append $destinations $d -}}
{{- end -}}
{{- $_ := set $cfg "delivery" (dict "sftp" $destinations) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
