#!/usr/bin/env bash
# Install npm-groovy-lint (it carries the Groovy 4 jars and CodeNarc) into .ci/node/, a folder that git
# ignores, for tests/test_groovy.py: the test parses and type-checks groovy/*.groovy with that Groovy 4
# jar and skips, saying why, when it is absent. Idempotent: does nothing when the pinned version is there.
# Needs npm (node >= 20); the test itself needs java (17+).
#
#   bash .ci/install_groovy_lint.sh
#   .ci/node/node_modules/.bin/npm-groovy-lint --path groovy   # optional: CodeNarc's style report
set -euo pipefail

VERSION="16.2.0"  # the newest release that runs on node 20; ships groovy-4.0.26.jar and CodeNarc 3.7
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/.ci/node"
PACKAGE="$PREFIX/node_modules/npm-groovy-lint"

installed_version() {
    [ -f "$PACKAGE/package.json" ] || return 1
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$PACKAGE/package.json" 2>/dev/null
}

if [ "$(installed_version || true)" = "$VERSION" ] && compgen -G "$PACKAGE/lib/java/groovy/lib/groovy-4.*.jar" >/dev/null; then
    echo "npm-groovy-lint $VERSION already in $PREFIX"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install_groovy_lint.sh: npm not found: tests/test_groovy.py will skip the Groovy 4 parse checks" >&2
    exit 0
fi
mkdir -p "$PREFIX"
# --ignore-scripts: the jars are in the package itself; nothing needs downloading at install time.
if ! npm install --prefix "$PREFIX" --no-audit --no-fund --ignore-scripts --no-save --loglevel=error \
    "npm-groovy-lint@$VERSION"; then
    echo "install_groovy_lint.sh: npm install failed: tests/test_groovy.py will skip the Groovy 4 parse checks" >&2
    exit 0
fi
if ! compgen -G "$PACKAGE/lib/java/groovy/lib/groovy-4.*.jar" >/dev/null; then
    echo "install_groovy_lint.sh: npm-groovy-lint $VERSION installed but holds no groovy-4 jar" >&2
    exit 1
fi
command -v java >/dev/null 2>&1 || echo "install_groovy_lint.sh: note: java not found; tests/test_groovy.py will skip the Groovy checks" >&2
echo "npm-groovy-lint $VERSION installed in $PREFIX"
