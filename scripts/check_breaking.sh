#!/usr/bin/env bash
# Fails when protos/ breaks compatibility with an earlier v1 (buf breaking, FILE rules).
# Compared against: origin/main (what this change would land on) and HEAD~1 (the previous
# commit), each only when that revision already has the per-domain packages (the v1 split);
# LOOM_BREAKING_AGAINST=<rev> adds another. Needs the git history (a clone, not an export).
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.venv/bin/buf}
if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "check_breaking: not a git checkout; nothing to compare against" >&2
  exit 0
fi
checked=0
for rev in origin/main HEAD~1 ${LOOM_BREAKING_AGAINST:-}; do
  commit=$(git rev-parse --verify --quiet "$rev^{commit}" || true)
  [ -n "$commit" ] || continue
  if ! git cat-file -e "$commit:protos/loom/identity/v1/identity.proto" 2>/dev/null; then
    echo "check_breaking: $rev predates the v1 domain split; skipped"
    continue
  fi
  "$BUF" breaking protos --against ".git#ref=$commit,subdir=protos"
  echo "check_breaking: compatible with $rev ($(git rev-parse --short "$commit"))"
  checked=$((checked + 1))
done
echo "check_breaking: $checked revision(s) compared"
