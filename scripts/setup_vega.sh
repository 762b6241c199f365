#!/usr/bin/env bash
# Let `dvc plots show` and `dvc plots diff` draw offline: dvc-render's pages load Vega, Vega-Lite
# and vega-embed from cdn.jsdelivr.net, so without the network they show nothing.
#
# Fetches those three libraries from the npm registry (`npm pack`: the same files the CDN serves,
# each package's `jsdelivr` build) into data/vega/ (git-ignored), writes data/vega/offline.html,
# a DVC HTML template with the three inlined (a rendered page works wherever it is copied), and
# points this checkout's DVC at it in .dvc/config.local (machine-local; DVC git-ignores it).
# Prints, alone on stdout, the template's absolute path, for `dvc plots ... --html-template`.
# Idempotent: a second run changes nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
# The versions dvc-render's VegaRenderer.SCRIPTS (dvc_render/vega.py) loads from the CDN.
VEGA_VERSION="5.20.2"
VEGA_LITE_VERSION="5.2.0"
VEGA_EMBED_VERSION="6.18.2"
PACKAGES="vega@$VEGA_VERSION vega-lite@$VEGA_LITE_VERSION vega-embed@$VEGA_EMBED_VERSION"

VEGA_DIR="data/vega"
TEMPLATE="$VEGA_DIR/offline.html"
STAMP="<!-- Inlined by scripts/setup_vega.sh: $PACKAGES -->"
PYTHON="${PYTHON:-.venv/bin/python}"
DVC="${DVC:-.venv/bin/dvc}"

die() { echo "error: $*" >&2; exit 1; }

# A different dvc-render may load other versions (the page then still draws, with these).
check_dvc_render_versions() {
    [ -x "$PYTHON" ] || return 0
    local scripts pkg
    scripts=$("$PYTHON" -c 'from dvc_render.vega import VegaRenderer; print(VegaRenderer.SCRIPTS)' \
        2> /dev/null) || return 0
    for pkg in $PACKAGES; do
        if ! grep -qF "/npm/$pkg\"" <<< "$scripts"; then
            echo "warning: the installed dvc-render loads other versions than $PACKAGES (see" \
                 "VegaRenderer.SCRIPTS in dvc_render/vega.py); update the versions at the top" \
                 "of $0 to match" >&2
            return 0
        fi
    done
}

have_template() {
    [ -s "$TEMPLATE" ] && grep -qF "$STAMP" "$TEMPLATE"
}

# Fetches $1 (name@version) with npm into the directory $2 and copies its browser build to
# $VEGA_DIR; prints the copy's path.
fetch_package() {
    local pkg="$1" tmp="$2" name="${1%@*}" version="${1#*@}" tgz fields got file out
    # Bounded retries: offline, npm's defaults would wait for minutes.
    if ! tgz=$(cd "$tmp" && npm pack --loglevel=error --fetch-retries=1 --fetch-timeout=60000 \
            "$pkg" 2> "$tmp/npm.log" | tail -n 1); then
        die "npm could not fetch $pkg from $(npm config get registry) (offline, or the registry" \
            "unreachable?): $(grep -E '^npm (error|ERR!) (code|FetchError|404)' "$tmp/npm.log" \
            | head -n 3 | tr '\n' ' ')"
    fi
    mkdir "$tmp/$name"
    tar -xzf "$tmp/$tgz" -C "$tmp/$name"
    # The file https://cdn.jsdelivr.net/npm/<pkg> serves: the package's jsdelivr (else unpkg) field.
    fields=$(node -p 'const p = require(process.argv[1]);
        [p.name + "@" + p.version, p.jsdelivr || p.unpkg || ""].join(" ")' \
        "$tmp/$name/package/package.json") || die "node could not read $pkg's package.json"
    read -r got file <<< "$fields"
    [ "$got" = "$pkg" ] || die "npm gave $got for $pkg"
    [ -n "$file" ] || die "$pkg's package.json names no browser build (jsdelivr or unpkg)"
    [ -s "$tmp/$name/package/$file" ] || die "$pkg's browser build $file is missing or empty"
    out="$VEGA_DIR/$name-$version.min.js"
    cp "$tmp/$name/package/$file" "$out.tmp" && mv "$out.tmp" "$out"
    echo "$out"
}

# Writes the template, each library inlined in its own <script>, as PAGE_HTML in
# dvc_render/html.py has it but without its {scripts} placeholder (which DVC fills with the CDN
# tags). dvc-render fills the placeholders with str.replace on the whole page, and an inlined
# "</script" would end its element early: a library containing either fails the setup.
write_template() {
    local js
    for js in "$@"; do
        if grep -qE '\{(plot_divs|scripts|refresh_tag)\}' "$js"; then
            die "$js contains a dvc-render placeholder ({plot_divs}, {scripts} or" \
                "{refresh_tag}); it cannot be inlined in a DVC HTML template"
        fi
        if grep -qi '</script' "$js"; then
            die "$js contains '</script'; it cannot be inlined in a <script> element"
        fi
    done
    {
        printf '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <title>DVC Plot</title>\n'
        printf '    %s\n' "$STAMP"
        for js in "$@"; do
            printf '    <script type="text/javascript">\n'
            cat "$js"
            printf '\n    </script>\n'
        done
        printf '    <style>\n        table {\n            border-spacing: 15px;\n        }\n'
        printf '    </style>\n</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n'
    } > "$TEMPLATE.tmp"
    mv "$TEMPLATE.tmp" "$TEMPLATE"
}

check_dvc_render_versions
if have_template; then
    echo "The offline DVC plots template is already set up in $TEMPLATE" >&2
else
    command -v npm > /dev/null && command -v node > /dev/null \
        || die "npm and node are needed to fetch $PACKAGES from the npm registry" \
               "(Debian: sudo apt-get install npm); without them dvc plots pages load Vega from" \
               "a CDN and draw nothing offline"
    mkdir -p "$VEGA_DIR"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    scripts=()
    for pkg in $PACKAGES; do
        js=$(fetch_package "$pkg" "$tmp")
        scripts+=("$js")
    done
    write_template "${scripts[@]}"
    echo "Wrote $TEMPLATE with $PACKAGES inlined" >&2
fi

template_path="$(pwd)/$TEMPLATE"
if [ -x "$DVC" ]; then
    if [ "$(DVC_NO_ANALYTICS=1 "$DVC" config --local plots.html_template 2> /dev/null)" \
            != "$template_path" ]; then
        DVC_NO_ANALYTICS=1 "$DVC" config --local plots.html_template "$template_path"
        echo "dvc plots show/diff now use $TEMPLATE (plots.html_template in .dvc/config.local)" >&2
    fi
else
    echo "warning: no $DVC; to use the template run: dvc config --local" \
         "plots.html_template $template_path" >&2
fi
echo "$template_path"
