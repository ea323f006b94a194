#!/usr/bin/env bash
# Build, once per machine, the binaries of the real test control plane used by tests/k8s and
# bench/k8s_move.py, and gather the CRDs they install. Idempotent: whatever is already built
# is kept; every step says what it does on stderr. The last line on stdout is the directory
# that holds the binaries (use it as KUBEBUILDER_ASSETS).
#
# Why a build and not a download: this machine reaches package registries only (the Go
# module proxy, Debian's archive), so the binaries come from Go modules and from apt.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler
#       `go install` refuses k8s.io/kubernetes (its go.mod replaces every k8s.io/<staging>
#       module with a local directory), so a throw-away wrapper module in a temporary
#       directory requires k8s.io/kubernetes v1.X.Y and replaces each staging module with its
#       published v0.X.Y, then `go build`s the commands.
#   etcd            Debian's etcd-server when apt is there (3.4.23 on bookworm), else the
#                   etcd server module built through the same wrapper technique.
#   kwok            `go install sigs.k8s.io/kwok/cmd/kwok@v0.7.0` (no replace directives).
#   kubefed-controller-manager
#                   sigs.k8s.io/kubefed v0.10.0 through a wrapper that requires
#                   github.com/modern-go/reflect2 v1.0.2 (v1.0.1 crashes on Go >= 1.18).
#   CRDs            KubeFed's chart and Karmada's chart (PropagationPolicy, OverridePolicy,
#                   ResourceBinding) from the Go module cache; minimal
#                   NSM CRDs written here (NSM's modules are not on the proxy, see below).
#
# KUBEBUILDER_ASSETS: a binary found there is used as it is and not built.
# Environment: K8S_VERSION (default 1.33.13), SERVICE_MOBILITY_CACHE (default
# ~/.cache/service-mobility). Needs Go; as root it installs etcd-server with apt.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.33.13}
KWOK_VERSION=v0.7.0
KUBEFED_VERSION=v0.10.0
KARMADA_VERSION=v1.12.0
CNI_VERSION=v1.9.1
ETCD_MODULE_VERSION=v3.5.21  # only when apt cannot provide etcd
CACHE_ROOT=${SERVICE_MOBILITY_CACHE:-$HOME/.cache/service-mobility}
CACHE=$CACHE_ROOT/k8s/v$K8S_VERSION
BIN=$CACHE/bin
CRDS=$CACHE/crds
LOG=$CACHE/build.log

say() { printf '[k8s-assets] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

mkdir -p "$BIN" "$CRDS"
command -v go >/dev/null || die "Go is not installed (needed to build the control plane)"

# Is a binary available already (in KUBEBUILDER_ASSETS, or built before)?
have() {
    local name=$1
    if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$name" ]; then
        say "$name: using $KUBEBUILDER_ASSETS/$name (KUBEBUILDER_ASSETS)"
        return 0
    fi
    if [ -x "$BIN/$name" ]; then
        say "$name: cached at $BIN/$name"
        return 0
    fi
    return 1
}

timed() {  # timed LABEL CMD...: run, log, and record how long it took
    local label=$1; shift
    local t0 t1
    t0=$(date +%s)
    say "$label: building (log: $LOG)"
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        die "$label: build failed (full log: $LOG)"
    fi
    t1=$(date +%s)
    say "$label: built in $((t1 - t0)) s"
    printf '%s %s s\n' "$label" "$((t1 - t0))" >>"$CACHE/build-times.txt"
}

MODCACHE=$(go env GOMODCACHE)
WORK=$(mktemp -d /tmp/smk8s-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# --- Kubernetes: kube-apiserver, kube-controller-manager, kube-scheduler -------------------

k8s_wrapper() {
    local dir=$WORK/k8s
    [ -f "$dir/go.mod" ] && return 0
    mkdir -p "$dir"
    say "kubernetes v$K8S_VERSION: fetching k8s.io/kubernetes's go.mod to list its staging modules"
    local gomod
    gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@v$K8S_VERSION"
    local staging
    staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$gomod" \
        | sort -u)
    [ -n "$staging" ] || die "no staging replace directives found in $gomod"
    {
        echo "module smk8s.local/wrapper"
        echo
        echo "go $(go env GOVERSION | sed 's/^go//; s/\([0-9]*\.[0-9]*\).*/\1/')"
        echo
        echo "require k8s.io/kubernetes v$K8S_VERSION"
        echo
        for m in $staging; do
            echo "replace $m => $m v0.${K8S_VERSION#1.}"
        done
    } >"$dir/go.mod"
    say "kubernetes v$K8S_VERSION: wrapper module replaces $(echo "$staging" | wc -l) staging modules with v0.${K8S_VERSION#1.}"
}

k8s_ldflags() {
    local minor=${K8S_VERSION#1.}; minor=${minor%%.*}
    printf '%s' "-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
-X k8s.io/component-base/version.gitTreeState=clean"
}

for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    have "$cmd" && continue
    k8s_wrapper
    timed "$cmd v$K8S_VERSION" bash -c "cd '$WORK/k8s' && go build -mod=mod \
        -ldflags '$(k8s_ldflags)' -o '$BIN/$cmd.tmp' k8s.io/kubernetes/cmd/$cmd \
        && mv '$BIN/$cmd.tmp' '$BIN/$cmd'"
done

# --- etcd ----------------------------------------------------------------------------------

if ! have etcd; then
    if [ ! -x /usr/bin/etcd ] && command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
        say "etcd: installing Debian's etcd-server with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >>"$LOG" 2>&1 || true
        apt-get install -y -qq --no-install-recommends etcd-server >>"$LOG" 2>&1 \
            || say "etcd: apt-get install etcd-server failed; building the Go module instead"
        # the package enables a system etcd on :2379; the tests start their own
        if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
            say "etcd: stopping the system etcd service the package started"
            systemctl disable --now etcd >>"$LOG" 2>&1 || true
        fi
    fi
    if [ -x /usr/bin/etcd ]; then
        say "etcd: linking /usr/bin/etcd ($(/usr/bin/etcd --version 2>/dev/null | head -n1))"
        ln -sf /usr/bin/etcd "$BIN/etcd"
    else
        dir=$WORK/etcd
        mkdir -p "$dir"
        cat >"$dir/go.mod" <<EOF
module smk8s.local/etcd

go 1.23

require go.etcd.io/etcd/server/v3 $ETCD_MODULE_VERSION

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_MODULE_VERSION
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_MODULE_VERSION
	go.etcd.io/etcd/client/v2 => go.etcd.io/etcd/client/v2 v2.305.${ETCD_MODULE_VERSION##*.}
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_MODULE_VERSION
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_MODULE_VERSION
	go.etcd.io/etcd/raft/v3 => go.etcd.io/etcd/raft/v3 $ETCD_MODULE_VERSION
)
EOF
        timed "etcd $ETCD_MODULE_VERSION" bash -c "cd '$dir' && go build -mod=mod \
            -o '$BIN/etcd' go.etcd.io/etcd/server/v3"
    fi
fi

# --- kwok ----------------------------------------------------------------------------------

if ! have kwok; then
    timed "kwok $KWOK_VERSION" env GOBIN="$BIN" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi

# --- KubeFed controller manager ------------------------------------------------------------

if ! have kubefed-controller-manager; then
    dir=$WORK/kubefed
    mkdir -p "$dir"
    cat >"$dir/go.mod" <<EOF
module smk8s.local/kubefed

go 1.16

require (
	sigs.k8s.io/kubefed $KUBEFED_VERSION
	github.com/modern-go/reflect2 v1.0.2
	github.com/json-iterator/go v1.1.12
)
EOF
    timed "kubefed-controller-manager $KUBEFED_VERSION" bash -c "cd '$dir' && go build -mod=mod \
        -ldflags '-s -w' -o '$BIN/kubefed-controller-manager.tmp' \
        sigs.k8s.io/kubefed/cmd/controller-manager \
        && mv '$BIN/kubefed-controller-manager.tmp' '$BIN/kubefed-controller-manager'"
fi

# --- CRDs ----------------------------------------------------------------------------------

if [ ! -f "$CRDS/kubefed/core.yaml" ] || [ ! -f "$CRDS/kubefed/types.yaml" ]; then
    say "CRDs: KubeFed $KUBEFED_VERSION chart from the Go module cache"
    (cd "$WORK" && go mod download "sigs.k8s.io/kubefed@$KUBEFED_VERSION") >>"$LOG" 2>&1
    chart=$MODCACHE/sigs.k8s.io/kubefed@$KUBEFED_VERSION/charts/kubefed
    mkdir -p "$CRDS/kubefed"
    install -m 0644 "$chart/charts/controllermanager/crds/crds.yaml" "$CRDS/kubefed/core.yaml"
    install -m 0644 "$chart/crds/crds.yaml" "$CRDS/kubefed/types.yaml"
    # the FederatedTypeConfig objects the chart installs (no templating inside them)
    install -m 0644 "$chart/templates/federatedtypeconfig.yaml" \
        "$CRDS/kubefed/federatedtypeconfigs.yaml"
fi

if [ ! -f "$CRDS/karmada/overridepolicies.yaml" ]; then
    say "CRDs: Karmada $KARMADA_VERSION chart from the Go module cache"
    (cd "$WORK" && go mod download "github.com/karmada-io/karmada@$KARMADA_VERSION") >>"$LOG" 2>&1
    bases=$MODCACHE/github.com/karmada-io/karmada@$KARMADA_VERSION/charts/karmada/_crds/bases
    mkdir -p "$CRDS/karmada"
    install -m 0644 "$bases/work/work.karmada.io_resourcebindings.yaml" \
        "$CRDS/karmada/resourcebindings.yaml"
    install -m 0644 "$bases/policy/policy.karmada.io_propagationpolicies.yaml" \
        "$CRDS/karmada/propagationpolicies.yaml"
    install -m 0644 "$bases/policy/policy.karmada.io_overridepolicies.yaml" \
        "$CRDS/karmada/overridepolicies.yaml"
fi

if [ ! -d "$CRDS/karmada/all" ]; then
    # every CRD of Karmada's chart: its controllers watch the config and autoscaling kinds
    # too, and refuse to start without them
    say "CRDs: all of Karmada $KARMADA_VERSION's chart CRDs, for its own controllers"
    (cd "$WORK" && go mod download "github.com/karmada-io/karmada@$KARMADA_VERSION") >>"$LOG" 2>&1
    bases=$MODCACHE/github.com/karmada-io/karmada@$KARMADA_VERSION/charts/karmada/_crds/bases
    mkdir -p "$CRDS/karmada/all.tmp"
    find "$bases" -name '*.yaml' -exec install -m 0644 {} "$CRDS/karmada/all.tmp/" \;
    mv "$CRDS/karmada/all.tmp" "$CRDS/karmada/all"
fi

if [ ! -f "$CRDS/nsm/crds.yaml" ]; then
    # NSM publishes its CRDs in its deployments repository, and its Go modules
    # (github.com/networkservicemesh/*) are not served by the module proxy this machine
    # reaches. These are minimal structural CRDs with NSM's real group, version, kinds and
    # names; their schemas keep unknown fields, as NSM's own CRDs do.
    say "CRDs: writing minimal NSM CRDs (networkservicemesh.io/v1)"
    mkdir -p "$CRDS/nsm"
    for pair in NetworkService:networkservices:ns NetworkServiceEndpoint:networkserviceendpoints:nse; do
        kind=${pair%%:*}; rest=${pair#*:}; plural=${rest%%:*}; short=${rest#*:}
        singular=$(echo "$kind" | tr '[:upper:]' '[:lower:]')
        cat <<EOF
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: $plural.networkservicemesh.io
spec:
  group: networkservicemesh.io
  names:
    kind: $kind
    listKind: ${kind}List
    plural: $plural
    singular: $singular
    shortNames: [$short]
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              x-kubernetes-preserve-unknown-fields: true
EOF
    done >"$CRDS/nsm/crds.yaml"
fi

# --- CNI plugins: the real nodes' primary network -------------------------------------------

CNI=$CACHE/cni
mkdir -p "$CNI"
for plugin in main/bridge ipam/host-local main/loopback; do
    name=${plugin#*/}
    [ -x "$CNI/$name" ] && continue
    timed "cni $name $CNI_VERSION" env GOBIN="$CNI" \
        go install "github.com/containernetworking/plugins/plugins/$plugin@$CNI_VERSION"
done

# --- Karmada's own controllers --------------------------------------------------------------
# A wrapper module that requires github.com/karmada-io/karmada at the exact version (the
# proxy lists none, but serves the one asked for), then `go build -mod=mod` of its commands.

for cmd in controller-manager scheduler webhook; do
    have "karmada-$cmd" && continue
    dir=$WORK/karmada
    if [ ! -f "$dir/go.mod" ]; then
        mkdir -p "$dir"
        printf 'module smk8s.local/karmada\n\ngo 1.22\n\nrequire github.com/karmada-io/karmada %s\n' \
            "$KARMADA_VERSION" >"$dir/go.mod"
    fi
    timed "karmada-$cmd $KARMADA_VERSION" bash -c "cd '$dir' && go build -mod=mod -ldflags '-s -w' \
        -o '$BIN/karmada-$cmd.tmp' github.com/karmada-io/karmada/cmd/$cmd \
        && mv '$BIN/karmada-$cmd.tmp' '$BIN/karmada-$cmd'"
done

from_assets=0
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet etcd kwok \
    kubefed-controller-manager karmada-controller-manager karmada-scheduler karmada-webhook; do
    if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$b" ]; then
        from_assets=$((from_assets + 1))
        continue
    fi
    [ -x "$BIN/$b" ] || die "$b is missing from $BIN"
done
if [ "$from_assets" -eq 10 ]; then
    say "ready: every binary from KUBEBUILDER_ASSETS, CRDs in $CRDS"
    echo "$KUBEBUILDER_ASSETS"
else
    say "ready: binaries in $BIN (KUBEBUILDER_ASSETS first where it has them), CRDs in $CRDS"
    echo "$BIN"
fi
