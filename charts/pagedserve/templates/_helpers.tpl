{{/* Names, labels, images. */}}
{{- define "pagedserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pagedserve.fullname" -}}
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

{{- define "pagedserve.operatorName" -}}
{{- printf "%s-operator" (include "pagedserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pagedserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object the chart itself renders. */}}
{{- define "pagedserve.labels" -}}
helm.sh/chart: {{ include "pagedserve.chart" . }}
app.kubernetes.io/part-of: pagedserve
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pagedserve.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "pagedserve.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pagedserve.operatorLabels" -}}
{{ include "pagedserve.labels" . }}
app.kubernetes.io/name: {{ include "pagedserve.name" . }}-operator
app.kubernetes.io/component: operator
{{- end }}

{{- define "pagedserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pagedserve.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. Arg: (list image root) */}}
{{- define "pagedserve.image" -}}
{{- $img := index . 0 -}}{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion ($img.tag | toString)) -}}
{{- end -}}
{{- end }}

{{/* Namespaces the operator watches (empty list: all). */}}
{{- define "pagedserve.watchesAll" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
Deep merge of two maps (dst, src) that, unlike mergeOverwrite, lets src set false, 0 and "".
Maps merge key by key; any other src value replaces dst's. Returns YAML.
*/}}
{{- define "pagedserve.merge" -}}
{{- $dst := deepCopy (index . 0 | default dict) -}}
{{- $src := index . 1 | default dict -}}
{{- range $k, $v := $src }}
{{- if and (kindIs "map" $v) (kindIs "map" (get $dst $k)) }}
{{- $_ := set $dst $k (include "pagedserve.merge" (list (get $dst $k) $v) | fromYaml) }}
{{- else }}
{{- $_ := set $dst $k $v }}
{{- end }}
{{- end }}
{{- toYaml $dst }}
{{- end }}

{{/* Copy the present, non-null keys of src into dst (mutates dst). Arg: (list src dst key...) */}}
{{- define "pagedserve.copy" -}}
{{- $src := index . 0 | default dict -}}{{- $dst := index . 1 -}}
{{- range $k := slice . 2 }}
{{- if and (hasKey $src $k) (not (kindIs "invalid" (index $src $k))) }}
{{- $_ := set $dst $k (index $src $k) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The model URI of a values entry's model block: uri, else name (HF id -> hf://id). */}}
{{- define "pagedserve.isvc.uri" -}}
{{- $m := . | default dict -}}
{{- if $m.uri -}}
{{- $m.uri -}}
{{- else if not $m.name -}}
{{- fail "inferenceServices[].model needs a name (HF id, \"default\" or a path) or a uri" -}}
{{- else if or (eq $m.name "default") (hasPrefix "/" $m.name) (contains "://" $m.name) -}}
{{- $m.name -}}
{{- else -}}
{{- printf "hf://%s" $m.name -}}
{{- end -}}
{{- end }}

{{/*
The spec of an InferenceService from one (already merged) values entry. Arg: (dict "e" entry "root" $)
Returns YAML.
*/}}
{{- define "pagedserve.isvc.spec" -}}
{{- $e := .e -}}
{{- $m := $e.model | default dict -}}
{{- $spec := dict -}}
{{- /* model */ -}}
{{- $model := dict "uri" (include "pagedserve.isvc.uri" $m) -}}
{{- include "pagedserve.copy" (list $m $model "servedName" "revision" "hfTokenSecret") -}}
{{- if and (not $model.servedName) $m.name (not (eq $m.name "default")) (not (hasPrefix "/" $m.name)) (not (contains "://" $m.name)) -}}
{{- $_ := set $model "servedName" $m.name -}}
{{- end -}}
{{- $_ := set $spec "model" $model -}}
{{- /* engine (the seed keeps the engine settings next to the model name) */ -}}
{{- $engine := dict -}}
{{- include "pagedserve.copy" (list $m $engine "maxModelLen" "gpuMemoryUtilization" "maxNumSeqs" "maxNumBatchedTokens" "blockSize" "swapSpace" "enablePrefixCaching" "dtype" "quantization" "tensorParallelSize" "trustRemoteCode" "enforceEager" "seed" "loadFormat" "maxWaitingRequests" "maxLoras" "maxLoraRank") -}}
{{- if $engine }}{{ $_ := set $spec "engine" $engine }}{{ end -}}
{{- /* runtime */ -}}
{{- $runtime := dict -}}
{{- with $e.image -}}
{{- if .repository }}{{ $_ := set $runtime "image" (include "pagedserve.image" (list . $.root)) }}{{ end -}}
{{- if .pullPolicy }}{{ $_ := set $runtime "imagePullPolicy" .pullPolicy }}{{ end -}}
{{- end -}}
{{- with $e.extraArgs }}{{ $_ := set $runtime "args" . }}{{ end -}}
{{- with $e.env }}{{ $_ := set $runtime "env" . }}{{ end -}}
{{- with $e.apiKeySecret }}{{ $_ := set $runtime "apiKeySecret" . }}{{ end -}}
{{- if $runtime }}{{ $_ := set $spec "runtime" $runtime }}{{ end -}}
{{- /* resources */ -}}
{{- $res := dict -}}
{{- include "pagedserve.copy" (list $e.resources $res "gpus" "gpuResourceName" "gpuProducts" "gpuProductLabel" "cpu" "cpuLimit" "memory" "shmSize") -}}
{{- if $res }}{{ $_ := set $spec "resources" $res }}{{ end -}}
{{- /* replicas xor autoscaling */ -}}
{{- $as := $e.autoscaling | default dict -}}
{{- if $as.enabled -}}
{{- $hpa := dict -}}
{{- include "pagedserve.copy" (list $as $hpa "minReplicas" "maxReplicas" "behavior") -}}
{{- $metrics := list -}}
{{- range $key, $type := dict "targetGPUUtilization" "GPUUtilization" "targetCPUUtilization" "CPUUtilization" "targetQueueLength" "QueueLength" "targetKVCacheUsage" "KVCacheUsage" -}}
{{- if and (hasKey $as $key) (not (kindIs "invalid" (get $as $key))) -}}
{{- $metrics = append $metrics (dict "type" $type "target" (get $as $key)) -}}
{{- end -}}
{{- end -}}
{{- $metrics = concat $metrics ($as.metrics | default list) -}}
{{- if $metrics }}{{ $_ := set $hpa "metrics" $metrics }}{{ end -}}
{{- $_ := set $spec "autoscaling" $hpa -}}
{{- else if and (hasKey $e "replicaCount") (not (kindIs "invalid" $e.replicaCount)) -}}
{{- $_ := set $spec "replicas" $e.replicaCount -}}
{{- end -}}
{{- /* PDB */ -}}
{{- $pdb := dict -}}
{{- include "pagedserve.copy" (list $e.podDisruptionBudget $pdb "enabled" "minAvailable" "maxUnavailable") -}}
{{- if $pdb }}{{ $_ := set $spec "disruptionBudget" $pdb }}{{ end -}}
{{- /* ingress + TLS */ -}}
{{- $ing := $e.ingress | default dict -}}
{{- if $ing.enabled -}}
{{- $i := dict "enabled" true -}}
{{- include "pagedserve.copy" (list $ing $i "className" "host" "path" "annotations" "timeoutSeconds") -}}
{{- $tls := $ing.tls | default dict -}}
{{- if $tls.enabled -}}
{{- if not $tls.secretName }}{{ fail (printf "inferenceServices %s: ingress.tls.enabled needs ingress.tls.secretName" $e.name) }}{{ end -}}
{{- $_ := set $i "tlsSecretName" $tls.secretName -}}
{{- end -}}
{{- $_ := set $spec "ingress" $i -}}
{{- end -}}
{{- /* blocks copied as they are */ -}}
{{- include "pagedserve.copy" (list $e $spec "adapters" "parallelism" "rollout" "service" "modelCache" "probes" "monitoring" "podAnnotations" "podLabels" "nodeSelector" "tolerations" "affinity" "priorityClassName" "imagePullSecrets" "serviceAccountName" "terminationGracePeriodSeconds") -}}
{{- toYaml $spec -}}
{{- end }}
