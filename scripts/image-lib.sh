# shellcheck shell=bash
# Shared by scripts/build-images.sh, build-agent-image.sh and build-s3-image.sh (sourced,
# not run):
# an image root assembled from files on this machine and imported with `docker import`,
# so no base image is ever pulled.

# rootfs_busybox DIR: a static busybox in DIR/bin with every applet linked to it (sh, wget
# for health checks, mkdir...), /usr/bin and /sbin pointing there, /tmp, /etc/passwd,
# /etc/group and /etc/nsswitch.conf (host names from Docker's /etc/hosts, then its DNS).
rootfs_busybox() {
  local rootfs=$1 busybox applet
  busybox=$(bash "$(dirname "${BASH_SOURCE[0]}")/static-busybox.sh")
  mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,root,usr/local/bin,var/lib}
  chmod 1777 "$rootfs/tmp"
  cp "$busybox" "$rootfs/bin/busybox"
  for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] && continue
    ln -sf busybox "$rootfs/bin/$applet"
  done
  ln -s ../bin "$rootfs/usr/bin"
  ln -s bin "$rootfs/sbin"
  cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
  cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
  echo 'hosts: files dns' > "$rootfs/etc/nsswitch.conf"
}

# rootfs_binary BINARY DIR DEST: BINARY at DIR/DEST, without its debug info (the symbol
# table stays, for readable backtraces), with every shared library `ldd` lists at the path
# the loader looks for it, and the loader itself (printed by ldd as an absolute path with
# no `=>`). A static binary has none.
rootfs_binary() {
  local binary=$1 rootfs=$2 dest=$3 libs lib
  mkdir -p "$rootfs$(dirname "$dest")"
  cp "$binary" "$rootfs$dest"
  if command -v strip >/dev/null; then
    strip --strip-debug "$rootfs$dest"
  fi
  if libs=$(LC_ALL=C ldd "$binary" 2>/dev/null); then
    while read -r lib; do
      [[ -n $lib ]] || continue
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs" | sort -u)
  fi
}

# rootfs_import DIR IMAGE [CHANGE...]: imports DIR as IMAGE, files owned by root, each
# CHANGE a Dockerfile instruction for `docker import -c` (ENTRYPOINT, ENV, LABEL...).
rootfs_import() {
  local rootfs=$1 image=$2 change
  shift 2
  local changes=()
  for change in "$@"; do
    changes+=(-c "$change")
  done
  tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c . \
    | docker import "${changes[@]}" - "$image" >/dev/null
}

# image_label IMAGE LABEL: the label's value on a local image, empty when either is missing.
image_label() {
  docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}
