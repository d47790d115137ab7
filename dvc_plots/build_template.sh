#!/usr/bin/env bash
# Rebuilds dvc_plots/offline.html: DVC's plot page with vega, vega-lite and vega-embed inlined from
# the npm registry's packages (the versions dvc-render links), so `dvc plots show` renders offline.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null
for pkg in vega-5.20.2 vega-lite-5.2.0 vega-embed-6.18.2; do mkdir "$pkg"; tar xzf "$pkg.tgz" -C "$pkg"; done
{
  echo '<!DOCTYPE html><html><head><meta charset="utf-8"><title>boneage: DVC plots</title>'
  echo '<style>body{font-family:sans-serif} table{border-spacing:15px}</style>'
  for js in vega-5.20.2/package/build/vega.min.js vega-lite-5.2.0/package/build/vega-lite.min.js vega-embed-6.18.2/package/build/vega-embed.min.js; do
    echo '<script type="text/javascript">'
    sed 's#//\# sourceMappingURL=.*##' "$js"
    echo '</script>'
  done
  echo '</head><body>'
  echo '{plot_divs}'
  echo '</body></html>'
} > "$here/offline.html"
echo "wrote $here/offline.html"
