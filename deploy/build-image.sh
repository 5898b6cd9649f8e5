#!/usr/bin/env bash
# Builds the buildmesh node image (deploy/Dockerfile, FROM scratch) without pulling anything.
#
#   deploy/build-image.sh [--tag buildmesh:latest] [--binary PATH] [--rebuild]
#
# The static binary: --binary PATH, else target/x86_64-unknown-linux-gnu/release/buildmesh
# when it exists and no source file is newer (--rebuild runs cargo anyway), else it is built with
#   RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
#   cargo build --release --target x86_64-unknown-linux-gnu -p buildmesh-node
# Needs on the host: docker, busybox-static (/bin/busybox), Debian's git (/usr/bin/git).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tag=buildmesh:latest
binary=
rebuild=0
while [ $# -gt 0 ]; do
    case $1 in
        --tag) tag=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

static_target="$root/target/x86_64-unknown-linux-gnu/release/buildmesh"
if [ -z "$binary" ]; then
    binary=$static_target
    stale=
    if [ -x "$binary" ]; then
        stale=$(cd "$root" || exit 0
            find Cargo.toml Cargo.lock protocol store node -newer "$binary" \
                \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) -print -quit 2>/dev/null) || true
        [ -z "$stale" ] || say "$stale is newer than the static binary"
    fi
    if [ "$rebuild" = 1 ] || [ ! -x "$binary" ] || [ -n "$stale" ]; then
        say "building the static binary (about 8 minutes on two cores the first time)"
        t0=$(date +%s)
        (cd "$root" && RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
            cargo build --release --locked --target x86_64-unknown-linux-gnu -p buildmesh-node)
        say "static binary built in $(( $(date +%s) - t0 )) s"
    else
        say "reusing $binary ($(date -r "$binary" '+%F %T'); --rebuild to rebuild it)"
    fi
fi
[ -x "$binary" ] || die "no binary at $binary"
if ! file -L "$binary" | grep -Eq 'statically linked|static-pie linked'; then
    die "$binary is not statically linked: $(file -L "$binary")"
fi
[ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install -y busybox-static"
file -L /bin/busybox | grep -q 'statically linked' || die "/bin/busybox is not the static one (busybox-static)"
git_core=/usr/lib/git-core
[ -x "$git_core/git" ] || die "$git_core/git is missing: apt-get install -y git"

ctx=$(mktemp -d "${TMPDIR:-/tmp}/buildmesh-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
rootfs=$ctx/rootfs
mkdir -p "$rootfs"/{bin,usr/bin,usr/local/bin,etc/buildmesh,tmp,srv,"$git_core"} "$ctx/home"
chmod 1777 "$rootfs/tmp"
# The step user walks through the node's home to its workspaces (work/builds).
chmod 0755 "$ctx/home"
touch "$ctx/home/.buildmesh-home"

install -m 0755 "$binary" "$rootfs/usr/local/bin/buildmesh"

# busybox: sh and the usual tools for build steps.
install -m 0755 /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
done

# git: the main binary (builtins, upload-pack for local and ssh-less fetches) and the http(s)
# remote helper, with every link in git-core that points at one of them.
elves=("$git_core/git" "$git_core/git-remote-http")
for f in "${elves[@]}"; do
    install -m 0755 "$f" "$rootfs$f"
done
for link in "$git_core"/*; do
    [ -L "$link" ] || continue
    target=$(readlink "$link")
    case $target in
        git|git-remote-http) ln -s "$target" "$rootfs$link" ;;
    esac
done
ln -s ../lib/git-core/git "$rootfs/usr/bin/git"
if [ -d /usr/share/git-core/templates ]; then
    mkdir -p "$rootfs/usr/share/git-core"
    cp -a /usr/share/git-core/templates "$rootfs/usr/share/git-core/"
fi
# The shared libraries (and the loader) they need, under the same paths.
libs=$(for f in "${elves[@]}"; do ldd "$f"; done |
    awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]*ld-linux/{print $1}' | sort -u)
for lib in $libs; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done

# Configuration files.
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
buildmesh:x:10001:10001:buildmesh:/var/lib/buildmesh:/bin/sh
buildmesh-step:x:10002:10002:buildmesh build steps:/nonexistent:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
buildmesh:x:10001:
buildmesh-step:x:10002:
nogroup:x:65534:
EOF
cat >"$rootfs/etc/nsswitch.conf" <<'EOF'
hosts: files dns
EOF
cat >"$rootfs/etc/gitconfig" <<'EOF'
# Repositories mounted from the host belong to another uid than the node's.
[safe]
	directory = *
EOF
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
fi

cp "$here/Dockerfile" "$ctx/Dockerfile"
say "image $tag from $(du -sh "$rootfs" | cut -f1) of files"
t0=$(date +%s)
# The classic builder: no buildx plugin is needed, and nothing is pulled for FROM scratch.
old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
if ! out=$(DOCKER_BUILDKIT=0 docker build --quiet -t "$tag" "$ctx" 2>&1); then
    printf '%s\n' "$out" >&2
    die "docker build failed"
fi
new=$(docker image inspect -f '{{.Id}}' "$tag")
# The previous image of this tag, now untagged, goes (unless a container still uses it).
if [ -n "$old" ] && [ "$old" != "$new" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
say "built $tag in $(( $(date +%s) - t0 )) s"
# Smoke test: the binary runs, and sh and git work inside the image.
docker run --rm --entrypoint /bin/sh "$tag" -c 'buildmesh --version && git --version && test "$(id -u)" = 0' >&2 \
    || die "the image $tag does not run"
