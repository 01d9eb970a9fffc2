#!/usr/bin/env bash
# gitignore.sh SRC: what a build in the tree writes is ignored by git, so
# that `git status` after one shows the admin's changes and nothing else:
# the CMake build directories of the README and what dpkg-buildpackage run
# in the tree writes (dh's build directory obj-TRIPLET, each binary
# package's staging directory and debhelper files under debian/, named
# from debian/control's packages so that a new package is checked too).
set -euo pipefail
SRC=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
# A tree without git (a source package) has no .gitignore to check.
git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1 || { echo "skip: $SRC is not a git tree"; exit 77; }
pkgs=$(sed -n 's/^Package: *//p' "$SRC/debian/control")
[ "$(wc -w <<<"$pkgs")" -ge 3 ] || fail "debian/control names packages '$pkgs' (a pattern is stale)"
triplet=$(dpkg-architecture -qDEB_HOST_GNU_TYPE 2>/dev/null || echo x86_64-linux-gnu)
paths="build/x build-san/x obj-$triplet/x debian/.debhelper/x debian/debhelper-build-stamp debian/files debian/tmp/x"
for p in $pkgs; do
  paths+=" debian/$p/x debian/$p.substvars debian/$p.debhelper.log debian/$p.postinst.debhelper debian/$p.postrm.debhelper"
done
left=
for p in $paths; do
  git -C "$SRC" check-ignore -q --no-index "$p" || left+="$p "
done
[ -z "$left" ] || fail ".gitignore does not ignore what a build in the tree writes: $left"
echo "ok: .gitignore ignores the build directories and dpkg-buildpackage's files ($(wc -w <<<"$paths") paths)"
