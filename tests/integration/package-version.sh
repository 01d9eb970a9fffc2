#!/usr/bin/env bash
# package-version.sh SRC BUILD: one version everywhere, and one that
# upgrades. CMakeLists.txt's project VERSION is the release;
# debian/changelog's top entry names it; scripts/version gives this
# tree's version, which `groupsrv --version`, `exploder --version`,
# `groupmail --version` and the man pages' footers print (the packages
# carry it too: package_deb_build). Then, in a git repository of its own,
# the versions scripts/version gives as commits and tags come order the
# way dpkg must see them for a newer build to upgrade an older one, and
# another user's checkout, a worktree and a detached HEAD have theirs
# (docs/operations.md, "Versions").
set -euo pipefail
SRC=$1 BUILD=$2
W=$(mktemp -d "${GS_TEST_WORK:-/tmp}/package-version.XXXXXX")
trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

release=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$BUILD/CMakeCache.txt")
[ -n "$release" ] || fail "no CMAKE_PROJECT_VERSION in $BUILD/CMakeCache.txt"
changelog=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)
[ "$changelog" = "$release" ] || fail "debian/changelog's top entry is $changelog, CMakeLists.txt says $release"
version=$("$SRC/scripts/version" "$SRC")
[[ "$version" == "$release" || "$version" == "$release+git"* ]] || fail "scripts/version: $version, release $release"
for p in groupsrv exploder groupmail; do
  out=$("$BUILD/bin/$p" --version) || fail "$p --version: exit $?"
  [ "$out" = "$p $version" ] || fail "$p --version: '$out', want '$p $version'"
  # .TH title section date source manual: the source is "groupsrv VERSION"
  th=$(grep '^\.TH ' "$BUILD/dist/man/$p.1") || fail "$p.1: no .TH line"
  [[ "$th" == *"\"groupsrv $version\""* ]] || fail "$p.1: $th, want the footer 'groupsrv $version'"
done
# groupsrv's --version after the command is that command's option, not this.
out=$("$BUILD/bin/groupsrv" -c "$W/none.conf" group export eng --version 1 2>&1) && fail "group export --version: $out"
ok "version $version: CMakeLists.txt, debian/changelog ($changelog), --version of the three programs, man pages"

# ---- how versions order: a repository of its own, commits and tags ----
repo=$W/repo
mkdir "$repo"
cp "$SRC/CMakeLists.txt" "$repo/"
g() { git -C "$repo" -c user.name=test -c user.email=test@example.org -c commit.gpgsign=false "$@"; }
g init -q
g add CMakeLists.txt
g commit -q -m one
v() { "$SRC/scripts/version" "$repo" 2>"$W/version.err"; }
v1=$(v)
[[ "$v1" =~ ^${release//./\\.}\+git1\.g[0-9a-f]{12}$ ]] || fail "one commit, no tag: $v1"
dpkg --compare-versions "$v1" gt "$release" || fail "$v1 does not order after the release $release"
for i in $(seq 2 10); do g commit -q --allow-empty -m "commit $i"; done
v10=$(v)
dpkg --compare-versions "$v10" gt "$v1" || fail "10 commits ($v10) do not order after 1 ($v1)"
# a checkout of another user (git's safe.directory refuses it, as in a
# container or package build of a mounted tree): its version, not the release
vo=$(GIT_TEST_ASSUME_DIFFERENT_OWNER=1 v) || fail "another user's checkout: $(cat "$W/version.err")"
[ "$vo" = "$v10" ] || fail "another user's checkout: $vo, not $v10"
# a worktree (.git a file) with a detached HEAD: that commit's version
g worktree add -q --detach "$W/wt" HEAD~1
vw=$("$SRC/scripts/version" "$W/wt")
[ "$vw" = "$release+git9.g$(g rev-parse --short=12 HEAD~1)" ] || fail "a worktree at HEAD~1, detached: $vw"
# a copy of that checkout without its .git, as package_deb_build builds
mkdir "$W/copy"
cp "$repo/CMakeLists.txt" "$W/copy/"
"$SRC/scripts/version" --write "$W/copy" # this tree's version ($version), not the repository's
[ "$("$SRC/scripts/version" "$W/copy")" = "$version" ] || fail "a copy with --write: $("$SRC/scripts/version" "$W/copy")"
printf '9.9.9\n' >"$W/copy/.version"
"$SRC/scripts/version" "$W/copy" >/dev/null 2>&1 && fail "a .version of another release was taken"
rm "$W/copy/.version"
[ "$("$SRC/scripts/version" "$W/copy")" = "$release" ] || fail "a copy without .git or .version is not $release"
# a .git that git cannot read (a worktree copied without its repository)
# and no .version: an error, not the release's version
printf 'gitdir: %s/no-such-repo\n' "$W" >"$W/copy/.git"
"$SRC/scripts/version" "$W/copy" >/dev/null 2>"$W/version.err" && fail "an unreadable .git taken for the release"
grep -q 'git cannot read it' "$W/version.err" || fail "an unreadable .git: $(cat "$W/version.err")"
rm "$W/copy/.git"
# the release, tagged: its own version; the next commit orders after it
g tag "v$release"
[ "$(v)" = "$release" ] || fail "HEAD tagged v$release: $(v)"
g commit -q --allow-empty -m "after the release"
v11=$(v)
dpkg --compare-versions "$v11" gt "$release" && dpkg --compare-versions "$v11" gt "$v10" ||
  fail "after the tagged release: $v11"
# the next release orders after every build of the last one
next=$(awk -F. '{ print $1 "." $2 "." $3 + 1 }' <<<"$release")
sed -i "s/^project(groupsrv VERSION $release /project(groupsrv VERSION $next /" "$repo/CMakeLists.txt"
g commit -q -am "release $next"
g tag "v$next"
[ "$(v)" = "$next" ] || fail "the next release, tagged: $(v)"
dpkg --compare-versions "$next" gt "$v11" || fail "the next release $next does not order after $v11"
ok "dpkg order: $release < $v1 < $v10 < (tagged $release) $v11 < $next"
