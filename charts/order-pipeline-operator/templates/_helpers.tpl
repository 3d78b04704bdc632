{{/*
The chart name, or nameOverride.
*/}}
{{- define "order-pipeline-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: <release>-<chart>, or <release> when it already contains the
chart name. Truncated to 63 characters, the limit of a label value and a Service name.
*/}}
{{- define "order-pipeline-operator.fullname" -}}
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
The helm.sh/chart label: chart name and version.
*/}}
{{- define "order-pipeline-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource of the chart.
*/}}
{{- define "order-pipeline-operator.labels" -}}
helm.sh/chart: {{ include "order-pipeline-operator.chart" . }}
{{ include "order-pipeline-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: order-pipeline
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the operator pods. Immutable in a Deployment's selector: never add to them.
*/}}
{{- define "order-pipeline-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "order-pipeline-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the operator runs as and the RBAC binds.
*/}}
{{- define "order-pipeline-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "order-pipeline-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository and tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "order-pipeline-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The Lease the replicas elect a leader with; fixed in the operator.
*/}}
{{- define "order-pipeline-operator.leaseName" -}}
order-pipeline-operator
{{- end }}

{{/*
The metrics Service: the full name with a suffix, still within a Service name's 63 characters.
*/}}
{{- define "order-pipeline-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "order-pipeline-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
What the operator does in a namespace it reconciles, and nothing more: one rule per API call the
code makes (kept in step with operator/src and asserted by operator/api/tests/chart.rs). Bound
cluster-wide by the ClusterRole, or namespace by namespace by a Role when watchNamespaces is set.
Server-side apply needs create (for a new object) and patch; no child is ever updated with PUT.
*/}}
{{- define "order-pipeline-operator.rules" -}}
# The custom resource: watched (list and watch, never a single get); only its status is written
# (read fresh before a write, then merge-patched).
- apiGroups: ["orderpipeline.dev"]
  resources: ["orderpipelines"]
  verbs: ["list", "watch"]
- apiGroups: ["orderpipeline.dev"]
  resources: ["orderpipelines/status"]
  verbs: ["get", "patch"]
# Children the controller watches (list, watch), reads by name (get: ownership before an apply,
# replica counts, generated Secrets read back) and applies. Never deleted: the garbage collector
# takes them with the pipeline.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Children that are applied but not watched: their names are checked before an apply (get).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
# Jobs (Cassandra's credentials, RabbitMQ's queue growth) carry a hash of their spec in their
# name, so they are created and never updated; the TTL controller deletes them.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create", "patch"]
# Disruption budgets are also listed and deleted: one a component no longer needs is pruned.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "create", "patch", "delete"]
# A pipeline's PodMonitor (spec.monitoring.podMonitor, when the Prometheus Operator's CRDs are
# installed): its name checked before an apply (get), applied, and listed and deleted when the
# spec no longer asks for it. Not watched. Harmless where the CRD is absent.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "list", "create", "patch", "delete"]
# kube-runtime's event Recorder writes events.k8s.io/v1 Events (patch for repeated ones).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
