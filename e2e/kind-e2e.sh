#!/usr/bin/env bash
# End-to-end test of the pagedserve operator on a REAL Kubernetes cluster (kind).
#
# Not run by the project's CI: its machines have no Docker/kind and no real kube-apiserver can be
# installed there (tests/operator runs against an in-memory stand-in instead; docs/operator.md).
# Run it yourself on a machine with docker, kind and kubectl:
#
#   bash e2e/kind-e2e.sh
#   RUNTIME_IMAGE=pagedserve-runtime:dev bash e2e/kind-e2e.sh   # also serve a real model (CPU) and chat with it
#
# Environment:
#   CLUSTER        kind cluster name (default pagedserve-e2e); created and, unless KEEP=1, deleted
#   NODE_IMAGE     kind node image, e.g. kindest/node:v1.29.14 (default: kind's default)
#   NAMESPACE      namespace for the test objects (default pagedserve-e2e)
#   RUNTIME_IMAGE  a locally built runtime image to `kind load`; without it the pods cannot start, and the
#                  script checks everything up to the children (not Ready)
#   PYTHON         python with this repo's dependencies (default .venv/bin/python, else python3)
#   KEEP=1         keep the cluster and the operator log afterwards
#
# What it checks, on the real API server:
#   1. the CRD installs and is Established (structural schema, CEL rules compile within their cost budget);
#   2. every example in manifests/ passes server-side validation (schema + CEL, --dry-run=server);
#   3. bad InferenceServices are refused by the CEL rules;
#   4. the operator (run from this checkout, on the host) creates Deployment, Service, HPA, PDB and
#      Ingress with ownerReferences, and the API server accepts them (admission, defaulting, validation);
#   5. a hand-edited Deployment is restored; the scale subresource reports the real count and
#      `kubectl scale` reaches the Deployment;
#   6. an invalid spec the schema cannot catch gives Ready=False/InvalidSpec and a Warning event;
#      an image that cannot be pulled shows as Ready=False/ErrImagePull|ImagePullBackOff (from the pod);
#   7. with RUNTIME_IMAGE: the model becomes Ready (kind has no ingress controller: IngressReady says
#      NoIngressController and does not gate Ready) and answers /v1/models and a chat completion;
#      a Hub model that does not exist shows as CrashLoopBackOff with the runtime's last message;
#   8. deleting the InferenceService removes its children.
#
# The operator runs on the host, which cannot reach pod IPs: it reports ReplicasNotReady instead of
# Downloading/Loading there (in a cluster it reads each starting pod's /health).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER="${CLUSTER:-pagedserve-e2e}"
NAMESPACE="${NAMESPACE:-pagedserve-e2e}"
NODE_IMAGE="${NODE_IMAGE:-}"
RUNTIME_IMAGE="${RUNTIME_IMAGE:-}"
KEEP="${KEEP:-0}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
WORK="$(mktemp -d)"
OPERATOR_PID=""
HEALTH_PORT="${HEALTH_PORT:-18089}"

log() { echo "[kind-e2e] $*" >&2; }
fail() { log "FAIL: $*"; [ -f "$WORK/operator.log" ] && tail -50 "$WORK/operator.log" >&2; exit 1; }

cleanup() {
  if [ -n "$OPERATOR_PID" ]; then kill "$OPERATOR_PID" 2>/dev/null || true; wait "$OPERATOR_PID" 2>/dev/null || true; fi
  if [ "$KEEP" = 1 ]; then
    log "kept cluster $CLUSTER; operator log: $WORK/operator.log"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done
"$PYTHON" -c 'import kopf, kubernetes, yaml' 2>/dev/null || fail "$PYTHON lacks kopf/kubernetes/pyyaml (pip install -e .)"

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${timeout}s waiting for $what"
    sleep 2
  done
  log "ok: $what"
}

k() { kubectl --context "kind-$CLUSTER" "$@"; }

log "creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" ${NODE_IMAGE:+--image "$NODE_IMAGE"} --wait 120s
k version
k create namespace "$NAMESPACE"

# 1. CRD
k apply -f "$ROOT/crds/inferenceservices.pagedserve.io.yaml"
k wait --for=condition=Established --timeout=60s crd/inferenceservices.pagedserve.io
log "ok: CRD established"

# 2. every example passes the real server-side validation (schema + CEL)
k apply --dry-run=server -n "$NAMESPACE" -f "$ROOT/manifests/" >/dev/null || fail "an example manifest was refused"
log "ok: manifests/ accepted by --dry-run=server"

# 3. bad CRs are refused with the rule's message
expect_refused() {
  local message="$1" body="$2" out
  if out="$(printf '%s\n' "$body" | k apply --dry-run=server -n "$NAMESPACE" -f - 2>&1)"; then
    fail "accepted a bad InferenceService (expected: $message)"
  fi
  grep -qF "$message" <<<"$out" || fail "refused for another reason: $out (expected: $message)"
  log "ok: refused: $message"
}
cr() { printf 'apiVersion: pagedserve.io/v1alpha1\nkind: InferenceService\nmetadata: {name: %s}\nspec: %s\n' "$1" "$2"; }
expect_refused 'minReplicas must be <= autoscaling.maxReplicas' "$(cr bad2 '{model: {uri: default}, autoscaling: {minReplicas: 4, maxReplicas: 2}}')"
expect_refused 'cannot both be 0' "$(cr bad3 '{model: {uri: default}, rollout: {maxUnavailable: 0}}')"
expect_refused 'must equal engine.tensorParallelSize' "$(cr bad4 '{model: {uri: default}, engine: {tensorParallelSize: 4}, resources: {gpus: 2}}')"
expect_refused 'each metric type may appear once' "$(cr bad5 '{model: {uri: default}, autoscaling: {maxReplicas: 2, metrics: [{type: QueueLength, target: 1}, {type: QueueLength, target: 2}]}}')"
expect_refused 'DNS-1035' "$(cr 7b-model '{model: {uri: default}}')"
expect_refused 'spec.model.uri' "$(cr bad7 '{model: {uri: "s3://bucket/x"}}')"

# 4. the operator, from this checkout, on the host
log "starting the operator (log: $WORK/operator.log)"
KUBECONFIG="${KUBECONFIG:-$HOME/.kube/config}" PYTHONPATH="$ROOT/operator" \
  "$PYTHON" -m pagedserve_operator --namespace "$NAMESPACE" --liveness "http://127.0.0.1:$HEALTH_PORT/healthz" \
  --log-format plain --resync-seconds 30 --pod-health-timeout 1 ${RUNTIME_IMAGE:+--runtime-image "$RUNTIME_IMAGE"} \
  >"$WORK/operator.log" 2>&1 &
OPERATOR_PID=$!
wait_for "the operator's liveness endpoint" 60 curl -fsS "http://127.0.0.1:$HEALTH_PORT/healthz"

if [ -n "$RUNTIME_IMAGE" ]; then
  kind load docker-image --name "$CLUSTER" "$RUNTIME_IMAGE"
fi

# A CPU model (scenario 0) plus autoscaling, a PDB and an ingress, so every child kind is created for real.
k apply -n "$NAMESPACE" -f - <<EOF
apiVersion: pagedserve.io/v1alpha1
kind: InferenceService
metadata:
  name: smollm
spec:
  model: {uri: default, servedName: smollm}
  runtime: {imagePullPolicy: IfNotPresent}
  engine: {maxModelLen: 2048, maxNumSeqs: 8}
  resources: {gpus: 0, cpu: "1", memory: 4Gi, shmSize: 1Gi}
  autoscaling:
    minReplicas: 1
    maxReplicas: 2
    metrics: [{type: CPUUtilization, target: 80}]
  ingress: {host: smollm.e2e.test}
  probes: {startupTimeoutSeconds: 900}
EOF

owned_by_isvc() { [ "$(k get -n "$NAMESPACE" "$1" smollm -o jsonpath='{.metadata.ownerReferences[0].kind}')" = InferenceService ]; }
for kind in deployment service horizontalpodautoscaler poddisruptionbudget ingress; do
  wait_for "$kind/smollm owned by the InferenceService" 60 owned_by_isvc "$kind"
done
[ "$(k get -n "$NAMESPACE" deploy smollm -o jsonpath='{.spec.strategy.rollingUpdate.maxSurge}')" = 0 ] || fail "maxSurge is not 0"
has_status() { [ -n "$(k get -n "$NAMESPACE" isvc smollm -o jsonpath='{.status.observedGeneration}')" ]; }
wait_for "status.observedGeneration" 60 has_status
k get -n "$NAMESPACE" isvc -o wide

# 5. drift is repaired; replicas set by "the HPA" are kept
GOOD_IMAGE="$(k get -n "$NAMESPACE" deploy smollm -o jsonpath='{.spec.template.spec.containers[0].image}')"
k set image -n "$NAMESPACE" deploy/smollm runtime=busybox:tampered >/dev/null
image_restored() { [ "$(k get -n "$NAMESPACE" deploy smollm -o jsonpath='{.spec.template.spec.containers[0].image}')" = "$GOOD_IMAGE" ]; }
wait_for "the hand-edited image restored" 60 image_restored
k patch -n "$NAMESPACE" isvc smollm --type merge -p '{"spec":{"engine":{"maxNumSeqs":4}}}' >/dev/null
new_flag() { k get -n "$NAMESPACE" deploy smollm -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -q -- '--max-num-seqs=4'; }
wait_for "the CR change reaching the Deployment" 60 new_flag
# the HPA scales the InferenceService through its scale subresource; the operator passes it on
scale_replicas() { k get --raw "/apis/pagedserve.io/v1alpha1/namespaces/$NAMESPACE/inferenceservices/smollm/scale" | grep -q '"replicas":'"$1"; }
wait_for "GET .../scale reports spec.replicas 1 (schema default)" 30 scale_replicas 1
k scale -n "$NAMESPACE" isvc/smollm --replicas=2 >/dev/null
deploy_replicas() { [ "$(k get -n "$NAMESPACE" deploy smollm -o jsonpath='{.spec.replicas}')" = 2 ]; }
wait_for "kubectl scale isvc reaching the Deployment" 60 deploy_replicas
k scale -n "$NAMESPACE" isvc/smollm --replicas=1 >/dev/null

# 6. an invalid spec the schema cannot catch
k apply -n "$NAMESPACE" -f - <<EOF
apiVersion: pagedserve.io/v1alpha1
kind: InferenceService
metadata: {name: too-much-shm}
spec:
  model: {uri: default}
  resources: {gpus: 0, memory: 2Gi, shmSize: 4Gi}
EOF
invalid() { [ "$(k get -n "$NAMESPACE" isvc too-much-shm -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')" = InvalidSpec ]; }
wait_for "Ready=False/InvalidSpec on too-much-shm" 60 invalid
warned() { k get events -n "$NAMESPACE" --field-selector involvedObject.name=too-much-shm,reason=InvalidSpec -o name | grep -q .; }
wait_for "a Warning event InvalidSpec" 60 warned
k get -n "$NAMESPACE" deploy too-much-shm >/dev/null 2>&1 && fail "children were created for an invalid spec"

# pod failures reach the status from the pods, long before the progress deadline
k apply -n "$NAMESPACE" -f - <<EOF
apiVersion: pagedserve.io/v1alpha1
kind: InferenceService
metadata: {name: no-image}
spec:
  model: {uri: default}
  runtime: {image: registry.invalid/pagedserve/none:0.0.0}
  resources: {gpus: 0, cpu: 100m, memory: 1Gi, shmSize: 64Mi}
EOF
pull_failed() { k get -n "$NAMESPACE" isvc no-image -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}' | grep -Eq '^(ErrImagePull|ImagePullBackOff)$'; }
wait_for "Ready=False/ErrImagePull|ImagePullBackOff on no-image" 180 pull_failed
k delete -n "$NAMESPACE" isvc no-image --wait=false >/dev/null

# 7. a real model, when an image was given
if [ -n "$RUNTIME_IMAGE" ]; then
  k wait -n "$NAMESPACE" --for=condition=Ready --timeout=15m isvc/smollm || fail "smollm never became Ready"
  [ "$(k get -n "$NAMESPACE" isvc smollm -o jsonpath='{.status.conditions[?(@.type=="IngressReady")].reason}')" = NoIngressController ] \
    || fail "IngressReady should say NoIngressController on kind"
  k port-forward -n "$NAMESPACE" svc/smollm 18000:8000 >"$WORK/port-forward.log" 2>&1 &
  PF_PID=$!
  wait_for "port-forward" 30 curl -fsS http://127.0.0.1:18000/v1/models
  curl -fsS http://127.0.0.1:18000/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"smollm","messages":[{"role":"user","content":"Say hi"}],"max_tokens":8}' | tee "$WORK/chat.json"
  echo
  grep -q '"choices"' "$WORK/chat.json" || fail "no completion"
  kill "$PF_PID" 2>/dev/null || true
  # a Hub model that does not exist: the runtime exits with a clear last line; the status shows it
  k apply -n "$NAMESPACE" -f - <<EOF
apiVersion: pagedserve.io/v1alpha1
kind: InferenceService
metadata: {name: missing-model}
spec:
  model: {uri: "hf://pagedserve-e2e/this-model-does-not-exist"}
  runtime: {imagePullPolicy: IfNotPresent}
  resources: {gpus: 0, cpu: 500m, memory: 2Gi, shmSize: 64Mi}
EOF
  crashed() { k get -n "$NAMESPACE" isvc missing-model -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}' | grep -Eq '^(CrashLoopBackOff|ContainerFailed)$'; }
  wait_for "Ready=False/CrashLoopBackOff on missing-model" 300 crashed
  k get -n "$NAMESPACE" isvc missing-model -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}'; echo
  k delete -n "$NAMESPACE" isvc missing-model --wait=false >/dev/null
else
  log "RUNTIME_IMAGE not set: skipping Ready and the chat request (pods cannot pull the default image offline)"
fi

# 8. deletion: the garbage collector and the operator remove the children
k delete -n "$NAMESPACE" isvc smollm too-much-shm --wait=true --timeout=60s
gone() {
  for kind in deployment service horizontalpodautoscaler poddisruptionbudget ingress; do
    if k get -n "$NAMESPACE" "$kind" smollm >/dev/null 2>&1; then return 1; fi
  done
}
wait_for "every child of smollm deleted" 120 gone

log "PASSED"
