#!/usr/bin/env bash
# Install the Claude Code CLI for the end-to-end tests and print the path of its `claude` binary.
#
# Why a private prefix: the tests need one known CLI, not whatever a developer has on PATH,
# and a cache under $HOME survives between CI runs without root. Idempotent: an existing
# install is reused (set KGB_CLAUDE_CODE_VERSION to pin or change the version; a different
# pinned version triggers a reinstall).
#
# Usage: scripts/install-claude-code.sh        -> prints e.g. /root/.cache/kgb/claude-code/node_modules/.bin/claude
# Env:   KGB_CLAUDE_CODE_PREFIX   install prefix (default $HOME/.cache/kgb/claude-code)
#        KGB_CLAUDE_CODE_VERSION  npm version or tag (default latest)
set -euo pipefail

prefix="${KGB_CLAUDE_CODE_PREFIX:-$HOME/.cache/kgb/claude-code}"
version="${KGB_CLAUDE_CODE_VERSION:-latest}"
package="@anthropic-ai/claude-code"
bin="$prefix/node_modules/.bin/claude"

# The CLI must never update itself behind the tests' back, neither while installing nor later.
export DISABLE_AUTOUPDATER=1

fail() { echo "install-claude-code: $*" >&2; exit 1; }

installed_version() {
    node -p "require('$prefix/node_modules/$package/package.json').version" 2>/dev/null || true
}

wanted() {
    # Already there and, when a version is pinned, the pinned one.
    [[ -x "$bin" ]] || return 1
    [[ "$version" == "latest" ]] && return 0
    [[ "$(installed_version)" == "$version" ]]
}

command -v node >/dev/null || fail "node is not installed (Claude Code needs Node.js 18 or newer)"
command -v npm >/dev/null || fail "npm is not installed"

if ! wanted; then
    mkdir -p "$prefix"
    echo "install-claude-code: installing $package@$version into $prefix" >&2
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "$package@$version" >&2 \
        || fail "npm install $package@$version failed"
fi

[[ -x "$bin" ]] || fail "$bin is missing after the install"
"$bin" --version >/dev/null 2>&1 || fail "$bin --version failed; the install is broken (remove $prefix and retry)"
echo "install-claude-code: $package $(installed_version) ready" >&2
echo "$bin"
