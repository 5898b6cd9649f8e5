#!/usr/bin/env bash
# Writes everything the compose mesh (deploy/compose.yaml) needs into a directory:
#
#   deploy/gen-mesh.sh [--buildmesh BIN] [--repo URL] [--notifier auto|yes|no] [--name NAME] DIR
#
#   DIR/maintainer.key          the maintainer's key (threshold 1); keep it off the nodes
#   DIR/genesis.bm              the mesh's genesis, signed
#   DIR/nodeN/                  one directory per node, mounted at /etc/buildmesh:
#       node.key node.adm genesis.bm node.toml
#   DIR/builders.toml           builders for the test repository at URL (default /srv/repo)
#   DIR/builders.bm             the same, signed: `buildmesh publish --node 127.0.0.1:7711 DIR/builders.bm`
#   DIR/mesh.env                MAINTAINER_ID, NODEn_ID, NODEn_ROLES, NODEn_LABELS, MESH_REPO (sh syntax)
#
# The mesh: node1-3 are workers (os=linux arch=x86_64; os=linux arch=aarch64;
# os=freebsd arch=x86_64), node4 announces, node2, node4 and node5 take part in the notifier
# election and mail through the `mailsink` service. Every node dials every other by its compose
# service name.
#
# --notifier auto (the default) writes the [notifier] sections only when the binary knows the
# `smtp-sink` command (a node refuses unknown configuration sections).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bm=${BUILDMESH:-}
repo=/srv/repo
notifier=auto
name=buildmesh-compose
while [ $# -gt 1 ]; do
    case $1 in
        --buildmesh) bm=$2; shift 2 ;;
        --repo) repo=$2; shift 2 ;;
        --notifier) notifier=$2; shift 2 ;;
        --name) name=$2; shift 2 ;;
        *) break ;;
    esac
done
case ${1:-} in
    ''|-h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2 ;;
esac
dir=$1

if [ -z "$bm" ]; then
    for c in "$here/../target/x86_64-unknown-linux-gnu/release/buildmesh" \
             "$here/../target/release/buildmesh" "$(command -v buildmesh || true)"; do
        if [ -n "$c" ] && [ -x "$c" ]; then bm=$c; break; fi
    done
fi
if [ -z "$bm" ] || [ ! -x "$bm" ]; then
    echo "gen-mesh.sh: no buildmesh binary (--buildmesh BIN)" >&2
    exit 1
fi
if [ "$notifier" = auto ]; then
    if "$bm" smtp-sink --help >/dev/null 2>&1; then notifier=yes; else notifier=no; fi
fi
if [ -e "$dir/genesis.bm" ]; then
    echo "gen-mesh.sh: $dir already holds a mesh" >&2
    exit 1
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# node: service name, roles, labels (space separated).
nodes=(
    "node1|worker|os=linux arch=x86_64"
    "node2|worker notifier|os=linux arch=aarch64"
    "node3|worker|os=freebsd arch=x86_64"
    "node4|announcer notifier|"
    "node5|notifier|"
)

# Runs a command, showing what it said only when it fails.
quiet() {
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" >&2
        return 1
    fi
}

maint=$("$bm" keygen --out "$dir/maintainer.key")
quiet "$bm" genesis --name "$name" --maintainer "$maint" --threshold 1 --out "$dir/genesis.bm"
quiet "$bm" sign --key "$dir/maintainer.key" "$dir/genesis.bm"

env_file=$dir/mesh.env
{
    echo "# written by deploy/gen-mesh.sh"
    echo "MAINTAINER_ID=$maint"
    echo "MESH_REPO='$repo'"
    echo "NOTIFIER=$notifier"
} >"$env_file"

declare -A ids
for spec in "${nodes[@]}"; do
    IFS='|' read -r svc roles labels <<<"$spec"
    mkdir -p "$dir/$svc"
    ids[$svc]=$("$bm" keygen --out "$dir/$svc/node.key")
done

for spec in "${nodes[@]}"; do
    IFS='|' read -r svc roles labels <<<"$spec"
    nd=$dir/$svc
    args=()
    for r in $roles; do args+=(--role "$r"); done
    for l in $labels; do args+=(--label "$l"); done
    quiet "$bm" admit --genesis "$dir/genesis.bm" --key "$dir/maintainer.key" \
        --node "${ids[$svc]}" --name "$svc" --owner "$svc-owner@example.org" \
        "${args[@]}" --out "$nd/node.adm"
    cp "$dir/genesis.bm" "$nd/genesis.bm"
    upper=$(tr '[:lower:]' '[:upper:]' <<<"$svc")
    {
        echo "${upper}_ID=${ids[$svc]}"
        echo "${upper}_ROLES='$roles'"
        echo "${upper}_LABELS='$labels'"
    } >>"$env_file"

    boot=()
    for other in "${nodes[@]}"; do
        o=${other%%|*}
        [ "$o" = "$svc" ] && continue
        boot+=("\"/dns4/$o/tcp/7701/p2p/${ids[$o]}\"")
    done
    {
        echo "# $svc of the compose mesh (deploy/gen-mesh.sh); mounted at /etc/buildmesh."
        echo "# roles: $roles; labels: ${labels:-none}"
        echo 'key = "node.key"'
        echo 'genesis = "genesis.bm"'
        echo 'admission = "node.adm"'
        echo 'data_dir = "/var/lib/buildmesh/data"'
        echo 'listen = ["/ip4/0.0.0.0/tcp/7701", "/ip4/0.0.0.0/udp/7701/quic-v1"]'
        printf -v joined '%s, ' "${boot[@]}"
        echo "bootstrap = [${joined%, }]"
        echo 'api = "0.0.0.0:7700"'
        echo
        echo '[mesh]'
        echo 'heartbeat_interval = "1s"'
        echo 'liveness_window = "3s"'
        echo 'sync_interval = "2s"'
        echo 'door_timeout = "5s"'
        if [[ " $roles " == *" worker "* ]]; then
            echo
            echo '[worker]'
            echo 'max_builds = 1'
            echo 'work_dir = "/var/lib/buildmesh/work"'
            echo 'lease = "3s"'
            echo 'claim_step = "500ms"'
            echo '# Build steps run as this user, which cannot read the key or the store.'
            echo 'step_user = "buildmesh-step"'
        fi
        if [[ " $roles " == *" announcer "* ]]; then
            echo
            echo '[announcer]'
            echo 'poll_interval = "5s"'
        fi
        if [[ " $roles " == *" notifier "* ]] && [ "$notifier" = yes ]; then
            echo
            echo '[notifier]'
            echo 'smtp = "mailsink:2525"'
            echo 'from = "buildmesh@example.org"'
            echo 'to = ["buildbot-status@example.org"]'
            echo 'mode = "problem"'
        fi
    } >"$nd/node.toml"
    # The node keeps its key and configuration to itself (it refuses to start otherwise when
    # steps run as another user).
    chmod 0600 "$nd/node.toml" "$nd/node.key"
done

# Builders for the test repository: each needs a checkout with an executable `ci.sh` at the
# top; every builder has at least two eligible workers, so a lost worker costs no platform.
cat >"$dir/builders.toml" <<EOF
# Builders of the compose mesh's test repository (deploy/gen-mesh.sh).
version = 1

[[builder]]
name = "linux"
repo = "$repo"
branches = ["main"]
tags = ["stable"]
requires = { os = "linux" }
[[builder.step]]
name = "test"
run = "sh ci.sh"
timeout = "2m"

[[builder]]
name = "x86_64"
repo = "$repo"
branches = ["main"]
tags = ["stable"]
requires = { arch = "x86_64" }
[[builder.step]]
name = "test"
run = "sh ci.sh"
timeout = "2m"

[[builder]]
name = "any"
repo = "$repo"
branches = ["main"]
tags = ["stable"]
[[builder.step]]
name = "test"
run = "sh ci.sh"
timeout = "2m"
EOF
quiet "$bm" config check "$dir/builders.toml"
quiet "$bm" config sign --genesis "$dir/genesis.bm" --key "$dir/maintainer.key" \
    "$dir/builders.toml" --out "$dir/builders.bm"

echo "$dir"
